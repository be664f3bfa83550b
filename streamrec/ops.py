"""What the learner shares with the ops cockpit (``serving/cockpit.py``) through Redis.

``{prefix}learner:stats`` — a hash the learner writes about once a second:

- ``events:<type>``: events read from the events topic, by type (cumulative, ``HINCRBY``; events
  re-read after a learner restart from its checkpoint count again);
- ``items_shown``: items listed in the impression events read (the denominator of click and
  purchase rates per item shown);
- ``feature_ks``: JSON ``{feature: KS distance or null}`` for the drift-watched features
  (``learner/drift.py``); ``feature_ks_threshold``: the KS critical value drawn beside them;
- ``t``: wall time (ms) of the last write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis

LEARNER_STATS = "learner:stats"
KS_ALPHA = 0.005  # the KS critical value drawn beside the distances (KSWIN's default alpha)


def add_learner_stats(
    r: redis.Redis, prefix: str, counts: Mapping[str, int], feature_ks: Mapping[str, float | None], threshold: float
) -> None:
    """Add ``counts`` to the cumulative counters and replace the distances (one round trip)."""
    key = prefix + LEARNER_STATS
    pipe = r.pipeline(transaction=False)
    for field, n in counts.items():
        if n:
            pipe.hincrby(key, field, n)
    pipe.hset(
        key,
        mapping={
            "feature_ks": json.dumps(dict(feature_ks)),
            "feature_ks_threshold": repr(threshold),
            "t": int(time.time() * 1000),
        },
    )
    pipe.execute()


def parse_learner_stats(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """The hash as ``{"counts": {...}, "feature_ks": {...}, "feature_ks_threshold": float | None, "t": ms}``."""
    h = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
    counts = {k: int(v) for k, v in h.items() if k.startswith("events:") or k == "items_shown"}
    return {
        "counts": counts,
        "feature_ks": cast(dict, json.loads(h["feature_ks"])) if "feature_ks" in h else {},
        "feature_ks_threshold": float(h["feature_ks_threshold"]) if "feature_ks_threshold" in h else None,
        "t": int(h["t"]) if "t" in h else None,
    }
