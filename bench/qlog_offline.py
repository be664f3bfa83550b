"""Offline: does search learn from its own clicks? Query-log document expansion on Home Depot.

Why: a run through the API takes 15-20 minutes; the choice of *how* clicks should change search
(the clicked product's lexical document gains the query's terms, in its own field with a boost,
or a query–product overlap score added to the fused order) needs many evaluations. This replays
the feedback exactly as ``bench/quality.py --search`` does, in-process, with serving's analyzer,
tantivy index (its ``qlog`` field) and fusion code:

* the queries and the catalogue slice are ``bench.quality.load_search_data``'s (crc32 of the
  lower-cased query: even = feedback half, odd = evaluation half; ``--queries`` per half);
* for each feedback query, the top 10 of the current fused order is "shown"; products with
  relevance >= 2.5 get a click, 3.0 also a purchase; the query's analysed terms are added to
  each clicked product's expansion (click weight + purchase weight, summed over queries, the
  top ``--cap`` terms per product kept);
* the evaluation half is scored before and after (nDCG@10, gain = relevance - 1).

The boost is tuned on a split of the feedback half (expansion from one part, scored on the
other, by a salted crc32), then the evaluation half is reported once with the chosen setting.

    python -m bench.qlog_offline --title-emb /tmp/hd/title_emb.npy --query-emb /tmp/hd/query_emb.npy --queries 500
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.quality import load_search_data, ndcg_at
from serving.lexical import LexicalIndex
from serving.search import candidates as fusion
from streamrec.datasets import homedepot
from streamrec.settings import Settings
from streamrec.vector_index.live import ItemMeta

N = 100  # candidates per list, as serving.candidates
Expansion = dict[str, dict[str, float]]  # item -> term -> weight


class Searcher:
    """Fused lexical + dense candidates for a query, as serving orders them (``fused`` variant)."""

    def __init__(self, products: dict[str, str], titles: np.ndarray, row: dict[str, int], qvec, s: Settings):
        self.lexical = LexicalIndex()
        self.lexical.apply({pid: ItemMeta(t) for pid, t in products.items()}, reset=True)
        self.lexical.refresh()
        self.ids = list(products)
        self.mat = titles[[row[i] for i in self.ids]]
        self.qvec = qvec
        self.weights = (s.search.lexical_weight, s.search.dense_weight)
        self._dense: dict[str, list[tuple[str, float]]] = {}
        self._pos = {i: j for j, i in enumerate(self.ids)}

    def dense(self, q: str) -> list[tuple[str, float]]:
        if q not in self._dense:
            cos = self.mat @ self.qvec(q)
            top = np.argpartition(-cos, N)[:N]
            top = top[np.argsort(-cos[top])]
            self._dense[q] = [(self.ids[j], float(cos[j])) for j in top]
        return self._dense[q]

    def candidates(self, q: str, boost: float, tw: dict[str, float] | None = None) -> fusion.SearchCandidates:
        qv, pos = self.qvec(q), self._pos
        lex = self.lexical.search(q, N, expansion_boost=boost, term_weights=tw)
        return fusion.gather(lex, self.dense(q), lambda i: float(self.mat[pos[i]] @ qv))

    def ranked(
        self,
        q: str,
        boost: float = 0.0,
        overlap: float = 0.0,
        exp: Expansion | None = None,
        tw: dict[str, float] | None = None,
    ) -> list[str]:
        c = self.candidates(q, boost, tw)
        score = fusion.weighted(c, *self.weights)
        if overlap and exp:
            terms = self.lexical.query_terms(q)
            for j, i in enumerate(c.ids):
                e = exp.get(i)
                if e and terms:
                    score[j] += overlap * sum(t in e for t in terms) / len(terms)
        order = np.argsort(-score, kind="stable")[:10]
        return [c.ids[j] for j in order]


def feedback(
    s: Searcher, queries: dict[str, dict[str, float]], w_click: float, w_buy: float, cap: int
) -> tuple[Expansion, Counter]:
    """The bench's replay: shown = fused top 10; relevance >= 2.5 a click, 3.0 also a purchase."""
    exp: dict[str, Counter] = defaultdict(Counter)
    counts: Counter = Counter()
    for q, lab in queries.items():
        terms = s.lexical.query_terms(q)
        for pid in s.ranked(q):
            rel = lab.get(pid, 0.0)
            if rel < 2.5:
                continue
            counts["clicks"] += 1
            w = w_click
            if rel >= 3.0:
                counts["purchases"] += 1
                w += w_buy
            for t in terms:
                exp[pid][t] += w
    return {pid: dict(c.most_common(cap)) for pid, c in exp.items()}, counts


