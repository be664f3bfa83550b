"""Does fine-tuning the query side on simulated clicks help queries it never saw? In-process.

Why: ``learner/query_tuning.py`` is gated online, but whether it can ever earn its place, and with
which settings, needs many trainings; here one takes a minute. Home Depot queries are split by key
into a *clicked* set (simulated shoppers click serving's fused top 10 through a click model, as
``bench/online.py``) and an *unseen* set (never clicked). Printed: dense-only and fused nDCG@10 of
both sets with the pretrained and the tuned query side (items keep their pretrained vectors), and
the learner's own gate verdict on the unseen queries' clicks (one shopper each).

    python -m bench.encoder_offline                       # 400 queries a set, 10,000 products
    python -m bench.encoder_offline --anchor 0 --steps 400
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from bench.online import ClickModel, K, query_group
from bench.quality import load_search_data, ndcg_at
from learner.query_tuning import ClickPair, QueryTower, TuningConfig, fine_tune, judge_pages
from serving.lexical import LexicalIndex
from serving.search import candidates as fusion
from streamrec.encoder import Encoder, bundled_model_dir
from streamrec.settings import Settings
from streamrec.vector_index.live import ItemMeta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=400, help="queries in each set")
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=8, help="shoppers per clicked query")
    ap.add_argument("--click-model", default="pbm", choices=("pbm", "cascade"))
    ap.add_argument("--noise", default="informational", choices=("perfect", "navigational", "informational"))
    ap.add_argument("--layers", type=int, default=TuningConfig.layers)
    ap.add_argument("--steps", type=int, default=TuningConfig.steps)
    ap.add_argument("--lr", type=float, default=TuningConfig.lr)
    ap.add_argument("--anchor", type=float, default=TuningConfig.anchor)
    ap.add_argument("--max-weight", type=float, default=TuningConfig.max_weight, help="cap of a click's 1/theta")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s = Settings()
    full = load_search_data(s.data_dir)
    labels = {**full.feedback, **full.evaluation}
    useful = {q: lab for q, lab in sorted(labels.items()) if max(lab.values()) >= 2.0}
    clicked: dict[str, dict[str, float]] = {}
    unseen: dict[str, dict[str, float]] = {}
    for q, lab in useful.items():  # groups 0 and 1 of bench/online, larger
        target = clicked if query_group(q) == 0 else unseen if query_group(q) == 1 else None
        if target is not None and len(target) < args.queries:
            target[q] = lab
    products: dict[str, str] = {}
    for lab in (*clicked.values(), *unseen.values()):
        for pid in lab:
            products[pid] = full.products[pid]
    for pid, title in full.products.items():
        if len(products) >= args.products:
            break
        products.setdefault(pid, title)
    ids = list(products)
    row = {pid: j for j, pid in enumerate(ids)}
    t0 = time.perf_counter()
    encoder = Encoder.from_settings(s)
    items = encoder.encode([products[p] for p in ids])
    took = time.perf_counter() - t0
    print(f"{len(ids)} products embedded in {took:.0f} s; {len(clicked)} clicked, {len(unseen)} unseen queries")
    lexical = LexicalIndex()
    lexical.apply({pid: ItemMeta(title) for pid, title in products.items()}, reset=True)
    lexical.refresh()
    lex = {q: lexical.search(q, s.serving.candidates) for q in (*clicked, *unseen)}

    def ranked(q: str, qv: np.ndarray) -> tuple[list[str], list[str]]:
        """(dense order, fused order) of serving's first stage for one query vector."""
        cos = items @ qv
        dense = [(ids[j], float(cos[j])) for j in np.argsort(-cos)[: s.serving.candidates]]
        cands = fusion.gather(lex[q], dense, lambda i: float(items[row[i]] @ qv))
        fused = fusion.weighted(cands, s.search.lexical_weight, s.search.dense_weight)
        return [i for i, _ in dense], [cands.ids[j] for j in np.argsort(-np.asarray(fused), kind="stable")]

    def rankings(qvecs: dict[str, np.ndarray], queries: dict[str, dict[str, float]]) -> tuple[float, float]:
        """(dense nDCG@10, fused nDCG@10) over ``queries``."""
        orders = {q: ranked(q, qvecs[q]) for q in queries}
        dense = [ndcg_at(orders[q][0], lab) for q, lab in queries.items()]
        fused = [ndcg_at(orders[q][1], lab) for q, lab in queries.items()]
        return float(np.mean(dense)), float(np.mean(fused))

    def pages(qvecs: dict[str, np.ndarray], queries: dict[str, dict[str, float]]) -> dict[str, list[str]]:
        return {q: ranked(q, qvecs[q])[1][:K] for q in queries}

    base_q = dict(zip(list(clicked) + list(unseen), encoder.encode(list(clicked) + list(unseen)), strict=True))
    model = ClickModel(args.click_model, args.noise)
    rng = random.Random(args.seed)
    served = pages(base_q, clicked)
    pairs: list[ClickPair] = []
    for _ in range(args.rounds):
        for q, page in served.items():
            lab = clicked[q]
            for pos in model.clicks([lab.get(i, 1.0) - 1.0 for i in page], rng):
                pairs.append(ClickPair(q, page[pos], tuple(page[:pos]), float(pos + 1) ** model.eta))
    # the unseen queries' own clicks (a second shopper population) judge the candidate, as the learner does
    unseen_pairs = []
    for q, page in pages(base_q, unseen).items():
        lab = unseen[q]
        for pos in model.clicks([lab.get(i, 1.0) - 1.0 for i in page], rng):
            unseen_pairs.append(ClickPair(q, page[pos], (), min(20.0, float(pos + 1) ** model.eta), tuple(page)))
    print(f"{len(pairs)} click pairs on the clicked queries; {len(unseen_pairs)} judging clicks on unseen ones")
    before = {"clicked": rankings(base_q, clicked), "unseen": rankings(base_q, unseen)}
    tower = QueryTower(bundled_model_dir(), args.layers)
    cfg = TuningConfig(
        layers=args.layers, steps=args.steps, lr=args.lr, anchor=args.anchor, max_weight=args.max_weight, seed=args.seed
    )
    t0 = time.perf_counter()
    fine_tune(tower, pairs, lambda i: items[row[i]] if i in row else None, list(unseen)[: len(unseen) // 2], cfg)
    print(f"fine-tuned {args.steps} steps ({args.layers} layers) in {time.perf_counter() - t0:.0f} s")
    texts = list(clicked) + list(unseen)
    tuned_q = dict(zip(texts, tower.encode_numpy(texts), strict=True))
    after = {"clicked": rankings(tuned_q, clicked), "unseen": rankings(tuned_q, unseen)}
    for name in ("clicked", "unseen"):
        (d0, f0), (d1, f1) = before[name], after[name]
        print(f"{name:8s} dense {d0:.4f} → {d1:.4f} ({d1 - d0:+.4f})   fused {f0:.4f} → {f1:.4f} ({f1 - f0:+.4f})")
    vp = judge_pages(
        np.stack([base_q[p.query] for p in unseen_pairs]),
        np.stack([tuned_q[p.query] for p in unseen_pairs]),
        [items[[row[i] for i in p.shown]] for p in unseen_pairs],
        [p.shown.index(p.positive) for p in unseen_pairs],
        np.array([p.weight for p in unseen_pairs]),
        [p.query for p in unseen_pairs],
        z=2.0,
        min_pairs=50,
    )
    print(f"the learner's gate on the unseen queries' clicks: {vp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
