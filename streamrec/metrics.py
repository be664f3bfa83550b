"""Prometheus plumbing. Each service declares its own metrics next to the code that moves them
(``<service>/metrics.py``); every name starts with ``streamrec_`` and follows Prometheus naming
(``_total`` counters, ``_seconds`` histograms)."""

from __future__ import annotations

import logging
import threading

from prometheus_client import start_http_server

log = logging.getLogger(__name__)
_started: set[int] = set()
_lock = threading.Lock()


def serve_metrics(port: int) -> None:
    """Expose /metrics for a headless service (consume/learn/index); 0 disables it.

    Idempotent within a process, so the CLI and a service's own ``run`` may both ask for it.
    """
    if not port:
        return
    with _lock:
        if port in _started:
            return
        start_http_server(port, addr="0.0.0.0")
        _started.add(port)
    log.info("metrics on :%d/metrics", port)
