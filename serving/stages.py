"""CPU time per stage of the request path, so the budget of a request can be read off ``/metrics``.

Why CPU time of the thread and not wall time: on a busy host a stage's wall time includes waiting
for a core (and for Redis), which says nothing about what the stage costs; the thread's CPU clock
says what it costs, and stage CPU ÷ requests is the per-request budget ``bench/serving.py`` prints
beside each stage's floor. Serving runs its math libraries on one thread (``cpu_threads``), so the
thread's clock sees all of a stage's work. What no stage covers (HTTP parsing, routing, the
threadpool hand-off) is the process's CPU minus the stages' sum.

>>> from prometheus_client import REGISTRY
>>> with route("doctest"), stage("encode"):
...     _ = sum(range(10_000))
>>> REGISTRY.get_sample_value("streamrec_serving_stage_cpu_seconds_total", {"route": "doctest", "stage": "encode"}) > 0
True
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Counter

STAGE_CPU = Counter(
    "streamrec_serving_stage_cpu_seconds_total",
    "CPU seconds spent in each stage of the request path, per route (÷ requests = the stage's budget)",
    ["route", "stage"],
)
_ROUTE: ContextVar[str] = ContextVar("streamrec_serving_route", default="other")


@contextmanager
def route(name: str) -> Iterator[None]:
    """Stages timed inside count toward route ``name`` (search, recommend, similar)."""
    token = _ROUTE.set(name)
    try:
        yield
    finally:
        _ROUTE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the thread CPU time spent inside to ``name`` of the current route."""
    started = time.thread_time()
    try:
        yield
    finally:
        STAGE_CPU.labels(_ROUTE.get(), name).inc(time.thread_time() - started)
