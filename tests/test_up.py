"""`streamrec up`, the README's main command, as a user runs it: embedded broker and Redis, demo
catalog indexed, demo shoppers replayed through the API; SIGTERM drains everything, exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from launcher.embedded import free_port
from tests.prometheus_text import sample_sum

pytestmark = pytest.mark.slow


CATALOG_LIMIT = 150
# The banner as `up` prints it: a line of its own. A crash traceback may quote the source line that
# prints it, so a substring match would take a crash for success.
BANNER = re.compile(r"^streamrec is up$", re.MULTILINE)


def _wait_until_up(proc: subprocess.Popen, log_path, base: str, timeout_s: float) -> None:
    """Return once serving is ready with the demo catalog indexed and `up` printed its banner; fail
    at once, with the log tail, if `up` exits first (instead of a misleading connection error later)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    with httpx.Client(base_url=base, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"`streamrec up` exited with {proc.returncode} before it was up:\n" + log_path.read_text()[-3000:]
                )
            try:
                r = http.get("/readyz")
                last = (r.status_code, r.text[:200])
                ready = r.status_code == 200 and r.json().get("index_items", 0) >= CATALOG_LIMIT
            except httpx.HTTPError as e:  # serving not listening yet
                last, ready = e, False
            if ready and BANNER.search(log_path.read_text()):
                return
            time.sleep(1)
    pytest.fail(
        f"`streamrec up` not up within {timeout_s:.0f}s (last /readyz: {last!r}):\n" + log_path.read_text()[-3000:]
    )


def up_env(tmp_path, port: int, **extra: str) -> dict[str, str]:
    """The environment `streamrec up` runs with in these tests: no STREAMREC_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        STREAMREC_HTTP_PORT=str(port),
        STREAMREC_STATE_DIR=str(tmp_path / "state"),
        STREAMREC_PUBLISH_EVERY_S="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_up(tmp_path, env: dict[str, str]) -> tuple[subprocess.Popen, Path, str]:
    """`streamrec up` with demo shoppers and the demo catalog cut to CATALOG_LIMIT, its output in
    ``up.log``: (process, log path, base URL). The caller waits for it and stops it."""
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "up", "--rate", "30", "--catalog-limit", str(CATALOG_LIMIT)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path, f"http://127.0.0.1:{env['STREAMREC_HTTP_PORT']}"


def test_up_serves_demo_traffic_and_drains_on_sigterm(tmp_path):
    env = up_env(tmp_path, free_port())
    proc, log_path, base = start_up(tmp_path, env)
    try:
        _wait_until_up(proc, log_path, base, timeout_s=300)
        assert "memory only" in log_path.read_text()  # the user is told the embedded broker keeps nothing
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            assert http.get("/search", params={"q": "ink cartridge"}).json()["items"]

            def accepted() -> float:
                return sample_sum(http.get("/metrics").text, "streamrec_serving_published_total", outcome="accepted")

            first = accepted()
            time.sleep(5)
            assert accepted() > first, "demo shoppers are not sending events"
            assert "Drift events" in http.get("/dashboard").text
        # read-only commands in another shell find the running embedded stack by themselves
        status = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["serving"]["index_items"] >= CATALOG_LIMIT
        assert report["models"]["serving_version"] >= 1
        assert set(report["lag"]) == {"consumers", "index-updater", "learner", "serving (vector follower)"}
        models = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "model", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert models.returncode == 0 and "*" in models.stdout, models.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert "stopped." in output
    for service in ("consumers", "index-updater", "learner", "serving"):
        assert re.search(rf"{service} stopped \(exit 0\)", output), f"{service} did not drain cleanly"
