"""The whole system on one machine: embedded broker and Redis (unless configured) plus the four
services as supervised processes. `streamrec up`, the end-to-end tests and the freshness benchmark
all run this same stack, so what they exercise is what a user runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from launcher.embedded import EmbeddedKafka, EmbeddedRedis, child_env, free_port
from launcher.supervisor import ChildSpec, Supervisor
from streamrec import bus
from streamrec.settings import Settings

log = logging.getLogger(__name__)

# service name → CLI command; headless services get Prometheus ports 9101, 9102, 9103 by default
SERVICES = {"consumers": "consume", "index-updater": "index", "learner": "learn", "serving": "serve"}


def settings_env(s: Settings) -> dict[str, str]:
    """``STREAMREC_*`` variables that reproduce ``s`` in a child process."""
    return child_env(s.to_env())


AUTO_WORKERS_MAX = 8  # each worker holds its own index and encoder (~0.5 GiB at 5,000 items; README: serving)


def worker_count(s: Settings) -> int:
    """``serving.workers``; 0 = half the cores this process may run on, at least one, at most
    ``AUTO_WORKERS_MAX`` (a container sees the host's cores: set the number there)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return s.serving.workers or min(AUTO_WORKERS_MAX, max(1, cores // 2))


def serving_workers(s: Settings, env: dict[str, str], log_dir: Path, metrics_port: int = 0) -> list[ChildSpec]:
    """``worker_count(s)`` serving processes on one port (serving/service.py binds it SO_REUSEPORT),
    each numbered; with ``metrics_port``, worker i also serves its own metrics on metrics_port + i."""
    specs = []
    for i in range(worker_count(s)):
        worker_env = dict(env, STREAMREC_SERVING_WORKER=str(i))
        worker_env["STREAMREC_METRICS_PORT"] = str(metrics_port + i if metrics_port else 0)
        argv = [sys.executable, "-m", "launcher.cli", "serve"]
        specs.append(ChildSpec(f"serving-{i}", argv, worker_env, log_dir / f"serving-{i}.log"))
    return specs


def endpoints_file(s: Settings) -> Path:
    return s.state_dir / "embedded-run" / "endpoints.json"


def running_settings(s: Settings) -> Settings:
    """``s``, pointed at the embedded stack of a running `streamrec up` when ``s`` names none."""
    path = endpoints_file(s)
    if s.kafka.bootstrap or not path.is_file():
        return s
    found = json.loads(path.read_text())
    return s.replace(
        kafka={"bootstrap": found["kafka_bootstrap"]},
        redis={"url": found["redis_url"]},
        http={"port": found["http_port"]},
        state_dir=Path(found["state_dir"]),
    )


def _port_or_free(port: int) -> int:
    """``port`` if nothing listens there, else any free port (a demo must not crash-loop on it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
            return port
        except OSError:
            return free_port()


class LocalStack:
    def __init__(self, s: Settings, metrics_base_port: int = 9101, fresh_state: bool = True):
        self.requested = s
        self.settings = s
        self.metrics_base_port = metrics_base_port
        self.fresh_state = fresh_state
        self._embedded: list = []
        self.metrics_ports: dict[str, int] = {}
        self.supervisor: Supervisor | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.http.host}:{self.settings.http.port}"

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    def start(self) -> LocalStack:
        s = self.requested
        updates: dict = {}
        if not s.kafka.bootstrap:
            # Tansu forgets everything on exit, so state derived from an earlier run (snapshots,
            # checkpoints holding offsets) would point past the new, empty topics: start clean.
            run_dir = s.state_dir / "embedded-run"
            if self.fresh_state:
                shutil.rmtree(run_dir, ignore_errors=True)
            updates["state_dir"] = run_dir
            kafka = EmbeddedKafka(run_dir / "tansu").start()
            self._embedded.append(kafka)
            updates["kafka"] = {"bootstrap": kafka.bootstrap}
        if not s.redis.url:
            server = EmbeddedRedis(
                updates.get("state_dir", s.state_dir) / "redis", maxmemory_mb=s.redis.maxmemory_mb
            ).start()
            self._embedded.append(server)
            updates["redis"] = {"url": server.url}
        self.settings = s.replace(**updates)
        bus.wait_for_broker(self.settings.require_kafka(), options=self.settings.kafka.client_options())
        bus.ensure_topics(self.settings)
        base_env = settings_env(self.settings)
        specs = []
        for i, (name, command) in enumerate(SERVICES.items()):
            env = dict(base_env)
            if command == "serve" and worker_count(self.settings) > 1:
                first = _port_or_free(self.metrics_base_port + len(SERVICES)) if self.metrics_base_port else 0
                specs += serving_workers(self.settings, env, self.log_dir, first)
                if first:
                    self.metrics_ports |= {f"serving-{w}": first + w for w in range(worker_count(self.settings))}
                continue
            if command != "serve" and self.metrics_base_port:  # 0 = no metrics ports
                self.metrics_ports[name] = _port_or_free(self.metrics_base_port + i)
            env["STREAMREC_METRICS_PORT"] = str(self.metrics_ports.get(name, 0))
            specs.append(
                ChildSpec(name, [sys.executable, "-m", "launcher.cli", command], env, self.log_dir / f"{name}.log")
            )
        self.supervisor = Supervisor(specs)
        self.supervisor.start()
        if self._embedded:
            self._write_endpoints()
        return self

    def _write_endpoints(self) -> None:
        """Where the embedded parts listen, for `streamrec status` / `model` in another shell."""
        s = self.settings
        endpoints = {
            "kafka_bootstrap": s.kafka.bootstrap,
            "redis_url": s.redis.url,
            "state_dir": str(s.state_dir),
            "http_port": s.http.port,
        }
        path = endpoints_file(self.requested)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(endpoints))

    def wait_ready(self, timeout_s: float = 180.0, min_items: int = 1) -> dict:
        """Block until serving answers /readyz with at least ``min_items`` indexed."""
        deadline = time.monotonic() + timeout_s
        last: Any = None  # the last /readyz JSON
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    r = http.get(f"{self.base_url}/readyz")
                    last = r.json()
                    if r.status_code == 200 and last.get("index_items", 0) >= min_items:
                        return last
                except httpx.HTTPError as e:
                    last = e
                time.sleep(0.3)
        raise TimeoutError(f"stack not ready within {timeout_s}s (last: {last!r}); logs in {self.log_dir}")

    def stop(self) -> None:
        if self.supervisor:
            self.supervisor.stop()
            self.supervisor = None
        for server in reversed(self._embedded):
            server.stop()
        if self._embedded:
            endpoints_file(self.requested).unlink(missing_ok=True)
        self._embedded.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
