"""Training examples and micro-batches: the unit every learner component consumes.

A label is ``None`` when it is not known *yet* (a click arrived, the purchase window is still
open) or not known at all (a negative-sampled row has no purchase label); such entries are
masked out of that task's loss and metrics instead of being guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Example:
    """One (request, item) pair with its feature row, shown position and labels."""

    request_id: str
    item_id: str
    user_id: str
    ts: int  # event time of the impression (ms)
    x: np.ndarray  # (N_FEATURES,) float32, the row serving scored (or recomputed)
    position: int | None  # 0-based slot it was shown at; None = unknown (sampled negative)
    click: float | None  # 1 clicked / carted / bought, 0 shown and ignored, None unknown
    purchase: float | None  # 1 bought within the window, 0 not, None unknown


@dataclass
class Batch:
    """Column view of examples, ready for torch."""

    X: np.ndarray  # (n, F) float32
    position: np.ndarray  # (n,) int64, -1 = unknown
    click: np.ndarray  # (n,) float32 (0 where masked)
    click_mask: np.ndarray  # (n,) bool
    purchase: np.ndarray
    purchase_mask: np.ndarray
    ts: np.ndarray  # (n,) int64
    item_ids: list[str]

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def of(cls, examples: Sequence[Example], n_features: int | None = None) -> Batch:
        if not examples:
            f = n_features or 0
            return cls(
                np.zeros((0, f), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                np.zeros(0, bool),
                np.zeros(0, np.float32),
                np.zeros(0, bool),
                np.zeros(0, np.int64),
                [],
            )
        X = np.stack([np.asarray(e.x, dtype=np.float32) for e in examples])
        if n_features is not None and X.shape[1] != n_features:
            raise ValueError(f"examples have {X.shape[1]} features, expected {n_features}")
        pos = np.array([-1 if e.position is None else e.position for e in examples], dtype=np.int64)
        cm = np.array([e.click is not None for e in examples])
        pm = np.array([e.purchase is not None for e in examples])
        click = np.array([e.click or 0.0 for e in examples], dtype=np.float32)
        buy = np.array([e.purchase or 0.0 for e in examples], dtype=np.float32)
        ts = np.array([e.ts for e in examples], dtype=np.int64)
        return cls(X, pos, click, cm, buy, pm, ts, [e.item_id for e in examples])

    def subset(self, idx: np.ndarray) -> Batch:
        return Batch(
            self.X[idx],
            self.position[idx],
            self.click[idx],
            self.click_mask[idx],
            self.purchase[idx],
            self.purchase_mask[idx],
            self.ts[idx],
            [self.item_ids[i] for i in np.asarray(idx).nonzero()[0]]
            if np.asarray(idx).dtype == bool
            else [self.item_ids[i] for i in idx],
        )
