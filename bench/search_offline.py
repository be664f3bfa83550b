"""Offline search quality on Home Depot with serving's own parts, in-process (no broker, no API).

Why: choosing the fusion weights needs hundreds of full evaluations; through the API that is
hours, here seconds per setting. It uses exactly serving's analyzer, tantivy lexical index, query
speller and fusion code, and MiniLM vectors for the titles and queries.

Queries of ``labels_dev.csv`` are split by crc32(query) into a *feedback* half (even, used to
choose weights) and an *evaluation* half (odd, only reported). nDCG@10 over the whole catalogue,
gain = relevance − 1, unlabelled products 0.

    python -m bench.search_offline --title-emb title_emb.npy   # titles embedded beforehand (rows = products.csv)
    python -m bench.search_offline                             # embeds the 54,667 titles (slow on CPU)
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from pathlib import Path

import numpy as np

from serving.lexical import LexicalIndex
from serving.search import candidates as fusion
from streamrec.datasets import homedepot
from streamrec.encoder import Encoder
from streamrec.settings import Settings
from streamrec.vector_index.live import ItemMeta

N = 100  # candidates per list, as serving.candidates


def ndcg10(ranked: list[str], labels: dict[str, float]) -> float:
    gains = [labels.get(i, 1.0) - 1.0 for i in ranked[:10]]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
    ideal = sorted((v - 1.0 for v in labels.values()), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def is_feedback(query: str) -> bool:
    return zlib.crc32(query.encode()) % 2 == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--title-emb", type=Path, help=".npy of unit title vectors in products.csv row order")
    ap.add_argument("--query-emb", type=Path, help="cache of the query vectors (.npy): read if present, else written")
    ap.add_argument("--embedded-only", action="store_true", help="keep only products with a vector in --title-emb")
    ap.add_argument("--queries", type=int, default=0, help="use only the first N queries (0 = all)")
    args = ap.parse_args()
    s = Settings()
    ops = list(homedepot.catalog(s.data_dir))
    labels = homedepot.relevance_labels(s.data_dir)
    titles = np.load(args.title_emb) if args.title_emb else None
    if titles is not None and args.embedded_only:  # a partial embedding run: the catalogue it covers
        keep = np.flatnonzero(np.linalg.norm(titles, axis=1) > 0)
        ops, titles = [ops[j] for j in keep], titles[keep]
        kept = {op.item_id for op in ops}
        labels = {q: {i: r for i, r in lab.items() if i in kept} for q, lab in labels.items()}
        labels = {q: lab for q, lab in labels.items() if lab}
        print(f"embedded-only: {len(ops)} products, {len(labels)} queries with a label among them")
    queries = sorted(labels)[: args.queries or None]
    ids = [op.item_id for op in ops]

    t = time.perf_counter()
    lexical = LexicalIndex()
    lexical.apply({op.item_id: ItemMeta(op.title) for op in ops}, reset=True)
    lexical.refresh()
    print(f"lexical index: {len(lexical)} items in {time.perf_counter() - t:.1f}s")

    encoder = Encoder.from_settings(s)
    if titles is None:
        titles = encoder.encode([op.title for op in ops])
    t = time.perf_counter()
    if args.query_emb and args.query_emb.exists():  # rows = every labelled query, sorted
        row_of = {q: j for j, q in enumerate(sorted(homedepot.relevance_labels(s.data_dir)))}
        qvecs = np.load(args.query_emb)[[row_of[q] for q in queries]]
    else:
        qvecs = encoder.encode(queries)
    print(f"{len(queries)} query vectors in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    row = {item_id: j for j, item_id in enumerate(ids)}
    pools: list[fusion.SearchCandidates] = []
    sizes: list[tuple[int, int]] = []
    for start in range(0, len(queries), 256):  # dense top-N for a block of queries in one product
        block = qvecs[start : start + 256]
        cos = block @ titles.T
        tops = np.argpartition(-cos, N, axis=1)[:, :N]
        for b, qv in enumerate(block):
            q = queries[start + b]
            top = tops[b][np.argsort(-cos[b, tops[b]])]
            dense = [(ids[j], float(cos[b, j])) for j in top]
            lex = lexical.search(q, N)
            pools.append(fusion.gather(lex, dense, lambda i, qv=qv: float(titles[row[i]] @ qv)))
            sizes.append((len(lex), len(dense)))
    ms = (time.perf_counter() - t) / len(queries) * 1000
    print(f"candidates: {ms:.1f} ms/query (lexical + brute-force dense)")

    halves = {"FB": [k for k, q in enumerate(queries) if is_feedback(q)]}
    halves["EV"] = [k for k in range(len(queries)) if k not in set(halves["FB"])]

    def score(variant: str, weights: tuple[float, float], half: str) -> float:
        out = []
        for k in halves[half]:
            c = pools[k]
            sc = fusion.order_scores(variant, c, *sizes[k], weights)
            order = np.argsort(-sc, kind="stable")[:10]
            out.append(ndcg10([c.ids[j] for j in order], labels[queries[k]]))
        return float(np.mean(out))

    default = (s.search.lexical_weight, s.search.dense_weight)
    print(f"{'variant':<28} {'FB nDCG@10':>10} {'EV nDCG@10':>10}")
    for variant in ("bm25", "dense", "rrf"):
        print(f"{variant:<28} {score(variant, default, 'FB'):>10.4f} {score(variant, default, 'EV'):>10.4f}")
    grid = [(1.0, w) for w in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0)]
    best = max(grid, key=lambda w: score("fused", w, "FB"))
    for w in grid:
        mark = " <- best on FB" if w == best else ""
        label = f"fused {w[0]:.1f}·bm25 + {w[1]:.1f}·cos"
        print(f"{label:<28} {score('fused', w, 'FB'):>10.4f} {score('fused', w, 'EV'):>10.4f}{mark}")


if __name__ == "__main__":
    main()
