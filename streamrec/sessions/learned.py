"""The learned fusion of the session families: pool features, a listwise linear scorer, the pool log.

Why learned: the fixed family weights were chosen on DIGINETICA; another catalogue (meaningful
titles, other session lengths) wants other weights, and how much each family — and content
similarity — counts must follow from what shoppers click *in this shop*. Why listwise and linear:
the label of a /recommend request is which pooled candidate the session's next event picked, a
softmax over the pool is exactly that likelihood, and a linear scorer started at the fixed weights
(:meth:`FusionModel.initial`) ranks like the fixed fusion until the stream says otherwise.

Data flow: serving scores a pool, keeps its feature rows in Redis under the request id
(:func:`log_pool`, with a TTL) and publishes the impression; the learner joins the impression with
the user's next interaction (``learner/next_item.py``), takes one Adagrad step per example and
publishes the weights with its model snapshot; serving orders by them in the :attr:`FusionModel.mode`
that has earned it on the learner's test-then-train comparison (else by the fixed weights).

Redis layout: ``{prefix}pool:{request_id}`` — a hash ``{schema, items, F}``, ``items`` the JSON
list of pooled item ids (the fixed fusion's best :data:`POOL_LOGGED`), ``F`` the base64 float16
rows in that order, living ``learner.label_window_s`` × 4 + 60 s (its size: README, Memory).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamrec.sessions.params import FAMILIES

if TYPE_CHECKING:  # pragma: no cover - types only
    import redis

    from streamrec.settings import Settings

# How serving may order a pool: the fixed weights, the learned ones, or the learned order inside
# the fixed top RERANK_K (the same hits at RERANK_K, a better order among them).
MODES = ("fixed", "learned", "rerank")
RERANK_K = 20
POOL_LOGGED = 100  # candidates of a response the learner sees; the next click is among them ~70 % of the time
FEATURE_NAMES: list[str] = (
    [f"{f}_score" for f in FAMILIES]  # the family's score / its best in this request (0 when absent)
    + [f"{f}_rr" for f in FAMILIES]  # 1 / (1 + rank in the family), 0 when absent
    + ["profile_cos", "repeat_x_len", "stan_x_len", "is_last_item"]
)
N_FEATURES = len(FEATURE_NAMES)
# What serving logs and the learner joins: the pooled item ids and their feature rows, in one order.
Pool = tuple[list[str], np.ndarray]
SCHEMA_ID = hashlib.sha1(json.dumps(FEATURE_NAMES).encode()).hexdigest()[:12]
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def features(
    pool: Sequence[str],
    families: Mapping[str, Mapping[str, float]],
    prefix: Sequence[str],
    profile_cos: Sequence[float],
    top_n: int,
) -> np.ndarray:
    """``(len(pool), N_FEATURES)`` float32: each family's max-normalised score and log rank, the
    cosine of the item to the session's profile vector (content similarity), and two interactions
    with the session length (a repeat means more in a long session; STAN less in a one-click one).

    >>> F = features(["a", "b"], {"repeat": {"a": 1.0}, "stan": {"b": 2.0, "a": 1.0}}, ["a"], [0.5, 0.1], 50)
    >>> F[:, _COL["stan_score"]].tolist(), F[:, _COL["is_last_item"]].tolist()
    ([0.5, 1.0], [1.0, 0.0])
    """
    F = np.zeros((len(pool), N_FEATURES), dtype=np.float32)
    if not pool:
        return F
    row = {x: j for j, x in enumerate(pool)}
    for f in FAMILIES:
        scores = families.get(f) or {}
        ranked = heapq.nsmallest(top_n, scores.items(), key=lambda kv: (-kv[1], kv[0]))  # = sorted(...)[:top_n]
        top = ranked[0][1] if ranked else 0.0
        if top <= 0:
            continue
        for rank, (x, v) in enumerate(ranked):
            j = row.get(x)
            if j is not None:
                F[j, _COL[f"{f}_score"]] = v / top
                F[j, _COL[f"{f}_rr"]] = 1.0 / (1.0 + rank)
    length = math.log1p(len(prefix))
    F[:, _COL["profile_cos"]] = np.asarray(profile_cos, dtype=np.float32)
    F[:, _COL["repeat_x_len"]] = F[:, _COL["repeat_score"]] * length
    F[:, _COL["stan_x_len"]] = F[:, _COL["stan_score"]] * length
    if prefix:
        last = row.get(prefix[-1])
        if last is not None:
            F[last, _COL["is_last_item"]] = 1.0
    return F


@dataclass
class FusionModel:
    """A linear listwise scorer with per-coordinate (Adagrad) step sizes, and its own scorecard.

    ``learn`` is test-then-train: before the step it records where each way of ordering
    (:data:`MODES`) ranks the picked item, so :attr:`mode` compares them on the same examples.

    >>> m = FusionModel.initial({"repeat": 1.0, "stan": 1.0})
    >>> F = np.zeros((3, N_FEATURES), dtype=np.float32); F[:, _COL["covis_score"]] = [0.0, 0.2, 1.0]
    >>> for _ in range(200):
    ...     _ = m.learn(F, 2)
    >>> int(np.argmax(m.scores(F)))
    2
    """

    weights: np.ndarray  # what the steps move
    fixed: np.ndarray  # the settings' weights, as a baseline on the same examples
    average: np.ndarray | None = None  # what is served: an exponential average of ``weights`` (less noise)
    lr: float = 0.1
    accum: np.ndarray = field(default_factory=lambda: np.full(N_FEATURES, 1e-6))
    examples: int = 0
    # per mode: exponentially weighted [reciprocal rank at 20, hit at 20] of the picked item
    card: dict[str, list[float]] = field(default_factory=lambda: {m: [0.0, 0.0] for m in MODES})
    schema: str = SCHEMA_ID

    HALF_LIFE = 2_000  # examples: the scorecard follows the recent stream
    AVERAGE_HALF_LIFE = 500  # examples
    MIN_EXAMPLES = 500  # before this, the learned weights are not served
    TOP: int | None = 20  # rows the softmax runs over: the learned top TOP plus the target (the shown slots)

    def __post_init__(self) -> None:
        if self.average is None:
            self.average = self.weights.copy()

    @classmethod
    def initial(cls, family_weights: Mapping[str, float], lr: float = 1.0) -> FusionModel:
        w = np.zeros(N_FEATURES)
        for f, v in family_weights.items():
            if f"{f}_score" in _COL:
                w[_COL[f"{f}_score"]] = v
        return cls(weights=w.copy(), fixed=w.copy(), lr=lr)

    @classmethod
    def from_settings(cls, s: Settings) -> FusionModel:
        """Started at the fixed weights /recommend uses (``recommend.weight_*``)."""
        return cls.initial(s.recommend.weights, lr=s.learner.fusion_lr)

    def scores(self, F: np.ndarray) -> np.ndarray:
        """The learned scores of pool rows ``F`` (higher first)."""
        assert self.average is not None  # __post_init__
        return F.astype(np.float64) @ self.average

    @property
    def mode(self) -> str:
        """What serving does: the mode with the best MRR among those at least as good as the fixed
        weights on both MRR@20 and HR@20 over the recent examples ("fixed" until MIN_EXAMPLES)."""
        if self.examples < self.MIN_EXAMPLES:
            return "fixed"
        rr0, hit0 = self.card["fixed"]
        fair = [m for m in MODES[1:] if self.card[m][0] >= rr0 and self.card[m][1] >= hit0]
        return max(fair, key=lambda m: self.card[m][0], default="fixed")

    @property
    def earned(self) -> bool:
        return self.mode != "fixed"

    def order(self, F: np.ndarray, mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row order, relevance in (0, 1] along it) of pool rows ``F`` — rows in the fixed fusion's
        order, as serving pools them — under ``mode`` (default :attr:`mode`)."""
        mode = mode or self.mode
        fixed = F.astype(np.float64) @ self.fixed
        if mode == "fixed":
            order = np.argsort(-fixed, kind="stable")
            return order, np.maximum(fixed[order], 0) / max(float(fixed[order[0]]), 1e-12) if len(order) else fixed
        learned = self.scores(F)
        if mode == "learned":
            order = np.argsort(-learned, kind="stable")
            return order, np.exp(learned[order] - learned[order[0]])
        top = np.argsort(-fixed, kind="stable")  # "rerank": the learned order inside the fixed top K
        head, tail = top[:RERANK_K], top[RERANK_K:]
        head = head[np.argsort(-learned[head], kind="stable")]
        rel_head = np.exp(learned[head] - learned[head[0]]) if len(head) else learned[head]
        below = float(rel_head[-1]) if len(rel_head) else 1.0
        rel_tail = below * np.maximum(fixed[tail], 0) / max(float(fixed[top[RERANK_K - 1]]), 1e-12) if len(tail) else []
        return np.concatenate([head, tail]), np.concatenate([rel_head, rel_tail])

    def learn(self, F: np.ndarray, target: int) -> float:
        """One softmax cross-entropy step towards pool row ``target``; returns the loss before it."""
        a = 1.0 - 0.5 ** (1.0 / self.HALF_LIFE)
        for m in MODES:
            rr = _reciprocal_rank(self.order(F, m)[0], target)
            card = self.card[m]
            card[0] += a * (rr - card[0])
            card[1] += a * ((rr > 0) - card[1])
        X = F.astype(np.float64)
        if self.TOP and len(X) > self.TOP:  # the softmax over what competes for the shown slots
            head = np.argpartition(-(X @ self.weights), self.TOP)[: self.TOP]
            rows = np.union1d(head, [target])
            target = int(np.searchsorted(rows, target))
            X = X[rows]
        z = X @ self.weights
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        grad = p @ X - X[target]
        self.accum += grad * grad
        self.weights -= self.lr * grad / np.sqrt(self.accum)
        b = 1.0 - 0.5 ** (1.0 / self.AVERAGE_HALF_LIFE)
        self.average = (1 - b) * self.average + b * self.weights
        self.examples += 1
        return float(-math.log(max(p[target], 1e-12)))

    def state(self) -> dict[str, Any]:
        """JSON-able: in the learner checkpoint and in each model snapshot's meta."""
        return {
            "schema": self.schema,
            "weights": self.weights.tolist(),
            "average": self.average.tolist() if self.average is not None else None,
            "fixed": self.fixed.tolist(),
            "lr": self.lr,
            "accum": self.accum.tolist(),
            "examples": self.examples,
            "card": {m: list(v) for m, v in self.card.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FusionModel | None:
        """None for another feature schema (an older snapshot): serving keeps the fixed weights."""
        if state.get("schema") != SCHEMA_ID:
            return None
        return cls(
            weights=np.asarray(state["weights"], dtype=np.float64),
            fixed=np.asarray(state["fixed"], dtype=np.float64),
            average=np.asarray(state["average"], dtype=np.float64),
            lr=float(state["lr"]),
            accum=np.asarray(state["accum"], dtype=np.float64),
            examples=int(state["examples"]),
            card={m: [float(x) for x in state["card"][m]] for m in MODES},
        )


def _reciprocal_rank(order: np.ndarray, target: int, k: int = 20) -> float:
    """1/rank of row ``target`` in ``order``, 0 beyond ``k``."""
    at = np.flatnonzero(order[:k] == target)
    return 1.0 / (int(at[0]) + 1) if len(at) else 0.0


def _key(prefix: str, request_id: str) -> str:
    return f"{prefix}pool:{request_id}"


def log_pool(r: redis.Redis, prefix: str, request_id: str, items: Sequence[str], F: np.ndarray, ttl_s: float) -> None:
    """Keep a request's pooled rows for the learner's join (written before the impression is sent)."""
    key = _key(prefix, request_id)
    blob = base64.b64encode(np.ascontiguousarray(F, dtype=np.float16).tobytes()).decode()
    pipe = r.pipeline(transaction=False)
    pipe.hset(key, mapping={"schema": SCHEMA_ID, "items": json.dumps(list(items)), "F": blob})
    pipe.expire(key, max(1, int(ttl_s)))
    pipe.execute()


def load_pool(r: redis.Redis, prefix: str, request_id: str) -> Pool | None:
    """``(items, F)`` as logged, or None when gone (TTL), never logged, or of another schema."""
    got = r.hgetall(_key(prefix, request_id))
    if not got:
        return None
    text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in got.items()}
    schema = text.get("schema")
    if (schema.decode() if isinstance(schema, bytes) else schema) != SCHEMA_ID:
        return None
    items = json.loads(text["items"])
    F = np.frombuffer(base64.b64decode(text["F"]), dtype=np.float16).reshape(len(items), N_FEATURES)
    F = F.astype(np.float32)
    return items, F
