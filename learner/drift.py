"""Drift detection with River: ADWIN on the prequential loss, Page-Hinkley on CTR, ADWIN on features,
ADWIN on how the model *ranks* what gets clicked, and ADWIN on *which* items get clicked.

Why these: a rising loss says the model is wrong now (the signal that matters); a CTR
change says user behaviour moved even when the loss has not caught up; a feature-mean change
says the inputs moved (new catalogue, broken upstream feature) before labels arrive.

Only *harmful* changes count: ADWIN also fires when the loss falls (the model is learning), so a
loss detection is reported only when the newer window's mean loss is higher than the older one.
Nothing fires during ``warmup`` examples, when a young model's loss is still settling. Watched
features should be stationary when the world is: inputs like the query/item match or the shown
items' content — not counters that grow with the stream (popularity, user history length).

The clicked-item detector (``adwin_clicked_item``) sees a concept shift that leaves the click rate
and a weak model's loss flat — clicks moving to other items. Per labelled example it keeps the
item's own smoothed CTR (clicks + prior) / (shown + strength) from the labelled stream; for each
*click* it feeds ADWIN the percentile of the clicked item's CTR among the CTRs of the last
``item_reference`` labelled examples. Stationary, clicked items sit a little above the median
(as much as popularity predicts clicks); when clicks move to items that were rarely clicked the
mean percentile falls, and a fall is what is reported.

Per-feature drift *distance* (what the cockpit charts, beside ADWIN's detections): for each
watched feature the two-sample Kolmogorov-Smirnov statistic between a reference window (the first
``drift.feature_window`` values after the current champion took over, i.e. after
:meth:`DriftMonitor.reset`) and the latest ``drift.feature_window`` values. River's ADWIN keeps
only summary buckets and KSWIN is not used here, so the monitor keeps the two small windows
itself; a distance is two sorts of a window's floats (500 by default), computed only when asked
(:meth:`DriftMonitor.feature_distances`). The KS critical value at ``KS_ALPHA`` is shown as a
reference line; it is *not* the rule that fires — ADWIN compares window means with confidence
``feature_delta`` and has no threshold on this distance.

The click-rank detector (``adwin_click_rank``) asks the same of the model: for each click it
feeds ADWIN the percentile of the model's score for the clicked item among its scores of the last
``item_reference`` labelled examples — the click's contribution to AUC, so ADWIN's mean is a
rolling AUC. Unlike the log-loss it ignores calibration and the click rate and sees only the
ranking going wrong, which is what a concept shift does to a ranker; on the Open Bandit remap it
fires 366-597 events after the shift (4 seeds), the clicked-item detector on none. The
reference holds the *champion's* scores, so it restarts with :meth:`DriftMonitor.reset` when a
new model takes over.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from river import drift

from streamrec.ops import KS_ALPHA
from streamrec.ranking import FEATURE_NAMES
from streamrec.settings import DriftSettings


@dataclass(frozen=True)
class Detection:
    """One drift detection: what moved, where (which detector/feature), when, and the evidence."""

    detector: str  # "adwin_loss" | "page_hinkley_ctr" | "adwin_feature" | "adwin_clicked_item" | "adwin_click_rank"
    what: str  # "prequential_click_loss" | "ctr" | feature name
    where: str  # the learner / model it was seen in
    when_ms: int  # event time of the example that triggered it
    at_example: int  # labelled-example index in the stream
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["detected_ms"] = int(time.time() * 1000)
        return d


class _Adwin:
    """ADWIN that remembers its mean before a detection, to tell rises from falls."""

    def __init__(self, delta: float, clock: int = 32):
        self.d = drift.ADWIN(delta=delta, clock=clock)

    def update(self, x: float) -> tuple[bool, float, float, int]:
        before = self.d.estimation
        width_before = self.d.width
        self.d.update(x)
        if self.d.drift_detected:
            # after a detection ADWIN has cut the old part; estimation is the recent mean
            return True, before, self.d.estimation, int(width_before - self.d.width)
        return False, before, self.d.estimation, 0


class _ClickAdwin:
    """ADWIN over one value per click, that also knows how many labelled examples its window spans
    (the challenger trains on that many)."""

    def __init__(self, delta: float):
        self.adwin = _Adwin(delta, clock=1)  # sparse stream (one value per click): check every one
        self.at: deque[int] = deque()  # labelled-example index of each value in the window

    def update(self, x: float, seen: int) -> tuple[bool, dict]:
        """True (and the evidence) when the mean fell."""
        hit, before, after, cut = self.adwin.update(x)
        self.at.append(seen)
        while len(self.at) > self.adwin.d.width:
            self.at.popleft()
        if not (hit and after < before):
            return False, {}
        since = seen - self.at[0] + 1 if self.at else 0
        return True, {
            "mean_before": before,
            "mean_after": after,
            "clicks_cut": cut,
            "window": int(since),
            "delta": self.adwin.d.delta,
        }


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.

    >>> ks_distance(np.arange(100.0), np.arange(100.0))
    0.0
    >>> ks_distance(np.zeros(10), np.ones(10))
    1.0
    """
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size
    return float(np.max(np.abs(gap)))


def ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """The asymptotic two-sample KS critical value at ``alpha`` for samples of ``n`` and ``m``.

    >>> round(ks_critical(500, 500), 3)
    0.109
    """
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _percentile(ref: np.ndarray, v: float) -> float:
    """Mid-rank percentile of ``v`` in the sorted ``ref`` (ties count half)."""
    return float((np.searchsorted(ref, v, "left") + np.searchsorted(ref, v, "right")) / (2.0 * ref.size))


class DriftMonitor:
    """Feeds per-example signals to the detectors and returns :class:`Detection` s.

    Parameters
    ----------
    config: the ``drift`` settings group (``STREAMREC_DRIFT_*``: the ADWIN deltas of the loss, feature,
        clicked-item and click-rank detectors, where 0 turns the last two off; Page-Hinkley's threshold
        on the click rate; the watched features; the warm-up before any detection is reported).
    where: which model the detections are about (``champion`` / ``challenger``).
    ctr_delta: Page-Hinkley's tolerated drift of the click indicator.
    item_reference: labelled examples whose item CTRs (and model scores) form the reference.
    """

    ITEM_PRIOR_STRENGTH = 10.0  # pseudo-impressions at the stream's running CTR
    ITEM_MIN_SHOWN = 1  # labelled examples of an item before its CTR counts
    MAX_ITEMS = 100_000  # per-item counts kept; beyond, the least shown half is forgotten

    def __init__(
        self,
        config: DriftSettings | None = None,
        *,
        where: str = "champion",
        ctr_delta: float = 0.005,
        item_reference: int = 1000,
    ):
        c = config or DriftSettings()
        unknown = [f for f in c.features if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown feature(s) to watch for drift: {unknown}; choose from {FEATURE_NAMES}")
        self.loss_delta, self.ctr_threshold, self.ctr_delta = c.loss_delta, c.ctr_threshold, ctr_delta
        self.feature_delta, self.warmup, self.where = c.feature_delta, c.warmup, where
        self.item_delta, self.item_reference = c.item_delta, item_reference
        self.rank_delta = c.rank_delta
        self.feature_names = list(c.features)
        self.feature_window = c.feature_window
        self._cols = [FEATURE_NAMES.index(f) for f in self.feature_names]
        self.reset()

    def reset(self) -> None:
        self.loss = _Adwin(self.loss_delta)
        self.ctr = drift.PageHinkley(min_instances=100, delta=self.ctr_delta, threshold=self.ctr_threshold, mode="both")
        self.features = {f: _Adwin(self.feature_delta) for f in self.feature_names}
        self.seen = 0
        self.ctr_seen = 0
        self.ctr_sum = 0.0
        self._reset_items()
        self._reset_rank()
        self._reset_windows()

    def _reset_windows(self) -> None:
        self.feature_ref: dict[str, list[float]] = {f: [] for f in self.feature_names}
        self.feature_recent: dict[str, deque[float]] = {
            f: deque(maxlen=self.feature_window) for f in self.feature_names
        }

    def feature_distances(self) -> dict[str, float | None]:
        """KS distance of each watched feature, reference vs recent window (None until both are full)."""
        self._upgrade_old_pickle()
        out: dict[str, float | None] = {}
        for f in self.feature_names:
            ref, recent = self.feature_ref[f], self.feature_recent[f]
            full = len(ref) >= self.feature_window and len(recent) >= self.feature_window
            out[f] = round(ks_distance(np.asarray(ref), np.fromiter(recent, float)), 4) if full else None
        return out

    def _window(self, X: np.ndarray) -> None:
        for name, col in zip(self.feature_names, self._cols, strict=True):
            values = X[:, col].astype(float).tolist()
            ref = self.feature_ref[name]
            take = max(0, self.feature_window - len(ref))
            ref.extend(values[:take])
            self.feature_recent[name].extend(values[take:])

    def _reset_items(self) -> None:
        self.item = _ClickAdwin(self.item_delta) if self.item_delta > 0 else None
        self.item_clicks: dict[str, float] = {}
        self.item_shown: dict[str, float] = {}
        self.item_ref: deque[float] = deque(maxlen=self.item_reference)

    def _reset_rank(self) -> None:
        self.rank = _ClickAdwin(self.rank_delta) if self.rank_delta > 0 else None
        self.rank_ref: deque[float] = deque(maxlen=self.item_reference)

    def update(
        self,
        losses: np.ndarray,
        clicks: np.ndarray,
        click_mask: np.ndarray,
        X: np.ndarray,
        ts: np.ndarray,
        item_ids: Sequence[str] | None = None,
        scores: np.ndarray | None = None,
    ) -> list[Detection]:
        """One prequential batch: per-example click losses, click labels (with mask), rows, times
        and (optionally) item ids and the model's click scores, which the clicked-item and the
        click-rank detectors need."""
        self._upgrade_old_pickle()
        out: list[Detection] = []
        # the references are sorted once per batch: a batch is scored against what came before it
        ref = np.sort(np.fromiter(self.item_ref, float)) if self.item is not None else None
        rank_ref = np.sort(np.fromiter(self.rank_ref, float)) if self.rank is not None else None
        for i in range(len(losses)):
            self.seen += 1
            when = int(ts[i])
            armed = self.seen > self.warmup
            if click_mask[i] and math.isfinite(losses[i]):
                y = float(clicks[i])
                found = [self._loss(float(losses[i]), when, armed), self._ctr(y, when, armed)]
                if ref is not None and item_ids is not None:  # ref is set iff the item detector is on
                    found.append(self._clicked_item(str(item_ids[i]), y, ref, when, armed))
                if rank_ref is not None and scores is not None:  # likewise the rank detector
                    found.append(self._click_rank(y, float(scores[i]), rank_ref, when, armed))
                out.extend(d for d in found if d is not None)
            out.extend(self._features(X[i], when, armed))
        self._window(X)
        return out

    def _upgrade_old_pickle(self) -> None:
        """A monitor pickled by an older version lacks newer parts: give it fresh ones."""
        if not hasattr(self, "feature_window"):
            self.feature_window = DriftSettings().feature_window
        if not hasattr(self, "feature_recent"):
            self._reset_windows()
        if hasattr(self, "rank_ref"):
            return
        self.item_delta = getattr(self, "item_delta", 0.0)
        self.item_reference = getattr(self, "item_reference", 1000)
        self.rank_delta = 0.05
        self._reset_items()
        self._reset_rank()

    def _loss(self, loss: float, when: int, armed: bool) -> Detection | None:
        """ADWIN on the click log-loss; only a rise is reported."""
        hit, before, after, cut = self.loss.update(loss)
        if not (hit and armed and after > before):
            return None
        return Detection(
            "adwin_loss",
            "prequential_click_loss",
            self.where,
            when,
            self.seen,
            {
                "mean_before": before,
                "mean_after": after,
                "examples_cut": cut,
                "window": int(self.loss.d.width),
                "delta": self.loss_delta,
            },
        )

    def _ctr(self, y: float, when: int, armed: bool) -> Detection | None:
        """Page-Hinkley on the click indicator (also keeps the running CTR the item detector uses)."""
        self.ctr_seen += 1
        self.ctr_sum += y
        self.ctr.update(y)
        if not (self.ctr.drift_detected and armed):
            return None
        return Detection(
            "page_hinkley_ctr",
            "ctr",
            self.where,
            when,
            self.seen,
            {"ctr_running": self.ctr_sum / self.ctr_seen, "threshold": self.ctr_threshold, "delta": self.ctr_delta},
        )

    def _click_rank(self, y: float, score: float, rank_ref: np.ndarray, when: int, armed: bool) -> Detection | None:
        """On a click, ADWIN on the percentile of the model's score among the reference scores."""
        out = None
        assert self.rank is not None  # called only with the rank detector on
        if y > 0.5 and rank_ref.size >= 100:
            hit, ev = self.rank.update(_percentile(rank_ref, score), self.seen)
            if hit and armed:
                out = Detection("adwin_click_rank", "clicked_item_score_percentile", self.where, when, self.seen, ev)
        self.rank_ref.append(score)
        return out

    def _features(self, row: np.ndarray, when: int, armed: bool) -> list[Detection]:
        """ADWIN on each watched feature's value."""
        out = []
        for name, col in zip(self.feature_names, self._cols, strict=True):
            hit, before, after, cut = self.features[name].update(float(row[col]))
            if hit and armed:
                out.append(
                    Detection(
                        "adwin_feature",
                        name,
                        self.where,
                        when,
                        self.seen,
                        {"mean_before": before, "mean_after": after, "examples_cut": cut, "delta": self.feature_delta},
                    )
                )
        return out

    def _clicked_item(self, iid: str, y: float, ref: np.ndarray, when: int, armed: bool) -> Detection | None:
        """Update the per-item counts with one labelled example; on a click, feed ADWIN the
        percentile of the item's CTR (as known *before* this example) in the reference."""
        assert self.item is not None  # called only with the item detector on
        base = (self.ctr_sum - y + 1.0) / (self.ctr_seen - 1 + 10.0)  # running CTR before this example
        k = self.ITEM_PRIOR_STRENGTH
        shown = self.item_shown.get(iid, 0.0)
        ctr = (self.item_clicks.get(iid, 0.0) + base * k) / (shown + k)
        out = None
        # an item never shown before has only the prior for a CTR: it says nothing about popularity,
        # and on a stream of one-off items the drifting prior alone raised alarms
        known = shown >= self.ITEM_MIN_SHOWN
        if y > 0.5 and known and ref.size >= 100:
            hit, ev = self.item.update(_percentile(ref, ctr), self.seen)
            if hit and armed:
                out = Detection("adwin_clicked_item", "clicked_item_ctr_percentile", self.where, when, self.seen, ev)
        if known:
            self.item_ref.append(ctr)
        self.item_clicks[iid] = self.item_clicks.get(iid, 0.0) + y
        self.item_shown[iid] = self.item_shown.get(iid, 0.0) + 1.0
        if len(self.item_shown) > self.MAX_ITEMS:
            keep = sorted(self.item_shown, key=self.item_shown.__getitem__)[len(self.item_shown) // 2 :]
            self.item_shown = {i: self.item_shown[i] for i in keep}
            self.item_clicks = {i: self.item_clicks[i] for i in keep if i in self.item_clicks}
        return out
