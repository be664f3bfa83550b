"""The online-learning core: prequential scoring, drift detection, champion/challenger, learning.

Independent of Kafka and Redis on purpose: the service feeds it micro-batches of
:class:`Example` s from the stream, tests and benchmarks feed it replayed datasets directly.

Per micro-batch (``step``):
1. the champion (and a running challenger) score the batch *before* learning — prequential;
2. the scores feed the rolling metrics and the drift detectors;
3. the champion and the challenger learn from the batch;
4. a drift that says the *ranking* is wrong (loss rising, the model ranking clicks lower, clicks
   moving to other items) starts a challenger: a fresh head trained on the buffered examples
   since the drift point (ADWIN's current window), then on the live stream;
5. the challenger replaces the champion when its loss on the same recent examples is lower by
   ``learner.challenger_margin``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learner.drift import Detection, DriftMonitor
from learner.estimator import OnlineRanker
from learner.evaluation import Prequential, logloss
from learner.examples import Batch, Example
from streamrec.ranking import N_FEATURES
from streamrec.settings import DriftSettings, LearnerSettings

# Detections that start a challenger. Page-Hinkley on the click rate and the feature detectors only
# report (drift topic, metrics, dashboard): a CTR or input change alone (a campaign, the season, the
# traffic mix) does not mean the ranking is wrong, and PH at a fixed threshold also fires on long
# stationary streams (simulated Bernoulli clicks: 11 / 26 alarms per 300k examples at 5 % / 10 %
# CTR); a challenger per alarm would be training churn and promotions won by noise.
HARMFUL = ("adwin_loss", "adwin_click_rank", "adwin_clicked_item")


@dataclass
class StepReport:
    """What one step did: the champion's pre-learning scores and any drift / promotion."""

    p_click: np.ndarray
    p_purchase: np.ndarray
    detections: list[Detection] = field(default_factory=list)
    challenger_started: bool = False
    promoted: bool = False
    dropped_challenger: bool = False
    loss: float = 0.0


