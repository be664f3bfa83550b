"""The soak bench, short: the whole stack (four service processes) for 15 s at 200 events/s with
users and items retiring and appearing and the catalog changing. Every key it leaves in Redis has a
TTL or a declared cap, memory per active user / item / session is within the README's bound, and
every service's RSS was sampled. (Growth at a stable active set needs minutes past the 60 s minimum
TTL: tests/test_memory.py holds the writer flat at saturation; ``bench/soak.py`` measures the stack.)
"""

from __future__ import annotations

import pytest

from bench.soak import run
from tests.test_memory import ITEM_BOUND_B, SESSION_BOUND_B, USER_BOUND_B

MINUTES, RATE = 0.25, 200


@pytest.mark.slow
def test_short_soak_leaves_only_bounded_keys_and_memory_per_entity_within_bounds(tmp_path, monkeypatch):
    for name in ("USER_TTL_S", "ITEM_TTL_S", "SESSION_TTL_S", "QUARANTINE_TTL_S", "TOMBSTONE_TTL_S"):
        monkeypatch.setenv(f"STREAMREC_FEATURE_{name}", "60")  # run() sets them; restored after the test
    out = run(minutes=MINUTES, rate=RATE, sample_s=5, users=1_000, items=200, state_dir=tmp_path, quiet=True)
    assert out["failed"] == 0 and out["sent"] >= MINUTES * 60 * RATE * 0.9
    assert out["violations"] == []
    per = out["per_entity"]
    assert per["user"] <= USER_BOUND_B and per["item"] <= ITEM_BOUND_B and per["session"] <= SESSION_BOUND_B, per
    assert out["final"]["user"].keys >= 500 and out["final"]["item"].keys >= 100
    for sample in out["samples"]:
        assert set(sample.rss) == {"consumers", "index-updater", "learner", "serving"}
        assert all(rss > 0 for rss in sample.rss.values())
