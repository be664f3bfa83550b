"""The serving process's garbage-collector keeper (streamrec/gcpause.py)."""

from __future__ import annotations

import gc
import time

from prometheus_client import REGISTRY

from streamrec.gcpause import GcKeeper


def _full_collections() -> tuple[float, float]:
    """(seconds, count) of the full collections timed so far."""
    sample = REGISTRY.get_sample_value
    return (
        sample("streamrec_gc_pause_seconds_sum", {"generation": "2"}) or 0.0,
        sample("streamrec_gc_pause_seconds_count", {"generation": "2"}) or 0.0,
    )


def test_every_full_collection_is_timed_and_its_survivors_frozen():
    keeper = GcKeeper(check_s=0.01, thaw_s=3600).start()
    gc.disable()  # allocating the survivors must not trigger a full collection of its own
    try:
        _, before = _full_collections()
        survivors = [[i] for i in range(50_000)]  # long-lived objects, as an index holds
        gc.collect()
        total, after = _full_collections()
        gc.enable()
        assert after == before + 1 and total > 0
        assert keeper.wait_frozen(5)
        assert gc.get_freeze_count() >= len(survivors)
    finally:
        gc.enable()
        keeper.stop()
    assert gc.get_freeze_count() == 0  # nothing stays frozen after the keeper


def test_the_heap_is_thawed_again_so_old_cycles_are_reclaimed():
    keeper = GcKeeper(check_s=0.01, thaw_s=0.2).start()
    try:
        gc.collect()
        assert keeper.wait_frozen(5)
        deadline = time.monotonic() + 5
        while gc.get_freeze_count() and time.monotonic() < deadline:  # thawed within thaw_s + a check
            time.sleep(0.01)
        assert gc.get_freeze_count() == 0
    finally:
        keeper.stop()


def test_a_process_can_freeze_its_startup_heap_before_serving():
    keeper = GcKeeper(check_s=60, thaw_s=3600).start(freeze_now=True)
    try:
        assert gc.get_freeze_count() > 0 and keeper.wait_frozen(0)
    finally:
        keeper.stop()
    assert gc.get_freeze_count() == 0
