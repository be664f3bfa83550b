"""Drift detection with River: ADWIN on the prequential loss, Page-Hinkley on CTR, ADWIN on features.

Why these three: a rising loss says the model is wrong now (the signal that matters); a CTR
change says user behaviour moved even when the loss has not caught up; a feature-mean change
says the inputs moved (new catalogue, broken upstream feature) before labels arrive.

Only *harmful* changes count: ADWIN also fires when the loss falls (the model is learning), so a
loss detection is reported only when the newer window's mean loss is higher than the older one.
Nothing fires during ``warmup`` examples, when a young model's loss is still settling. Watched
features should be stationary when the world is: inputs like the query/item match or the shown
items' content — not counters that grow with the stream (popularity, user history length).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from river import drift

from streamrec.ranking import FEATURE_NAMES


@dataclass(frozen=True)
class Detection:
    """One drift detection: what moved, where (which detector/feature), when, and the evidence."""

    detector: str            # "adwin_loss" | "page_hinkley_ctr" | "adwin_feature"
    what: str                # "prequential_click_loss" | "ctr" | feature name
    where: str               # the learner / model it was seen in
    when_ms: int             # event time of the example that triggered it
    at_example: int          # labelled-example index in the stream
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["detected_ms"] = int(time.time() * 1000)
        return d


class _Adwin:
    """ADWIN that remembers its mean before a detection, to tell rises from falls."""

    def __init__(self, delta: float):
        self.d = drift.ADWIN(delta=delta)

    def update(self, x: float) -> tuple[bool, float, float, int]:
        before = self.d.estimation
        width_before = self.d.width
        self.d.update(x)
        if self.d.drift_detected:
            # after a detection ADWIN has cut the old part; estimation is the recent mean
            return True, before, self.d.estimation, int(width_before - self.d.width)
        return False, before, self.d.estimation, 0


class DriftMonitor:
    """Feeds per-example signals to the detectors and returns :class:`Detection` s.

    Parameters
    ----------
    loss_delta: ADWIN confidence on the click log-loss (smaller = fewer, surer detections).
    ctr_threshold: Page-Hinkley threshold on the click indicator (in clicks of cumulative excess).
    feature_names: features whose means are watched by their own ADWIN.
    feature_delta: ADWIN confidence for the feature detectors.
    warmup: labelled examples before any detection is reported.
    """

    def __init__(self, *, loss_delta: float = 0.0005, ctr_threshold: float = 30.0, ctr_delta: float = 0.005,
                 feature_names: Sequence[str] = ("retrieval_score", "query_item_cos", "price_log", "item_vec_0", "item_vec_1"),
                 feature_delta: float = 1e-5, warmup: int = 1000, where: str = "champion"):
        unknown = [f for f in feature_names if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown feature(s) to watch for drift: {unknown}; choose from {FEATURE_NAMES}")
        self.loss_delta, self.ctr_threshold, self.ctr_delta = loss_delta, ctr_threshold, ctr_delta
        self.feature_delta, self.warmup, self.where = feature_delta, warmup, where
        self.feature_names = list(feature_names)
        self._cols = [FEATURE_NAMES.index(f) for f in self.feature_names]
        self.reset()

    def reset(self) -> None:
        self.loss = _Adwin(self.loss_delta)
        self.ctr = drift.PageHinkley(min_instances=100, delta=self.ctr_delta, threshold=self.ctr_threshold,
                                     mode="both")
        self.features = {f: _Adwin(self.feature_delta) for f in self.feature_names}
        self.seen = 0
        self.ctr_seen = 0
        self.ctr_sum = 0.0

    def update(self, losses: np.ndarray, clicks: np.ndarray, click_mask: np.ndarray, X: np.ndarray,
               ts: np.ndarray) -> list[Detection]:
        """One prequential batch: per-example click losses, click labels (with mask), rows and times."""
        out: list[Detection] = []
        for i in range(len(losses)):
            self.seen += 1
            when = int(ts[i])
            armed = self.seen > self.warmup
            if click_mask[i] and math.isfinite(losses[i]):
                hit, before, after, cut = self.loss.update(float(losses[i]))
                if hit and armed and after > before:
                    out.append(Detection("adwin_loss", "prequential_click_loss", self.where, when, self.seen,
                                         {"mean_before": before, "mean_after": after, "examples_cut": cut,
                                          "window": int(self.loss.d.width), "delta": self.loss_delta}))
                y = float(clicks[i])
                self.ctr_seen += 1
                self.ctr_sum += y
                self.ctr.update(y)
                if self.ctr.drift_detected and armed:
                    out.append(Detection("page_hinkley_ctr", "ctr", self.where, when, self.seen,
                                         {"ctr_running": self.ctr_sum / self.ctr_seen,
                                          "threshold": self.ctr_threshold, "delta": self.ctr_delta}))
            for name, col in zip(self.feature_names, self._cols):
                hit, before, after, cut = self.features[name].update(float(X[i, col]))
                if hit and armed:
                    out.append(Detection("adwin_feature", name, self.where, when, self.seen,
                                         {"mean_before": before, "mean_after": after, "examples_cut": cut,
                                          "delta": self.feature_delta}))
        return out

    def loss_window(self) -> int:
        """How many recent labelled examples ADWIN believes belong to the current concept."""
        return int(self.loss.d.width)
