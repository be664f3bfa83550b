"""Every thread of a service runs torch and FAISS on ``cpu_threads`` threads, not only the main one:
serving's requests run on threadpool threads, where an OpenMP default of every core once left a
second thread spinning at a barrier after each call (8 ms of a core per /search)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHECK = """
import json, sys, threading
from streamrec.lifecycle import default_threads, limit_cpu_threads
if sys.argv[1] == "set":
    default_threads(1)
import faiss, torch
limit_cpu_threads(1)
seen = {}
def probe():
    seen["torch"] = torch.get_num_threads()
    seen["faiss"] = faiss.omp_get_max_threads()
t = threading.Thread(target=probe); t.start(); t.join()
print(json.dumps(seen))
"""


def run_check(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHECK, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_thread_gets_the_services_thread_count():
    assert run_check("set") == {"torch": 1, "faiss": 1}


def test_without_the_defaults_a_new_thread_would_use_every_core():
    """The failure the defaults prevent (on a host with more than one core)."""
    assert run_check("unset")["faiss"] == (os.cpu_count() or 1)
