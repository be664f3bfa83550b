"""The encoder's query side learns from the shop's clicks, and is served only where it is better.

Why: the pretrained encoder was never shown this shop's words ("romex" is a cable, "1/2 in" a
size); the click memory fixes one query at a time, only what fine-tuning the query side learns can
reach queries nobody clicked yet. Why the query side only: the items keep the vectors the index
holds, so a new version needs no re-embedding of the catalogue, and switching to it or back is one
poll of serving (``serving/query_versions.py``). Only the top transformer layers train: cheap
enough for a background thread of the learner.

Training pairs are a search's clicked product against the products shown *above* it and not
clicked (skipped on the way down: the hard negatives a shopper rejected) and the other pairs'
products in the batch. Each click counts once by default (``max_weight``): weighting a click by
1 / theta of its position made a wrong click deep in the page count up to ten times and trained
worse. The tuned vector is held near the served one (``anchor``), for the clicked queries and
for searches that got no click, so the long tail is not dragged along.

A candidate is published (``streamrec/query_versions.py``) only when, on clicks of queries it never
trained on (a fixed share of queries by key), it orders each click's own page better than the
served version: the clicked product's DCG gain under each order, weighted by 1 / theta of where it
was shown (unbiased under a position-based click model), by ``z`` standard errors over queries.
Judged on the same shown products, the served version gets no credit for having chosen them.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from learner import metrics as M
from learner.joiner import PendingImpression
from learner.position_bias import ips_weight
from streamrec.analysis import query_key
from streamrec.query_encoder import QUERY_MAX_TOKENS
from streamrec.query_versions import QueryVersions
from streamrec.settings import QueryTuningSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClickPair:
    """One click of a search: its query, the clicked product, the products skipped above it."""

    query: str
    positive: str
    negatives: tuple[str, ...]
    weight: float  # 1 / theta(position of the click), capped
    shown: tuple[str, ...] = ()  # the whole page, kept for held-out clicks (what the gate reorders)


def is_holdout(query: str, share: float) -> bool:
    """Queries kept out of training to judge a candidate on: a stable share, by query key, so two
    spellings of one query never land on both sides."""
    return zlib.crc32(query_key(query).encode()) % 1000 < share * 1000


_DEFAULTS = QueryTuningSettings()  # the defaults' one home is the settings group


@dataclass(frozen=True)
class TuningConfig:
    layers: int = _DEFAULTS.layers  # top transformer layers that train (the rest, and the embeddings, stay frozen)
    steps: int = _DEFAULTS.steps
    batch: int = _DEFAULTS.batch
    lr: float = _DEFAULTS.lr
    anchor: float = _DEFAULTS.anchor  # weight of ||tuned − before||² on the batch's and unclicked queries
    max_weight: float = _DEFAULTS.max_weight  # cap of a click's 1/theta
    temperature: float = 0.05
    seed: int = 0

    @classmethod
    def from_settings(cls, s: QueryTuningSettings) -> TuningConfig:
        return cls(s.layers, s.steps, s.batch, s.lr, s.anchor, s.max_weight)


class QueryTower:
    """An encoder's query side (a model directory: pretrained or a published version) with its top
    ``layers`` trainable."""

    def __init__(self, model_dir: Path, layers: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.trainable = [n for n, _ in self.model.named_parameters() if _is_top_layer(n, self._depth(), layers)]
        for n, p in self.model.named_parameters():
            if n in self.trainable:
                p.requires_grad_(True)
        self._torch = torch

    def _depth(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def encode(self, texts: Sequence[str], grad: bool = False):
        """(n, dim) unit rows as a tensor; mean pooling as ``streamrec.encoder``."""
        torch = self._torch
        batch = self.tokenizer(
            list(texts), truncation=True, max_length=QUERY_MAX_TOKENS, padding=True, return_tensors="pt"
        )
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        with ctx:
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def encode_numpy(self, texts: Sequence[str], batch: int = 256) -> np.ndarray:
        self.model.eval()
        parts = [self.encode(texts[i : i + batch]).numpy() for i in range(0, len(texts), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.model.config.hidden_size), np.float32)

    def state(self) -> dict:
        sd = self.model.state_dict()
        return {n: sd[n].clone() for n in self.trainable}


def _is_top_layer(name: str, depth: int, layers: int) -> bool:
    """``encoder.layer.{i}.…`` with i among the top ``layers``."""
    parts = name.split(".")
    if "layer" not in parts:
        return False
    i = parts.index("layer")
    return i + 1 < len(parts) and parts[i + 1].isdigit() and int(parts[i + 1]) >= depth - layers


def fine_tune(
    tower: QueryTower,
    pairs: Sequence[ClickPair],
    vector_of: Callable[[str], np.ndarray | None],
    anchor_queries: Sequence[str],
    cfg: TuningConfig,
    progress: Callable[[int, float], None] | None = None,
) -> int:
    """Train ``tower`` in place on ``pairs``; returns the steps taken (0 when no pair has vectors).
    The anchor holds query vectors near the tower's own before this training (the served version)."""
    import torch

    usable = [p for p in pairs if vector_of(p.positive) is not None]
    if not usable:
        return 0
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    base_of = _vectors_before(tower, {p.query for p in usable} | set(anchor_queries))
    params = [p for n, p in tower.model.named_parameters() if n in tower.trainable]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    tower.model.train()
    anchors = list(anchor_queries)
    for step in range(cfg.steps):
        batch = [usable[rng.randrange(len(usable))] for _ in range(min(cfg.batch, len(usable)))]
        queries = [p.query for p in batch]
        items: list[str] = []
        vectors: list[np.ndarray] = []
        for i in [p.positive for p in batch] + [n for p in batch for n in p.negatives]:
            if (v := vector_of(i)) is not None:
                items.append(i)
                vectors.append(v)
        if items[: len(batch)] != [p.positive for p in batch]:  # a product deleted meanwhile: skip the step
            continue
        cand = torch.from_numpy(np.stack(vectors).astype(np.float32))
        q = tower.encode(queries, grad=True)
        logits = q @ cand.T / cfg.temperature
        # a pair's own product is its target; the others' positives and every skipped product are
        # negatives, except where the same product is this pair's positive too
        same = torch.tensor(
            [[items[j] == p.positive and j != i for j in range(len(items))] for i, p in enumerate(batch)]
        )
        logits = logits.masked_fill(same, float("-inf"))
        w = torch.tensor([min(p.weight, cfg.max_weight) for p in batch], dtype=torch.float32)
        nll = torch.nn.functional.cross_entropy(logits, torch.arange(len(batch)), reduction="none")
        loss = (nll * w).sum() / w.sum()
        if cfg.anchor > 0:
            drift = ((q - torch.from_numpy(np.stack([base_of[t] for t in queries]))) ** 2).sum(1).mean()
            if anchors:
                sample = [anchors[rng.randrange(len(anchors))] for _ in range(len(batch))]
                a = tower.encode(sample, grad=True)
                drift = drift + ((a - torch.from_numpy(np.stack([base_of[t] for t in sample]))) ** 2).sum(1).mean()
            loss = loss + cfg.anchor * drift
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    tower.model.eval()
    return cfg.steps


