"""Retrieval under a filter that keeps both lists full: no empty page when a filter is selective.

Filtering the usual top-n afterwards loses recall: at 1 % selectivity about one hit in a hundred
survives. So each side picks a strategy by how many items the filter admits:

- dense: few admitted items (``catalog.dense_exact_max``) are scored exhaustively by their vectors
  (exact); otherwise the index is asked for n ÷ selectivity × 1.5 hits, filtered, and asked again
  twice as deep until n pass or the index is exhausted (exact for an exact index);
- lexical: few admitted items (``catalog.lexical_restrict_max``) restrict BM25 inside tantivy;
  otherwise BM25 hits are read deeper in the same way. Both exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import numpy as np

from serving.catalog.columns import Selection
from serving.lexical import LexicalHit, LexicalIndex
from streamrec.vector_index import LiveIndex

OVERFETCH = 1.5


def _deepen(search: Callable[[int], list], admits: Callable[[str], bool], key, n: int, admitted: int, total: int):
    """The first ``n`` hits that pass, from ``search(depth)`` asked ever deeper; ``key`` gives a hit's item."""
    depth = min(total, math.ceil(n * total / max(admitted, 1) * OVERFETCH) + n)
    while True:
        hits = search(depth)
        kept = [h for h in hits if admits(key(h))]
        if len(kept) >= n or len(hits) < depth or depth >= total:
            return kept[:n]
        depth = min(total, depth * 2)


def dense(
    index: LiveIndex,
    query: np.ndarray,
    n: int,
    selection: Selection | None,
    exact_max: int,
    exclude: Collection[str] = (),
) -> list[tuple[str, float]]:
    """Top-``n`` (item, score) for one query vector among the items ``selection`` admits."""
    if selection is None:
        return index.search(query[None, :], n, exclude=exclude)[0]
    if selection.count == 0 or n <= 0:
        return []
    if selection.count <= exact_max:
        ids = selection.item_ids()
        return index.search_among(query, n, [i for i in ids if i not in exclude] if exclude else ids)
    return _deepen(
        lambda depth: index.search(query[None, :], depth, exclude=exclude)[0],
        selection.admits,
        lambda hit: hit[0],
        n,
        selection.count,
        len(index),
    )


def lexical(
    index: LexicalIndex, query: str, n: int, terms: list[str], selection: Selection | None, restrict_max: int
) -> list[LexicalHit]:
    """Top-``n`` BM25 hits among the items ``selection`` admits."""
    if selection is None:
        return index.search(query, n, terms)
    if selection.count == 0 or n <= 0:
        return []
    if selection.count <= restrict_max:
        return index.search(query, n, terms, within=selection.item_ids())
    return _deepen(
        lambda depth: index.search(query, depth, terms),
        selection.admits,
        lambda hit: hit.item_id,
        n,
        selection.count,
        max(len(index), 1),
    )
