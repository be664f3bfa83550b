"""The online estimator: a :class:`RankingHead` plus its optimiser, with ``predict`` / ``learn`` verbs.

Why a wrapper: the champion, the challenger and the frozen baselines in tests all need the same
two verbs over a :class:`Batch`, and a checkpoint must carry the optimiser moments along with the
weights so a restarted learner continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from learner.examples import Batch
from streamrec.ranking import RankingHead


class OnlineRanker:
    """Micro-batch SGD (Adam) on masked multi-task log-loss.

    Two step sizes: the wide part (linear on the standardised features — popularity, CTR,
    content — and the position bias) learns at ``lr``; the deep part at ``lr * deep_lr_scale``.
    With a few hundred clicks the deep part at full speed fits noise and drags the ranking below
    what the popularity features alone give (measured on Open Bandit: prequential AUC 0.52 with
    one step size vs 0.53-0.54 with the deep part at 0.1×, popularity baseline 0.545-0.549).

    ``predict`` includes the learned position bias when positions are known, because the
    prequential evaluation scores what actually happened at that position; serving calls
    ``RankingHead.predict`` which is position-free.

    >>> import numpy as np
    >>> from learner.examples import Example, Batch
    >>> rng = np.random.default_rng(0)
    >>> m = OnlineRanker(lr=0.05, seed=0)
    >>> X = rng.normal(size=(512, m.head.n_features)).astype(np.float32)
    >>> y = (X[:, 0] > 0.5).astype(float)
    >>> b = Batch.of([Example("r", str(i), "u", 0, X[i], 0, y[i], 0.0) for i in range(512)])
    >>> for _ in range(30):
    ...     _ = m.learn(b)
    >>> p, _ = m.predict(b)
    >>> bool(p[y == 1].mean() > p[y == 0].mean() + 0.3)
    True
    """

    DEEP_LR_SCALE = 0.1

    def __init__(
        self,
        head: RankingHead | None = None,
        lr: float = 0.01,
        weight_decay: float = 1e-5,
        purchase_weight: float = 1.0,
        seed: int | None = 0,
    ):
        if seed is not None and head is None:
            torch.manual_seed(seed)
        self.head = head if head is not None else RankingHead()
        self.lr, self.weight_decay, self.purchase_weight = lr, weight_decay, purchase_weight
        h = self.head
        deep = [*h.shared.parameters(), *h.click_deep.parameters(), *h.buy_deep.parameters()]
        deep_ids = {id(p) for p in deep}
        wide = [p for p in h.parameters() if id(p) not in deep_ids]
        self.opt = torch.optim.Adam(
            [
                {"params": wide, "lr": lr, "lr_scale": 1.0},
                {"params": deep, "lr": lr * self.DEEP_LR_SCALE, "lr_scale": self.DEEP_LR_SCALE},
            ],
            weight_decay=weight_decay,
        )
        self.updates = 0
        self.examples = 0

    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.X.ndim != 2 or batch.X.shape[1] != self.head.n_features:
            raise ValueError(f"batch has {batch.X.shape[1:]} features, head expects {self.head.n_features}")
        X = torch.from_numpy(np.nan_to_num(batch.X.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
        pos = torch.from_numpy(batch.position.astype(np.int64))
        return X, pos

    def _logits(self, X: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known = pos >= 0
        click, buy = self.head(X, pos.clamp(min=0))
        if not bool(known.all()):  # unknown position: no position term
            base, _ = self.head(X, None)
            click = torch.where(known, click, base)
        return click, buy

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        self.head.eval()
        X, pos = self._tensors(batch)
        click, buy = self._logits(X, pos)
        off = self.head.logit_offset  # back to the stream's odds (see RankingHead.logit_offset)
        return torch.sigmoid(click + off).numpy(), torch.sigmoid(buy + off).numpy()

    def learn(self, batch: Batch) -> float:
        """One optimiser step on the batch; returns the mean training loss (0 if nothing to learn)."""
        if len(batch) == 0 or not (batch.click_mask.any() or batch.purchase_mask.any()):
            return 0.0
        X, pos = self._tensors(batch)
        self.head.update_normalizer(X)
        self.head.train()
        click, buy = self._logits(X, pos)
        cm = torch.from_numpy(batch.click_mask)
        pm = torch.from_numpy(batch.purchase_mask)
        loss = torch.zeros(())
        if bool(cm.any()):
            loss = loss + F.binary_cross_entropy_with_logits(click[cm], torch.from_numpy(batch.click)[cm])
        if bool(pm.any()):
            loss = loss + self.purchase_weight * F.binary_cross_entropy_with_logits(
                buy[pm], torch.from_numpy(batch.purchase)[pm]
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), 5.0)
        self.opt.step()
        self.updates += 1
        self.examples += len(batch)
        return float(loss.detach())

    def set_negative_rate(self, rate: float) -> None:
        """Declare the share of negatives :meth:`learn` will see, so predictions stay calibrated."""
        if not 0 < rate <= 1:
            raise ValueError("the negative rate must be in (0, 1]")
        with torch.no_grad():
            self.head.logit_offset.fill_(math.log(rate))

    def set_lr(self, lr: float) -> None:
        if lr <= 0:
            raise ValueError("lr must be positive")
        self.lr = lr
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def fresh(self, seed: int | None = None) -> OnlineRanker:
        """A new, untrained ranker with this one's settings and input normalisation (for a challenger)."""
        if seed is not None:
            torch.manual_seed(seed)
        head = RankingHead(
            n_features=self.head.n_features,
            hidden=self.head.hidden,
            max_positions=self.head.max_positions,
            feature_names=self.head.feature_names,
        )
        with torch.no_grad():
            head.x_mean.copy_(self.head.x_mean)
            head.x_var.copy_(self.head.x_var)
            head.x_count.copy_(self.head.x_count)
            head.logit_offset.copy_(self.head.logit_offset)
        return OnlineRanker(
            head, lr=self.lr, weight_decay=self.weight_decay, purchase_weight=self.purchase_weight, seed=None
        )

    def frozen_copy(self) -> OnlineRanker:
        """A deep copy (weights and optimiser); callers that never ``learn`` on it get a frozen model."""
        other = OnlineRanker(
            copy.deepcopy(self.head),
            lr=self.lr,
            weight_decay=self.weight_decay,
            purchase_weight=self.purchase_weight,
            seed=None,
        )
        other.opt.load_state_dict(copy.deepcopy(self.opt.state_dict()))
        other.updates, other.examples = self.updates, self.examples
        return other

    def state_dict(self) -> dict:
        return {
            "config": self.head.config(),
            "head": self.head.state_dict(),
            "opt": self.opt.state_dict(),
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "purchase_weight": self.purchase_weight,
            "updates": self.updates,
            "examples": self.examples,
        }

    @classmethod
    def from_state(cls, st: dict) -> OnlineRanker:
        from streamrec.ranking import head_from_state

        head = head_from_state(st["config"], st["head"])
        m = cls(head, lr=st["lr"], weight_decay=st["weight_decay"], purchase_weight=st["purchase_weight"], seed=None)
        if len(st["opt"]["param_groups"]) == len(m.opt.param_groups):
            m.opt.load_state_dict(st["opt"])
        # else: a checkpoint from the one-step-size optimiser; the weights carry over, Adam restarts
        m.updates, m.examples = int(st["updates"]), int(st["examples"])
        return m