def _vectors_before(tower: QueryTower, queries: set[str]) -> dict[str, np.ndarray]:
    texts = sorted(queries)
    return dict(zip(texts, tower.encode_numpy(texts), strict=True))


@dataclass(frozen=True)
class Verdict:
    pairs: int  # held-out clicks judged
    queries: int  # the distinct queries they came from: the unit of the standard error
    current: float  # mean over queries of the IPS-weighted DCG gain of the clicked product in its page
    candidate: float
    gap: float
    stderr: float
    better: bool


def judge_pages(
    current: np.ndarray,
    candidate: np.ndarray,
    pages: Sequence[np.ndarray],
    clicked: Sequence[int],
    weights: np.ndarray,
    queries: Sequence[str],
    z: float,
    min_pairs: int,
) -> Verdict:
    """The counterfactual version: each held-out click's own page (``pages[i]``, (k, dim) vectors of
    what was shown, ``clicked[i]`` the clicked row) reordered by each encoder's cosine; the gain is
    the DCG of the clicked product in that order, weighted by 1 / theta of where it was shown — the
    unbiased estimate of a reranking's DCG under a position-based click model (Joachims et al.
    2017). Both versions are judged on the same shown products, so the served version's advantage
    of having chosen them does not count."""
    g_cur = np.array([_page_gain(page @ q, k) for page, q, k in zip(pages, current, clicked, strict=True)])
    g_cand = np.array([_page_gain(page @ q, k) for page, q, k in zip(pages, candidate, clicked, strict=True)])
    return _verdict(g_cur, g_cand, weights, queries, z, min_pairs)


