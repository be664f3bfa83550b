"""Garbage-collector pauses: measured, and kept short in a long-lived process with a big heap.

Why: serving holds the catalogue's indexes (hundreds of thousands of long-lived objects) while
every request allocates thousands of short-lived ones (neighbour sessions, Redis replies).
CPython's full collection walks every tracked object, so now and then one request waits for all
of it. Objects that survived a full collection are long-lived by definition; freezing them
(``gc.freeze``, the permanent generation) leaves later full collections only what was allocated
since. Frozen objects are still freed by reference counting; only a reference *cycle* among them
would wait, so the keeper thaws everything every ``thaw_s`` and the next full collection walks
the whole heap once.

>>> keeper = GcKeeper(check_s=0.01, thaw_s=3600).start()
>>> _ = gc.collect()  # a full collection: measured, and its survivors frozen at the next check
>>> keeper.wait_frozen(timeout_s=5), gc.get_freeze_count() > 0
(True, True)
>>> keeper.stop()  # thaws: nothing stays frozen after the keeper
>>> gc.get_freeze_count()
0
"""

from __future__ import annotations

import gc
import threading
import time

from prometheus_client import Gauge, Histogram

PAUSES = Histogram(
    "streamrec_gc_pause_seconds",
    "garbage-collector pauses of this process, by generation (2 = full collection)",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FROZEN = Gauge("streamrec_gc_frozen_objects", "objects in the permanent generation (not walked by collections)")


class GcKeeper:
    """Times every collection (``PAUSES``) and freezes the survivors of each full collection."""

    def __init__(self, check_s: float = 5.0, thaw_s: float = 3600.0):
        self.check_s, self.thaw_s = check_s, thaw_s
        self._started_at: float | None = None
        self._full_since_freeze = threading.Event()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_thaw = time.monotonic()

    def _on_gc(self, phase: str, info: dict) -> None:
        # runs inside the collector: record only, never allocate much or call into gc here
        if phase == "start":
            self._started_at = time.perf_counter()
        elif self._started_at is not None:
            PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - self._started_at)
            self._started_at = None
            if info["generation"] == 2:
                self._full_since_freeze.set()

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            if time.monotonic() - self._last_thaw >= self.thaw_s:
                gc.unfreeze()  # the next full collection walks everything once: cycles among old objects go
                self._last_thaw = time.monotonic()
                self._frozen.clear()
            elif self._full_since_freeze.is_set():
                self._full_since_freeze.clear()
                gc.freeze()
                self._frozen.set()
            FROZEN.set(gc.get_freeze_count())

    def start(self, freeze_now: bool = False) -> GcKeeper:
        """``freeze_now``: collect and freeze the heap built so far (a process's modules, models and
        loaded indexes) before the first request can wait for that walk."""
        if freeze_now:
            gc.collect()
            gc.freeze()
            self._frozen.set()
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._run, name="gc-keeper", daemon=True)
        self._thread.start()
        return self

    def wait_frozen(self, timeout_s: float) -> bool:
        """True once a full collection's survivors are frozen (tests, doctest)."""
        return self._frozen.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()
        FROZEN.set(0)
