"""The click memory in-process, against simulated shoppers: for choosing its prior and weights.

Why: ``bench/online.py`` needs a stack and minutes per configuration; this replays the same
protocol (the same query sets, click models and purchases) on serving's own first stage
(``serving/lexical.py``, MiniLM, ``serving/search/candidates.py``) and serving's own memory formula
(``serving/search/memory.py``), in seconds per setting. The memory is kept as the consumers' script
keeps it: a page's examinations once, on its first click; each click 1, a purchase
``outcome_weight`` more. No head, no decay, no position-bias estimate (eta is the click model's).

    python -m bench.memory_offline                                  # PBM + cascade, informational + navigational
    python -m bench.memory_offline --queries 40 --products 1500     # the CI slice's sets
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.online import PURCHASE_SHARE, ClickModel, K, load_online_data
from bench.quality import ndcg_at
from serving.lexical import LexicalIndex
from serving.search import candidates as fusion
from serving.search.memory import adjustment
from streamrec.encoder import Encoder
from streamrec.settings import Settings
from streamrec.vector_index.live import ItemMeta

Memory = dict[str, tuple[float, float]]  # item -> (clicks, examinations)


@dataclass(frozen=True)
class Pool:
    """One query's fused candidates, best first stage score first, and its labels."""

    labels: dict[str, float]
    ids: list[str]
    fused: np.ndarray


def pools(queries: dict[str, dict[str, float]], products: dict[str, str], s: Settings) -> list[Pool]:
    lexical = LexicalIndex()
    lexical.apply({pid: ItemMeta(title) for pid, title in products.items()}, reset=True)
    lexical.refresh()
    encoder = Encoder.from_settings(s)
    ids = list(products)
    row = {pid: j for j, pid in enumerate(ids)}
    titles = encoder.encode([products[pid] for pid in ids])
    out = []
    for (q, lab), qv in zip(queries.items(), encoder.encode(list(queries)), strict=True):
        cos = titles @ qv
        top = np.argsort(-cos)[: s.serving.candidates]
        dense = [(ids[j], float(cos[j])) for j in top]
        cands = fusion.gather(
            lexical.search(q, s.serving.candidates), dense, lambda i, qv=qv: float(titles[row[i]] @ qv)
        )
        fused = fusion.weighted(cands, s.search.lexical_weight, s.search.dense_weight)
        out.append(Pool(lab, list(cands.ids), np.asarray(fused, dtype=np.float64)))
    return out


def ranked(p: Pool, memory: Memory, weight: float, prior: float) -> list[str]:
    scores = p.fused.copy()
    for j, delta in ((p.ids.index(i), d) for i, d in adjustment(p.ids, memory, weight, prior).items()):
        scores[j] += delta
    return [p.ids[j] for j in np.argsort(-scores, kind="stable")]


def play(
    pools_: list[Pool], model: ClickModel, rounds: int, weight: float, prior: float, outcome_weight: float, seed: int
) -> tuple[float, float, list[float]]:
    """(nDCG@10 before, after, served per round) of the clicked queries."""
    rng = random.Random(seed)
    memories: list[Memory] = [{} for _ in pools_]
    before = float(np.mean([ndcg_at(ranked(p, {}, weight, prior), p.labels) for p in pools_]))
    served = []
    for _ in range(rounds):
        scores = []
        for p, memory in zip(pools_, memories, strict=True):
            page = ranked(p, memory, weight, prior)[:K]
            scores.append(ndcg_at(page, p.labels))
            clicked = model.clicks([p.labels.get(i, 1.0) - 1.0 for i in page], rng)
            if not clicked:
                continue
            for pos, item in enumerate(page):
                c, e = memory.get(item, (0.0, 0.0))
                memory[item] = (c, e + (1.0 / (pos + 1)) ** model.eta)
            for pos in clicked:
                item = page[pos]
                bought = p.labels.get(item, 1.0) - 1.0 >= 1.5 and rng.random() < PURCHASE_SHARE
                c, e = memory[item]
                memory[item] = (c + 1.0 + (outcome_weight if bought else 0.0), e)
        served.append(float(np.mean(scores)))
    learned = zip(pools_, memories, strict=True)
    after = float(np.mean([ndcg_at(ranked(p, m, weight, prior), p.labels) for p, m in learned]))
    return before, after, served


