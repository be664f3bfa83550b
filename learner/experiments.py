"""Open Bandit experiments shared by the tests and ``bench/learner.py``.

A run replays real Open Bandit impressions (all policies and campaigns, merged in time order)
through the learner core and reports prequential AUCs of the online champion, of a popularity
baseline and — when a shift is injected — of the champion frozen at the shift.

Stream: every click and 5 % of the non-clicked impressions (negative down-sampling, as CTR
training usually does): at the sample's 0.5 % CTR a drift detector would see ~2 clicks per 500
events, too little evidence for any detector; down-sampled, it sees ~37.

Injected shift (``shift=True``), from the middle of the stream on — a remap only: the same rows
are shown and the same number of clicks happen (the click rate does not change), but clicks move
to other items. Per campaign, items are ranked by their clicks in the first half; the click on
the i-th most clicked item moves to the next impression of the i-th least clicked one, cycling
within the less clicked half (``remap_clicks``): users now click what they used to ignore. A weak
ranker's mean loss stays flat under such a shift, so the loss detector does not see it; the
click-rank detector (``learner/drift.py``) does — the model now ranks the clicked items low —
and it starts the challenger.

User histories: the Open Bandit rows carry each user's past clicks (the affinity columns), which
the adapter replays as organic clicks before the user's first impression
(``streamrec/datasets/open_bandit.py``); the popularity baseline counts them as well.

Measured (1 thread, this sample, 5 % negatives, ~3,250 rows, ~287 clicks; ``bench/learner.py``,
tests/test_learner_open_bandit.py):
* stationary, whole stream, seeds 0/1/2: online 0.602/0.600/0.595, popularity 0.551/0.553/0.554;
  paired bootstrap 95 % intervals of the difference [0.025, 0.078] / [0.022, 0.074] /
  [0.014, 0.069]. Later half: parity with popularity (0.562 vs 0.555 on seed 0, paired interval
  [-0.029, +0.041]) and a little below the champion frozen at the half (0.573; online - frozen
  -0.011 [-0.025, +0.003], the same on seeds 1/2). On the time-ordered stream the click-rank
  detector fires late (seed 0, ~3,200 events); its challenger does not beat the champion by the
  2 % margin;
* why the later half is hard: the users' imported histories (``user_history_log`` and the other
  user columns) rank clicks at AUC 0.79 in the first quarter of the log and 0.49-0.52 after it
  (5 % sample, seed 0: history rows click 52 % vs 4 % in the first quarter, 16 / 4 / 18 % vs 8-10 %
  later), so what the head learns from them early is noise later. Batch logistic regressions on
  the same columns say the same: fitted on the first half, later-half AUC 0.560-0.574 (C 1 to
  0.01; +0.019 [-0.024, +0.065] over popularity at best); refitted every 100 rows on everything
  before, 0.552-0.555; on the raw stream 0.514-0.543 vs popularity 0.562, with or without log(1 +
  cumulative clicks) as an extra column. Tried and not adopted: per-coordinate step sizes
  (Adagrad, 0.03 wide / 0.003 deep) lift the whole stream to 0.627 / 0.629 / 0.625 but leave the
  later half where it is (0.560 / 0.558 / 0.557); averaging the last ~20 iterates moves it to
  0.568 / 0.565 / 0.568 (frozen 0.572 / 0.567 / 0.576) and the raw later half to 0.469. Shuffled
  (stationary) replays, later half, online vs frozen: 0.621 vs 0.608, 0.574 vs 0.570, 0.618 vs
  0.617, all intervals straddling 0;
* the later half's ceiling (``RunResult.later_half_ceiling``): an L2 logistic regression on the
  head's inputs, log(1 + popularity) and the slot, fitted on the later half's *own* labels,
  reaches in-sample 0.601 / 0.595 / 0.607 (vs popularity +0.046 [-0.000, +0.089], +0.037
  [-0.009, +0.079], +0.041 [+0.003, +0.081]) and cross-fitted (5 folds, future rows included)
  0.515 / 0.489 / 0.497, below popularity (-0.041 / -0.069 / -0.069); on the raw stream in-sample
  0.607 (+0.045 [+0.001, +0.082]), cross-fitted 0.512 (-0.050). With ~145 clicks in the later
  half a paired interval clears 0 only near +0.04, which even a fit that has seen the answers
  barely reaches: no head on these inputs can earn it honestly on this sample;
* raw 60k rows (0.5 % CTR), learning from every click and 5 % of the non-clicks: online 0.591 vs
  popularity 0.534, interval [0.015, 0.095] (learning from every non-click: 0.533);
* remap-only shift, seeds 0/1/2/3: the click-rank ADWIN fires 432 / 366 / 597 / 438 events after
  the shift (the 500 events after it hold ~22 clicks) and nothing fires before it; the
  challenger is promoted on every seed (791 / 731 / 923 / 1026 events after the shift); later-half
  AUC online 0.597 / 0.592 / 0.546 / 0.582 vs frozen 0.437 / 0.483 / 0.441 / 0.423 vs popularity
  0.452 / 0.449 / 0.422 / 0.449. Neither the model-free clicked-item ADWIN (~22 clicks per 500
  events are too few for it) nor the loss ADWIN fires — a weak ranker's mean log-loss barely
  moves under a remap;
* stationary shuffled replays: no detection by any detector.
"""

