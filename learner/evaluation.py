"""Prequential (test-then-train) evaluation: rolling AUC and log-loss per task.

Every labelled example is scored by the model *before* the model learns from it, so the metrics
are honest out-of-sample estimates on a stream. Windows are counted in labelled examples.

The rolling log-loss is river's (``utils.Rolling`` over ``metrics.LogLoss``). The rolling AUC is
not: river's ``RollingROCAUC`` does not count tied scores half, so a window of equal scores (an
untrained head) reads as the worst possible ranking instead of chance, and a window without both
classes reads the same instead of unknown; either would reach the rollback guard and the cockpit
as a collapsed model.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from river import metrics, utils

EPS = 1e-7


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    r = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average rank of each tie group, 1-based
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_difference(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same examples, with a paired, class-stratified bootstrap interval.

    Why paired: two scorers of the same stream share most of their errors, so the difference is
    far better determined than either AUC alone — with a few hundred clicks each AUC is only
    known to about ±0.03, but a consistent difference of 0.02 can still be clear. Returns
    ``(difference, low, high)``; "clearly better" means ``low > 0``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    y = np.asarray(labels).astype(bool)
    if not (a.shape == b.shape == y.shape):
        raise ValueError("a, b and labels must have the same length")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        diffs[k] = auc(a[idx], y[idx]) - auc(b[idx], y[idx])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return auc(a, y) - auc(b, y), float(lo), float(hi)


def logloss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example binary log-loss, clipped so a confident miss costs at most ~16 nats."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


class RollingBinary:
    """The last ``window`` (score, label) pairs of one task, plus running totals."""

    def __init__(self, window: int = 5000):
        if window < 2:
            raise ValueError("window must be at least 2")
        self.scores: deque[float] = deque(maxlen=window)
        self.labels: deque[int] = deque(maxlen=window)
        self.loss = utils.Rolling(metrics.LogLoss, window_size=window)
        self.n = 0
        self.positives = 0
        self.loss_sum = 0.0

    def update(self, p: np.ndarray, y: np.ndarray) -> None:
        p = np.asarray(p, dtype=np.float64).ravel()
        y = np.asarray(y).ravel()
        labels = [int(v) for v in y]
        self.scores.extend(p.tolist())
        self.labels.extend(labels)
        self._roll(p, labels)
        self.n += p.size
        self.positives += int((y > 0.5).sum())
        self.loss_sum += float(logloss(p, y).sum())

    def _roll(self, p: np.ndarray, labels: list[int]) -> None:
        """Clipped here as ``logloss`` clips: river clamps far closer to 0 and 1, so one confident
        miss would weigh twice as much in the window as in the per-example losses."""
        for yi, pi in zip(labels, np.clip(p, EPS, 1 - EPS).tolist(), strict=True):
            self.loss.update(yi, pi)

    def auc(self) -> float:
        return auc(np.fromiter(self.scores, float), np.fromiter(self.labels, int))

    def logloss(self) -> float:
        if not self.scores:
            return float("nan")
        return float(self.loss.obj.get())  # the window's mean (Rolling reverts what leaves it)

    def rate(self) -> float:
        return float(np.mean(self.labels)) if self.labels else float("nan")

    def state(self) -> dict:
        return {
            "window": self.scores.maxlen,
            "scores": list(self.scores),
            "labels": list(self.labels),
            "n": self.n,
            "positives": self.positives,
            "loss_sum": self.loss_sum,
        }

    @classmethod
    def from_state(cls, st: dict) -> RollingBinary:
        r = cls(st["window"])
        r.scores.extend(st["scores"])
        r.labels.extend(st["labels"])
        r._roll(np.asarray(st["scores"], dtype=np.float64), [int(v) for v in st["labels"]])
        r.n, r.positives, r.loss_sum = st["n"], st["positives"], st["loss_sum"]
        return r


class Prequential:
    """Rolling AUC / log-loss for the click and the purchase task."""

    TASKS = ("click", "purchase")

    def __init__(self, window: int = 5000):
        self.tasks = {t: RollingBinary(window) for t in self.TASKS}

    def update(self, p_click: np.ndarray, p_buy: np.ndarray, batch) -> np.ndarray:
        """Record a batch scored before learning; returns per-example click losses (masked rows NaN)."""
        cm, pm = batch.click_mask, batch.purchase_mask
        if cm.any():
            self.tasks["click"].update(p_click[cm], batch.click[cm])
        if pm.any():
            self.tasks["purchase"].update(p_buy[pm], batch.purchase[pm])
        losses = np.full(len(batch), np.nan)
        losses[cm] = logloss(p_click[cm], batch.click[cm])
        return losses

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float] = {}
        for t, r in self.tasks.items():
            out[f"{t}_auc"] = r.auc()
            out[f"{t}_logloss"] = r.logloss()
            out[f"{t}_examples"] = float(r.n)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

    def state(self) -> dict:
        return {t: r.state() for t, r in self.tasks.items()}

    def load_state(self, st: dict) -> None:
        self.tasks = {t: RollingBinary.from_state(st[t]) for t in self.TASKS}