def bounds(pools_: list[Pool], model: ClickModel, rounds: int, weight: float, prior: float, outcome: float) -> str:
    """What a target for the clicked queries can ask of this mechanism under ``model`` (position-based):
    nDCG@10 of the candidates ordered by their labels (knowing every candidate's grade), and of the
    memory after ``rounds`` rounds fed each shown product's *expected* clicks instead of sampled
    ones (noise-free evidence with the same exposure)."""
    assert model.kind == "pbm"
    before = float(np.mean([ndcg_at(ranked(p, {}, weight, prior), p.labels) for p in pools_]))
    by_labels = float(
        np.mean([ndcg_at(sorted(p.ids, key=lambda i, p=p: -p.labels.get(i, 1.0)), p.labels) for p in pools_])
    )
    memories: list[Memory] = [{} for _ in pools_]
    for _ in range(rounds):
        for p, memory in zip(pools_, memories, strict=True):
            for pos, item in enumerate(ranked(p, memory, weight, prior)[:K]):
                grade = p.labels.get(item, 1.0) - 1.0
                theta = (1.0 / (pos + 1)) ** model.eta
                clicks = theta * model.probabilities(grade)[0]
                bought = clicks * PURCHASE_SHARE * outcome if grade >= 1.5 else 0.0
                c, e = memory.get(item, (0.0, 0.0))
                memory[item] = (c + clicks + bought, e + theta)
    expected = float(
        np.mean([ndcg_at(ranked(p, m, weight, prior), p.labels) for p, m in zip(pools_, memories, strict=True)])
    )
    return (
        f"before {before:.3f}; candidates ordered by their labels {by_labels:.3f} ({by_labels - before:+.3f}); "
        f"the memory fed expected clicks for {rounds} rounds {expected:.3f} ({expected - before:+.3f})"
    )


def grid() -> Iterator[tuple[float, float, float]]:
    """(prior, weight, outcome weight): weight / prior near the default's, and around it."""
    for prior, weight in ((2.0, 1.0), (5.0, 1.0), (10.0, 2.0), (10.0, 3.0), (20.0, 4.0)):
        yield prior, weight, 1.0
    for outcome in (0.0, 3.0):
        yield 10.0, 2.0, outcome


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=150, help="clicked queries (the first of the three sets)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    s = Settings()
    data = load_online_data(s.require_data_dir(), args.queries, args.products)
    clicked = pools(data.clicked, data.products, s)
    print(f"{len(clicked)} clicked queries, {len(data.products):,} products; {args.rounds} rounds, {args.seeds} seeds")
    print(f"{'click model':28s} {'prior':>5s} {'weight':>6s} {'buy':>4s} {'lift':>7s} {'worst':>7s}  served per round")
    for kind, noise in (("pbm", "informational"), ("pbm", "navigational"), ("cascade", "informational")):
        model = ClickModel(kind, noise)
        if kind == "pbm":
            for prior, weight in ((10.0, 2.0), (5.0, 1.0), (1.0, 4.0)):
                line = bounds(clicked, model, args.rounds, weight, prior, 1.0)
                print(f"{kind + ', ' + noise:28s} {prior:5g} {weight:6g}   bounds: {line}", flush=True)
        for prior, weight, outcome in grid():
            runs = [play(clicked, model, args.rounds, weight, prior, outcome, seed) for seed in range(args.seeds)]
            lifts = [after - before for before, after, _ in runs]
            curve = " ".join(f"{v:.3f}" for v in np.mean([r[2] for r in runs], axis=0))
            print(
                f"{kind + ', ' + noise:28s} {prior:5g} {weight:6g} {outcome:4g} {np.mean(lifts):+7.4f} "
                f"{min(lifts):+7.4f}  {curve}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