from __future__ import annotations

import collections
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learner.baselines import popularity_scores
from learner.estimator import OnlineRanker
from learner.evaluation import auc, auc_difference
from learner.examples import Batch, Example
from learner.online import OnlineLearner, StepReport
from learner.replay import ReplayLog, replay
from streamrec.datasets import open_bandit as ob
from streamrec.features import ReplayFeatures
from streamrec.schemas import Event
from streamrec.settings import DriftSettings, LearnerSettings

KEEP_NON_CLICKS = 0.05


@functools.lru_cache(maxsize=2)
def _merged(data_dir: Path) -> tuple[ob.Impression, ...]:
    """All six files merged (rows are frozen, so one parse serves every experiment in a process)."""
    return tuple(ob.merged(data_dir))


def open_bandit_stream(
    data_dir: Path,
    *,
    shift: bool = False,
    shuffle_seed: int | None = None,
    keep_non_clicks: float = KEEP_NON_CLICKS,
    seed: int = 0,
) -> tuple[list[ob.Impression], int]:
    """The rows to replay and the index of the first post-shift row (``len(rows) // 2`` unshifted)."""
    rows = ob.keep_all_clicks(list(_merged(Path(data_dir))), keep_non_clicks, seed=seed)
    if shuffle_seed is not None:  # stationary: same rows, random order, original timestamps in order
        rng = np.random.default_rng(shuffle_seed)
        ts = sorted(r.ts for r in rows)
        rows = [
            ob.Impression(**{**rows[k].__dict__, "ts": t}) for k, t in zip(rng.permutation(len(rows)), ts, strict=True)
        ]
    half = len(rows) // 2
    if not shift:
        return rows, half
    clicks = collections.Counter(r.item_id for r in rows[:half] if r.click)
    shown = collections.Counter(r.item_id for r in rows[:half])
    mapping: dict[str, str] = {}
    for c in ob.CAMPAIGNS:
        items = sorted((i for i in shown if i.startswith(f"{c}:")), key=lambda i: (clicks[i], shown[i]))
        if not items:
            continue
        rare = items[: max(1, len(items) // 2)]  # least clicked first
        mapping.update((src, rare[k % len(rare)]) for k, src in enumerate(reversed(items)))
    return ob.remap_clicks(rows, half, mapping), half


@dataclass
class RunResult:
    log: ReplayLog
    events: int
    shift_event: int  # index of the first post-shift event
    seconds: float
    frozen_p: list[float] = field(default_factory=list)  # frozen champion, post-shift click examples
    frozen_y: list[float] = field(default_factory=list)
    core: OnlineLearner | None = None
    popularity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per click-labelled example
    rows: list[np.ndarray] = field(default_factory=list)  # feature row of each click-labelled example
    positions: list[int] = field(default_factory=list)  # its shown slot (-1 unknown)

    @property
    def examples_per_s(self) -> float:
        return len(self.log.p_click) / self.seconds if self.seconds else float("nan")

    def aucs(self) -> dict[str, float]:
        p, y, idx = self.log.arrays()
        pop = self.popularity
        post = idx >= self.shift_event
        later = np.arange(len(y)) >= len(y) // 2
        out = {
            "online": auc(p, y),
            "popularity": auc(pop, y),
            "online_post": auc(p[post], y[post]),
            "popularity_post": auc(pop[post], y[post]),
            "online_later_half": auc(p[later], y[later]),
            "popularity_later_half": auc(pop[later], y[later]),
        }
        if self.frozen_p:
            fp, fy = np.array(self.frozen_p), np.array(self.frozen_y)
            n = len(fp)  # the frozen model scored exactly the last n click-labelled examples
            out["frozen_post"] = auc(fp, fy)
            out["online_same_rows"] = auc(p[-n:], y[-n:])
        return out

    def versus_popularity(self, part: str = "whole", n_boot: int = 1000) -> tuple[float, float, float]:
        """Online AUC minus popularity AUC on the ``"whole"`` stream or its ``"later_half"``, with
        the paired bootstrap 95 % interval (``learner.evaluation.auc_difference``)."""
        if part not in ("whole", "later_half"):
            raise ValueError("part is 'whole' or 'later_half'")
        p, y, _ = self.log.arrays()
        keep = np.arange(len(y)) >= (len(y) // 2 if part == "later_half" else 0)
        return auc_difference(p[keep], self.popularity[keep], y[keep], n_boot=n_boot)

    def versus_frozen(self, n_boot: int = 1000) -> tuple[float, float, float]:
        """Online AUC minus the frozen champion's on the rows the frozen copy scored (from the
        shift / the half on), with the paired bootstrap 95 % interval; needs ``freeze_at_shift``."""
        if not self.frozen_p:
            raise ValueError("no frozen champion: run with freeze_at_shift=True")
        p, y, _ = self.log.arrays()
        n = len(self.frozen_p)
        if not np.array_equal(y[-n:], np.array(self.frozen_y)):
            raise AssertionError("the frozen copy scored other rows than the online head's last ones")
        return auc_difference(p[-n:], np.array(self.frozen_p), y[-n:], n_boot=n_boot)

    def later_half_ceiling(self, c: float = 0.1, folds: int = 5, n_boot: int = 1000) -> dict[str, tuple]:
        """What *any* linear click model on the head's inputs could reach on the later half: an
        L2 logistic regression on the features, log(1 + popularity) and the shown slot, fitted on
        the later half's own labels — in-sample (it has seen every answer: a ceiling, not a
        model) and cross-fitted (``folds``-fold, future rows included). Each as ``(AUC, AUC -
        popularity, low, high)`` with the paired bootstrap 95 % interval. When even the in-sample
        fit's interval barely clears popularity, the later half holds no signal an online head
        could earn an interval above 0 from; the shortfall is the sample, not the learner."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        _p, y, _ = self.log.arrays()
        if len(self.rows) != len(y):
            raise AssertionError("the run kept other rows than the log scored")
        later = np.arange(len(y)) >= len(y) // 2
        slot = np.eye(3)[np.clip(np.asarray(self.positions)[later], 0, 2)]
        X = np.column_stack([np.stack(self.rows)[later], np.log1p(self.popularity[later]), slot])
        X = (X - X.mean(0)) / (X.std(0) + 1e-9)
        yl, pop = y[later], self.popularity[later]
        fitted = LogisticRegression(C=c, max_iter=2000).fit(X, yl).decision_function(X)
        crossed = cross_val_predict(
            LogisticRegression(C=c, max_iter=2000),
            X,
            yl,
            cv=StratifiedKFold(folds, shuffle=True, random_state=0),
            method="decision_function",
        )
        return {
            name: (auc(s, yl), *auc_difference(s, pop, yl, n_boot=n_boot))
            for name, s in (("in_sample", fitted), ("cross_fitted", crossed))
        }

    def clicks_after_shift(self, within: int = 500) -> int:
        """Clicks among the ``within`` events after the shift: the evidence a detector has there."""
        _p, y, idx = self.log.arrays()
        return int(((idx >= self.shift_event) & (idx < self.shift_event + within) & (y > 0.5)).sum())

    def first_detection_after_shift(self, detectors: tuple[str, ...] = ("adwin_loss",)) -> int | None:
        """Events between the shift and the first such detection at or after it."""
        lags = [
            i - self.shift_event for i, d in self.log.detections if d.detector in detectors and i >= self.shift_event
        ]
        return min(lags) if lags else None


# The learner's defaults, with micro-batches of 32 and a 300-example drift warm-up for a short stream.
LEARNER = LearnerSettings(batch_size=32)
DRIFT = DriftSettings(warmup=300)


@functools.lru_cache(maxsize=2)
def item_tables(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    vectors = ob.item_vectors(data_dir)
    attrs = {
        iid: {"title": iid, "category": ctx.category, "price": None}
        for c in ob.CAMPAIGNS
        for iid, ctx in ob.item_context(data_dir, c).items()
    }
    return vectors, attrs


def run(
    data_dir: Path,
    rows: list[ob.Impression],
    shift_row: int,
    *,
    learner: LearnerSettings = LEARNER,
    drift: DriftSettings = DRIFT,
    freeze_at_shift: bool = False,
) -> RunResult:
    """Replay ``rows`` prequentially; optionally freeze a copy of the champion at ``shift_row``."""
    vectors, attrs = item_tables(data_dir)
    core = OnlineLearner(OnlineRanker(lr=learner.lr, seed=0), learner, drift)
    events: list[Event] = list(ob.to_events(rows))
    first = rows[shift_row] if shift_row < len(rows) else None
    shift_rid = f"obd-{first.policy}-{first.campaign}-{first.row}" if first else None
    shift_event = next(
        (k for k, e in enumerate(events) if e.request_id == shift_rid and e.type == "impression"), len(events)
    )
    result = RunResult(ReplayLog(), len(events), shift_event, 0.0, core=core)
    frozen: list[OnlineRanker] = []

    def on_event(k: int, _e: Event) -> None:
        if freeze_at_shift and k == shift_event:
            frozen.append(core.champion.frozen_copy())

    def on_step(examples: list[Example], _report: StepReport) -> None:
        for e in examples:
            if e.click is not None:  # the same examples, in the same order, as the log's p_click
                result.rows.append(e.x)
                result.positions.append(-1 if e.position is None else e.position)
        if frozen:
            p, _ = frozen[0].predict(Batch.of(examples))
            for e, v in zip(examples, p, strict=True):
                if e.click is not None:
                    result.frozen_p.append(float(v))
                    result.frozen_y.append(e.click)

    t0 = time.perf_counter()
    result.log = replay(
        events,
        core,
        ReplayFeatures(attrs),
        vectors.get,
        batch_size=learner.batch_size,
        on_event=on_event,
        on_step=on_step,
    )
    result.seconds = time.perf_counter() - t0
    result.popularity = popularity_scores(events, result.log.stream_index, result.log.item_ids)
    return result