def _page_gain(scores: np.ndarray, k: int) -> float:
    return 1.0 / math.log2(2.0 + float((scores > scores[k]).sum()))


def _verdict(
    g_cur: np.ndarray, g_cand: np.ndarray, weights: np.ndarray, queries: Sequence[str], z: float, min_pairs: int
) -> Verdict:
    w = weights / weights.mean() if len(weights) else weights
    keys = [query_key(q) for q in queries]
    cur, cand = _per_query(g_cur * w, keys), _per_query(g_cand * w, keys)
    diff = cand - cur
    n = len(diff)
    stderr = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    gap = float(diff.mean()) if n else 0.0
    return Verdict(
        pairs=len(g_cur),
        queries=n,
        current=float(cur.mean()) if n else 0.0,
        candidate=float(cand.mean()) if n else 0.0,
        gap=gap,
        stderr=stderr,
        better=len(g_cur) >= min_pairs and n > 1 and gap > z * stderr,
    )


def _per_query(values: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    groups: dict[str, list[float]] = {}
    for v, k in zip(values, keys, strict=True):
        groups.setdefault(k, []).append(float(v))
    return np.array([np.mean(g) for g in groups.values()])


class _Stopped(Exception):
    """The learner is shutting down: a training in progress is abandoned (it is not published)."""


class QueryTuner:
    """Collects search clicks (``observe``, the joiner's close observer), trains a candidate in a
    background thread once enough new ones arrived (``maybe_start``), publishes it when it wins."""

    def __init__(
        self,
        s: QueryTuningSettings,
        store: QueryVersions,
        base_model_dir: Path,
        vector_of: Callable[[str], np.ndarray | None],
        eta: Callable[[], float],
    ):
        self.s, self.store, self.base_model_dir = s, store, base_model_dir
        self.vector_of, self.eta = vector_of, eta
        self._lock = threading.Lock()
        self.train: deque[ClickPair] = deque(maxlen=s.pairs_kept)
        self.holdout: deque[ClickPair] = deque(maxlen=s.pairs_kept)
        self.anchors: deque[str] = deque(maxlen=5000)  # searched queries, clicked or not
        self.new_pairs = 0  # training clicks since the last training started
        self.last: dict = {}  # the last training's verdict, for status
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def observe(self, p: PendingImpression) -> None:
        query = p.event.query
        if not query:
            return
        with self._lock:
            self.anchors.append(query)
            if not p.clicked:
                return
            holdout = is_holdout(query, self.s.holdout_share)
            for k, item in enumerate(p.item_ids):
                if item not in p.clicked:
                    continue
                skipped = tuple(i for i in p.item_ids[:k] if i not in p.clicked)
                pair = ClickPair(query, item, skipped, ips_weight(p.positions.get(item, k), self.eta()))
                if holdout:
                    self.holdout.append(replace(pair, shown=tuple(p.item_ids)))
                else:
                    self.train.append(pair)
                    self.new_pairs += 1

    def maybe_start(self) -> bool:
        """Start a training in the background when enough new clicks arrived and none is running."""
        if self._thread is not None and self._thread.is_alive():
            return False
        with self._lock:
            if self.new_pairs < self.s.min_pairs or len(self.holdout) < self.s.min_holdout:
                return False
            self.new_pairs = 0
            train, holdout, anchors = list(self.train), list(self.holdout), list(self.anchors)
        self.store.write_status({"training": True, "train_clicks": len(train), "holdout_clicks": len(holdout)})
        self._thread = threading.Thread(
            target=self._train_logged, args=(train, holdout, anchors), name="query-tuning", daemon=True
        )
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Until the running training (if any) ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Abandon a running training (nothing half-trained is published) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _train_logged(self, train: list[ClickPair], holdout: list[ClickPair], anchors: list[str]) -> None:
        outcome = "abandoned"
        try:
            outcome = "published" if self.train_once(train, holdout, anchors) else "rejected"
        except _Stopped:
            log.info("query-encoder training abandoned at shutdown")
        except Exception:  # a failed training leaves the served version in place
            outcome = "failed"
            M.QUERY_TUNING.labels("failed").inc()
            log.exception("query-encoder training failed")
        finally:
            self.store.write_status({"training": False, "outcome": outcome, "last": self.last})

    def train_once(self, train: list[ClickPair], holdout: list[ClickPair], anchors: list[str]) -> int:
        """Train from the served version, judge, publish if better; the version published or 0."""
        served = self.store.current()
        start_dir = self.store.path(served) or self.base_model_dir
        candidate = QueryTower(start_dir, self.s.layers)
        cfg = TuningConfig.from_settings(self.s)

        def progress(_step: int, _loss: float) -> None:
            if self._stop.is_set():
                raise _Stopped

        steps = fine_tune(candidate, train, self.vector_of, anchors, cfg, progress)
        if steps == 0:
            return 0
        pages, clicked, judged = [], [], []
        for p in holdout:  # each click's page as it can be scored now (products deleted since drop out)
            shown = [(i, v) for i in p.shown if (v := self.vector_of(i)) is not None]
            ids = [i for i, _ in shown]
            if p.positive in ids and len(ids) > 1:
                pages.append(np.stack([v for _, v in shown]))
                clicked.append(ids.index(p.positive))
                judged.append(p)
        queries = [p.query for p in judged]
        current = QueryTower(start_dir, self.s.layers)
        verdict = judge_pages(
            current.encode_numpy(queries),
            candidate.encode_numpy(queries),
            pages,
            clicked,
            np.array([p.weight for p in judged]),
            queries,
            self.s.z,
            self.s.min_holdout,
        )
        self.last = {**asdict(verdict), "served": served, "trained_on": len(train)}
        log.info("query-encoder candidate (from version %d, %d clicks): %s", served, len(train), verdict)
        if not verdict.better:
            M.QUERY_TUNING.labels("rejected").inc()
            return 0

        def write(directory: Path) -> None:
            candidate.model.save_pretrained(directory)
            candidate.tokenizer.save_pretrained(directory)

        version = self.store.publish(write, {"parent": served, **self.last}, self.s.keep_versions)
        M.QUERY_TUNING.labels("published").inc()
        M.QUERY_ENCODER_VERSION.set(version)
        log.info("published query-encoder version %d", version)
        return version

    def summary(self) -> dict:
        """What ops see with each model version: clicks gathered, the version served, the last verdict."""
        with self._lock:
            counts = {"train_clicks": len(self.train), "holdout_clicks": len(self.holdout)}
        return {**counts, "served": self.store.current(), "last": dict(self.last)}

    def state(self) -> dict:
        with self._lock:
            return {
                "train": [asdict(p) for p in self.train],
                "holdout": [asdict(p) for p in self.holdout],
                "anchors": list(self.anchors),
                "new_pairs": self.new_pairs,
            }

    def load_state(self, st: dict) -> None:
        with self._lock:
            self.train.extend(_pair(d) for d in st["train"])
            self.holdout.extend(_pair(d) for d in st["holdout"])
            self.anchors.extend(st["anchors"])
            self.new_pairs = int(st["new_pairs"])


def _pair(d: dict) -> ClickPair:
    return ClickPair(d["query"], d["positive"], tuple(d["negatives"]), float(d["weight"]), tuple(d.get("shown", ())))
