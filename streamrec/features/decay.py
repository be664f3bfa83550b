"""The decay maths of the online features, defined once for the reader and the replay twin.

Two forms, both on event time (epoch ms) with ``tau = half_life / ln 2``
(``FeatureSettings.tau_ms``):

* **Lazy decay** (per-key counts, affinity, expansion): each value ``v`` is stored with its
  reference time ``t``; an event at ``ts`` adds ``exp(-(t - ts)/tau)`` when ``ts <= t`` and
  otherwise rescales ``v`` to ``ts`` first (:func:`merge_decayed`), so the result equals
  ``sum(exp(-(t_max - ts_i)/tau))`` whatever the order events arrive in. Readers decay it to
  ``now`` (:func:`decay`).
* **Forward decay** (trending, one sorted set): a score is ``sum(w_i * exp((ts_i - t0)/tau))``
  relative to a landmark ``t0`` (:func:`forward`), so adding an event touches one member and the
  order of items never depends on the clock; a reader scales the scores to ``now``
  (:func:`landmark_scale`). The exponent grows with time, so the writer moves the landmark when it
  passes :data:`TRENDING_RESCALE` (:func:`needs_rescale`), multiplying every score by
  ``landmark_scale(t0, ts, tau)``.

The writer script (``apply.lua``: ``merge`` and ``trending``) re-implements both in Lua;
``tests/test_feature_parity.py`` holds it and the twin (which uses this module) together.
"""

from __future__ import annotations

import math

TRENDING_RESCALE = 30.0  # trending scores are rescaled when (ts - t0) / tau exceeds this (exp(30) ~ 1e13)


def decay(value: float, ref_ts: float, now_ms: float, tau_ms: float) -> float:
    """A value stored at ``ref_ts`` seen from ``now_ms`` (never grows when ``now_ms`` is older)."""
    return value * math.exp(-max(0.0, now_ms - ref_ts) / tau_ms)


def merge_decayed(v: float | None, t: float | None, ts: float, w: float, tau_ms: float) -> tuple[float, float]:
    """Lazy decay: the stored ``(v, t)`` plus weight ``w`` at ``ts`` -> the new ``(v, t)``, so that
    ``v = sum(w_i * exp(-(t - ts_i) / tau))`` whatever the arrival order. The Python form of
    ``merge`` in ``apply.lua``."""
    if v is None or t is None:
        return w, ts
    if ts >= t:
        return v * math.exp(-(ts - t) / tau_ms) + w, ts
    return v + w * math.exp(-(t - ts) / tau_ms), t


def forward(w: float, ts: float, t0: float, tau_ms: float) -> float:
    """Forward decay: weight ``w`` at ``ts`` as an increment of a score relative to the landmark ``t0``."""
    return w * math.exp((ts - t0) / tau_ms)


def needs_rescale(ts: float, t0: float, tau_ms: float) -> bool:
    """Whether an event at ``ts`` moves the landmark to ``ts`` first (keeps the exponent bounded)."""
    return (ts - t0) / tau_ms > TRENDING_RESCALE


def landmark_scale(t0: float, now_ms: float, tau_ms: float) -> float:
    """The factor that turns scores relative to ``t0`` into values decayed to ``now_ms``."""
    return math.exp((t0 - now_ms) / tau_ms)