class OnlineLearner:
    """Champion (+ optional challenger) learning prequentially from micro-batches.

    >>> import numpy as np
    >>> from learner.examples import Example
    >>> rng = np.random.default_rng(1)
    >>> core = OnlineLearner(OnlineRanker(lr=0.05, seed=0), drift=DriftSettings(warmup=10**9))
    >>> for step in range(80):
    ...     X = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
    ...     y = (rng.random(64) < 1 / (1 + np.exp(-3 * X[:, 0]))).astype(float)
    ...     _ = core.step([Example("r", str(i), "u", step, X[i], 0, y[i], 0.0) for i in range(64)])
    >>> core.metrics()["click_auc"] > 0.75
    True
    """

    # --- internal constants (not settings) ---
    METRICS_WINDOW = 5000  # examples in the rolling metrics
    BUFFER_SIZE = 5000  # recent examples kept for a challenger's replay
    CHALLENGER_WINDOW = 2000  # recent paired examples the challenger is judged on
    CHALLENGER_REPLAY_EPOCHS = 4
    CHALLENGER_LR_SCALE = 3.0  # the challenger adapts faster; promoted, it returns to ``lr``

    def __init__(
        self,
        champion: OnlineRanker,
        learner: LearnerSettings | None = None,
        drift: DriftSettings | None = None,
        seed: int = 0,
    ):
        """``learner`` and ``drift`` are the settings groups (their defaults when None); ``seed`` of
        the negative sampling."""
        self.config = c = learner or LearnerSettings()
        if not 0 < c.train_negative_rate <= 1:
            raise ValueError("train_negative_rate must be in (0, 1]")
        self.champion = champion
        self.champion.set_negative_rate(c.train_negative_rate)
        self.rng = np.random.default_rng(seed)
        self.challenger: OnlineRanker | None = None
        self.challenger_since = 0  # labelled-example index the challenger started at
        self.pairs: deque[tuple[float, float]] = deque(maxlen=self.CHALLENGER_WINDOW)
        self.prequential = Prequential(self.METRICS_WINDOW)
        self.challenger_eval = Prequential(self.METRICS_WINDOW)
        self.monitor = DriftMonitor(drift)
        self.buffer: deque[Example] = deque(maxlen=self.BUFFER_SIZE)
        self.examples = 0
        self.clicks = 0  # examples learned with click = 1: tests and ops see that labels arrive
        self.detections_total: dict[str, int] = {}
        self.promotions = 0
        self.challengers_started = 0
        self.challengers_dropped = 0

    # --- the verbs ----------------------------------------------------------------------------

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        return self.champion.predict(batch)

    def step(self, examples: list[Example]) -> StepReport:
        batch = Batch.of(examples, N_FEATURES)
        if len(batch) == 0:
            return StepReport(np.zeros(0), np.zeros(0))
        pc, pb = self.champion.predict(batch)
        losses = self.prequential.update(pc, pb, batch)
        report = StepReport(pc, pb)
        report.detections = self.monitor.update(
            losses, batch.click, batch.click_mask, batch.X, batch.ts, batch.item_ids, pc
        )
        for d in report.detections:
            self.detections_total[d.detector] = self.detections_total.get(d.detector, 0) + 1

        if self.challenger is not None:
            qc, qb = self.challenger.predict(batch)
            self.challenger_eval.update(qc, qb, batch)
            m = batch.click_mask
            if m.any():
                self.pairs.extend(
                    zip(logloss(pc[m], batch.click[m]).tolist(), logloss(qc[m], batch.click[m]).tolist(), strict=True)
                )

        train = self._training_batch(batch)
        report.loss = self.champion.learn(train)
        if self.challenger is not None:
            self.challenger.learn(train)
        self.buffer.extend(examples)
        self.examples += len(examples)
        self.clicks += int((batch.click_mask & (batch.click > 0.5)).sum())

        if self.challenger is None and any(d.detector in HARMFUL for d in report.detections):
            window = max((d.evidence.get("window", 0) for d in report.detections if d.detector in HARMFUL), default=0)
            self._start_challenger(window or self.config.challenger_min_examples)
            report.challenger_started = True
        elif self.challenger is not None:
            verdict = self._judge()
            report.promoted = verdict == "promote"
            report.dropped_challenger = verdict == "drop"
        return report

    def _training_batch(self, batch: Batch) -> Batch:
        """Every click (and purchase) and a ``train_negative_rate`` share of the non-clicks.

        Why: at e-commerce click rates (0.5 % on Open Bandit) a micro-batch is almost all
        negatives, and the few clicks barely move the head. Learning from a sample of the
        negatives is the usual CTR-training fix (He et al. 2014, "Practical lessons from
        predicting clicks on ads"); the heads' ``logit_offset`` = log(rate) puts predictions back
        on the stream's odds. Prediction, metrics and drift detection still see every example.
        """
        rate = self.config.train_negative_rate
        if rate >= 1.0 or len(batch) == 0:
            return batch
        negative = batch.click_mask & (batch.click < 0.5) & ~(batch.purchase_mask & (batch.purchase > 0.5))
        keep = ~negative | (self.rng.random(len(batch)) < rate)
        return batch.subset(np.flatnonzero(keep))

    # --- champion / challenger ----------------------------------------------------------------

    def _start_challenger(self, since_drift: int) -> None:
        """A fresh head trained on the examples since the drift point, then on the live stream."""
        c = self.config
        self.challenger = self.champion.fresh()
        self.challenger.set_negative_rate(c.train_negative_rate)
        self.challenger.set_lr(self.champion.lr * self.CHALLENGER_LR_SCALE)
        recent = list(self.buffer)[-max(since_drift, c.batch_size) :]
        for _ in range(self.CHALLENGER_REPLAY_EPOCHS):
            for k in range(0, len(recent), c.batch_size):
                self.challenger.learn(self._training_batch(Batch.of(recent[k : k + c.batch_size], N_FEATURES)))
        self.challenger_since = self.examples
        self.challenger_eval = Prequential(self.METRICS_WINDOW)
        self.pairs.clear()
        self.challengers_started += 1

    def _judge(self) -> str | None:
        c = self.config
        if len(self.pairs) >= c.challenger_min_examples:
            champ, chall = np.mean(self.pairs, axis=0)
            if chall < champ * (1 - c.challenger_margin):
                self.promote()
                return "promote"
        if self.examples - self.challenger_since >= c.challenger_max_examples:
            self.challenger = None
            self.pairs.clear()
            self.challengers_dropped += 1
            return "drop"
        return None

    def promote(self) -> None:
        """The challenger becomes the champion; the loss detector restarts on the new model."""
        if self.challenger is None:
            raise RuntimeError("no challenger to promote")
        self.champion = self.challenger
        self.champion.set_lr(self.config.lr)
        self.challenger = None
        self.pairs.clear()
        self.prequential = self.challenger_eval
        self.challenger_eval = Prequential(self.METRICS_WINDOW)
        self.monitor.reset()
        self.monitor.warmup = min(self.monitor.warmup, self.config.challenger_min_examples)
        self.promotions += 1

    def replace_champion(self, model: OnlineRanker) -> None:
        """Adopt a model from outside (rollback, operator's choice); any challenger is dropped."""
        self.champion = model
        self.champion.set_negative_rate(self.config.train_negative_rate)
        self.challenger = None
        self.pairs.clear()
        self.monitor.reset()

    def metrics(self) -> dict[str, Any]:
        out = dict(self.prequential.summary())
        if self.challenger is not None:
            out.update({f"challenger_{k}": v for k, v in self.challenger_eval.summary().items()})
        out.update(
            examples=self.examples,
            clicks=self.clicks,
            updates=self.champion.updates,
            promotions=self.promotions,
            challenger_running=self.challenger is not None,
        )
        return out

    # --- checkpointing --------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly here (River detectors pickle as plain objects)."""
        return {
            "champion": self.champion.state_dict(),
            "challenger": self.challenger.state_dict() if self.challenger is not None else None,
            "challenger_since": self.challenger_since,
            "pairs": list(self.pairs),
            "prequential": self.prequential.state(),
            "challenger_eval": self.challenger_eval.state(),
            "monitor": self.monitor,
            "buffer": list(self.buffer),
            "examples": self.examples,
            "clicks": self.clicks,
            "detections_total": self.detections_total,
            "promotions": self.promotions,
            "challengers_started": self.challengers_started,
            "challengers_dropped": self.challengers_dropped,
            "rng": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state(
        cls, st: dict, learner: LearnerSettings | None = None, drift: DriftSettings | None = None
    ) -> OnlineLearner:
        core = cls(OnlineRanker.from_state(st["champion"]), learner, drift)
        if st["challenger"] is not None:
            core.challenger = OnlineRanker.from_state(st["challenger"])
        core.challenger_since = st["challenger_since"]
        core.pairs.extend(st["pairs"])
        core.prequential.load_state(st["prequential"])
        core.challenger_eval.load_state(st["challenger_eval"])
        core.monitor = st["monitor"]
        core.buffer.extend(st["buffer"])
        core.examples = st["examples"]
        core.clicks = st.get("clicks", 0)  # checkpoints from before the count
        core.detections_total = dict(st["detections_total"])
        core.promotions = st["promotions"]
        core.challengers_started = st["challengers_started"]
        core.challengers_dropped = st["challengers_dropped"]
        if "rng" in st:
            core.rng.bit_generator.state = st["rng"]
        return core
