"""Waiting on effects, the one way tests observe an asynchronous system.

Tests never wait on offsets (the embedded broker's high watermark lags) or fixed sleeps: they poll
the effect they expect and fail naming it, with the last value seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str = "condition", timeout_s: float = 30.0, every_s: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


def clicks_learned(http) -> int:
    """Clicks (positive examples) the served model has learned from, as published in its metadata
    (``/dashboard/data``): a model version can move on impressions alone, this count only on clicks
    that reached the learner and joined their impression."""
    models = http.get("/dashboard/data").json()["models"]
    current = [m for m in models if m.get("current")]
    return int((current[0]["metrics"] if current else {}).get("clicks", 0))
