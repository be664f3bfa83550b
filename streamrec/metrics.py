"""Prometheus plumbing. Each service declares its own metrics next to the code that moves them
(``<service>/metrics.py``); every name starts with ``streamrec_`` and follows Prometheus naming
(``_total`` counters, ``_seconds`` histograms)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int) -> None:
    """Expose /metrics for a headless service (consume/learn/index); 0 disables it."""
    if port:
        start_http_server(port, addr="0.0.0.0")
        log.info("metrics on :%d/metrics", port)