def term_weights(s: Searcher, exp: Expansion, prior: float, strength: float) -> dict[str, float]:
    """Per query term: how often the products clicked for queries with it contain it in their own
    document (product-type words: nearly always; brands absent from titles, colours, typos: less),
    shrunk to the mean by ``prior`` pseudo-clicks, as a boost ``(rate / mean) ** strength``."""
    hit: Counter = Counter()
    seen: Counter = Counter()
    for pid, terms in exp.items():
        doc = s.lexical._docs.get(pid)
        for t, w in terms.items():
            seen[t] += w
            hit[t] += w * (doc is not None and t in doc.tokens)
    mean = sum(hit.values()) / max(1e-9, sum(seen.values()))
    return {t: ((hit[t] + prior * mean) / (seen[t] + prior) / mean) ** strength for t in seen}


def score(s: Searcher, queries: dict[str, dict[str, float]], **kw) -> float:
    return float(np.mean([ndcg_at(s.ranked(q, **kw), lab) for q, lab in queries.items()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--title-emb", type=Path, required=True, help="unit title vectors, rows = products.csv order")
    ap.add_argument("--query-emb", type=Path, required=True, help="rows = sorted(relevance_labels) keys")
    ap.add_argument("--queries", type=int, default=None, help="at most this many queries per half (the bench's)")
    ap.add_argument("--products", type=int, default=None, help="catalogue slice (the bench's)")
    ap.add_argument("--cap", type=int, default=32, help="expansion terms kept per product")
    ap.add_argument("--w-click", type=float, default=1.0)
    ap.add_argument("--w-buy", type=float, default=4.0, help="a purchase's weight on top of its click (4: as served)")
    ap.add_argument("--any-term", action="store_true", help="the qlog field matched per term, not all terms")
    args = ap.parse_args()
    st = Settings()
    data = load_search_data(st.require_data_dir(), args.queries, args.products)
    row = {op.item_id: j for j, op in enumerate(homedepot.catalog(st.require_data_dir()))}
    qrow = {q: j for j, q in enumerate(sorted(homedepot.relevance_labels(st.require_data_dir())))}
    titles, qmat = np.load(args.title_emb), np.load(args.query_emb)

    def qvec(q: str) -> np.ndarray:
        return qmat[qrow[" ".join(q.lower().split())]]

    t = time.perf_counter()
    s = Searcher(data.products, titles, row, qvec, st)
    s.lexical.expansion_all_terms = not args.any_term
    print(
        f"{len(data.products):,} products, {len(data.feedback)} FB / {len(data.evaluation)} EV queries; "
        f"index {time.perf_counter() - t:.0f} s",
        flush=True,
    )

    # tuning: expansion from one part of the feedback half, scored on the other
    part = {q: zlib.crc32(b"tune:" + q.lower().encode()) % 2 for q in data.feedback}
    fit = {q: v for q, v in data.feedback.items() if part[q] == 0}
    held = {q: v for q, v in data.feedback.items() if part[q] == 1}
    exp, counts = feedback(s, fit, args.w_click, args.w_buy, args.cap)
    base_held = score(s, held)
    s.lexical.expand(exp)
    s.lexical.refresh()
    print(f"tuning: {len(fit)} fit / {len(held)} held-out FB queries, {dict(counts)} on {len(exp)} products")
    print(f"  held-out FB, no expansion        {base_held:.4f}")
    grid = [0.25, 0.5, 1.0, 2.0, 4.0]
    tuned = {b: score(s, held, boost=b) for b in grid}
    for b in grid:
        print(f"  qlog field boost {b:<4}            {tuned[b]:.4f} ({tuned[b] - base_held:+.4f})", flush=True)
    ogrid = [0.1, 0.2, 0.4, 0.8]
    otuned = {w: score(s, held, overlap=w, exp=exp) for w in ogrid}
    for w in ogrid:
        print(f"  + {w} x query-term overlap      {otuned[w]:.4f} ({otuned[w] - base_held:+.4f})", flush=True)
    tgrid = [(p, k) for p in (1.0, 3.0) for k in (0.5, 1.0, 2.0)]
    ttuned = {pk: score(s, held, tw=term_weights(s, exp, *pk)) for pk in tgrid}
    for pk in tgrid:
        gain = ttuned[pk] - base_held
        print(f"  term weights prior {pk[0]} power {pk[1]}   {ttuned[pk]:.4f} ({gain:+.4f})", flush=True)
    best_t = max(tgrid, key=lambda pk: ttuned[pk])
    best_b = max(grid, key=lambda b: tuned[b])
    best_o = max(ogrid, key=lambda w: otuned[w])
    s.lexical.expand({pid: {} for pid in exp})
    s.lexical.refresh()

    # the report: expansion from the whole feedback half, the evaluation half scored once per method
    before, seen_before = score(s, data.evaluation), score(s, data.feedback)
    exp, counts = feedback(s, data.feedback, args.w_click, args.w_buy, args.cap)
    s.lexical.expand(exp)
    s.lexical.refresh()
    print(f"\nfeedback half replayed: {dict(counts)} on {len(exp)} products")
    after_b = score(s, data.evaluation, boost=best_b)
    after_o = score(s, data.evaluation, overlap=best_o, exp=exp)
    after_t = score(s, data.evaluation, tw=term_weights(s, exp, *best_t))
    after_bt = score(s, data.evaluation, boost=best_b, tw=term_weights(s, exp, *best_t))
    print(f"EV fused, no feedback                    {before:.4f}")
    print(f"EV qlog field, boost {best_b} (tuned)       {after_b:.4f} ({after_b - before:+.4f})")
    print(f"EV + {best_o} x overlap (tuned)            {after_o:.4f} ({after_o - before:+.4f})")
    print(f"EV term weights {best_t} (tuned)          {after_t:.4f} ({after_t - before:+.4f})")
    print(f"EV both                                  {after_bt:.4f} ({after_bt - before:+.4f})")
    oracle = []
    for q, lab in data.evaluation.items():  # the ceiling of any per-product memory of the clicks
        known = sorted((p for p in exp if lab.get(p, 0) >= 2.5), key=lambda p: -lab[p])
        oracle.append(ndcg_at(known + [p for p in s.ranked(q) if p not in known], lab))
    touched = sum(any(lab.get(p, 0) >= 2.5 for p in exp) for lab in data.evaluation.values())
    print(
        f"EV ceiling: clicked products relevant to the EV query put first: {np.mean(oracle):.4f} "
        f"({np.mean(oracle) - before:+.4f}; {touched} EV queries have one)"
    )
    print("\nthe same feedback, repeated (seen: the feedback queries again) vs unseen queries, per boost:")
    for b in grid + [8.0]:
        seen, unseen = score(s, data.feedback, boost=b), score(s, data.evaluation, boost=b)
        d_seen, d_unseen = seen - seen_before, unseen - before
        print(f"  boost {b:<4} seen {seen:.4f} ({d_seen:+.4f})   unseen {unseen:.4f} ({d_unseen:+.4f})")


if __name__ == "__main__":
    main()
