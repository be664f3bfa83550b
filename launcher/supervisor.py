"""Supervised child processes for `streamrec up`: restart on crash, drain on shutdown.

Each service runs as its own process (as in docker-compose), so a crash of one restarts only that
one, with exponential back-off; shutdown sends SIGTERM to all, waits for them to drain and commit,
and only then kills what is left.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, specs: list[ChildSpec], max_backoff_s: float = 30.0):
        self._children = [_Child(spec) for spec in specs]
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)
        self._thread.start()

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as logf:
            # own session: Ctrl-C in the terminal reaches only us; we then drain children in order
            child.proc = subprocess.Popen(
                spec.argv, env=spec.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d, log %s)", spec.name, child.proc.pid, spec.log_path)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for child in self._children:
                proc = child.proc
                if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                    uptime = time.monotonic() - child.started_at
                    if uptime > 60:
                        child.restarts = 0  # it ran fine for a while: start back-off afresh
                    delay = min(self._max_backoff_s, 0.5 * 2**child.restarts)
                    log.warning(
                        "%s exited with %s after %.0fs; restarting in %.1fs (see %s)",
                        child.spec.name,
                        proc.returncode,
                        uptime,
                        delay,
                        child.spec.log_path,
                    )
                    child.proc = None
                    child.restarts += 1
                    child.next_start = time.monotonic() + delay
                if child.proc is None and time.monotonic() >= child.next_start and not self._stopping.is_set():
                    self._spawn(child)

    def status(self) -> list[dict]:
        return [
            {
                "name": c.spec.name,
                "pid": c.proc.pid if c.proc else None,
                "alive": bool(c.proc and c.proc.poll() is None),
                "restarts": c.restarts,
            }
            for c in self._children
        ]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every child (they finish their batch and commit), then kill stragglers."""
        self._stopping.set()
        for child in self._children:
            if child.proc and child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout_s
        for child in self._children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
                log.info("%s stopped (exit %s)", child.spec.name, child.proc.returncode)
            except subprocess.TimeoutExpired:
                log.warning("%s did not drain within %.0fs; killing", child.spec.name, timeout_s)
                child.proc.kill()
                child.proc.wait()
