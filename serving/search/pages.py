"""Sorted and paged search results: a shopper's next page comes from the ranking the first came from.

Why keep the ranking: the catalogue, the click memory and the served model change between two page
requests, so ranking again could repeat or skip products. Each answer's whole order (its first
``catalog.page_depth`` products, with scores and reasons) is kept under its request_id in this
process for ``catalog.page_ttl_s`` (a ``cachetools.TTLCache`` of ``catalog.page_cache_size``
answers); a later page names it (``page_of``) and is cut from it. A miss — expired, evicted, asked
of another serving worker, or for other parameters — ranks again and says so in ``degraded``.

Sorts other than relevance reorder the *relevant* candidates, those whose score before the head is
at least ``catalog.sort_min_relevance`` × the best (sorting every candidate by price would lead
with whatever cheap product the vectors found nearest): by price, by first upsert (newest) or by
decayed purchases (best selling); relevance breaks ties, products without the value come last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from cachetools import TTLCache

from serving.search import Ranked

Sort = Literal["relevance", "price_asc", "price_desc", "newest", "best_selling"]
SORTS: tuple[str, ...] = get_args(Sort)
PAGE_RANKED_AGAIN = "the ranking page_of names is gone (expired, or kept by another serving worker): ranked again"


@dataclass(frozen=True)
class Listing:
    """One answer's whole order, and what it answered (a later page must ask the same)."""

    asked: tuple
    entries: list[tuple[str, float, list[str]]]  # (item, score, reasons), in shown order


class PageCache:
    def __init__(self, size: int, ttl_s: float):
        self._cache: TTLCache[str, Listing] = TTLCache(maxsize=size, ttl=ttl_s)
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def put(self, request_id: str, listing: Listing) -> None:
        if self._cache.maxsize == 0:  # catalog.page_cache_size 0: every page ranks again
            return
        with self._lock:
            self._cache[request_id] = listing

    def get(self, request_id: str, asked: tuple) -> Listing | None:
        with self._lock:
            found = self._cache.get(request_id)
        return found if found is not None and found.asked == asked else None


def relevance_order(ranked: Ranked) -> list[int]:
    """The page as ranked (diversity and exploration included), then the other candidates by score."""
    shown = set(ranked.order)
    rest = [j for j in np.argsort(-ranked.final, kind="stable").tolist() if j not in shown]
    return list(ranked.order) + rest


def sorted_order(
    ranked: Ranked, sort: Sort, values: Callable[[list[str]], list[float | None]], min_relevance: float
) -> list[int]:
    """The relevant candidates by ``values`` (ascending for price_asc, else descending), then by score."""
    if sort == "relevance":
        return relevance_order(ranked)
    best = float(ranked.final.max()) if len(ranked.final) else 0.0
    relevant = [j for j in range(len(ranked.ids)) if ranked.final[j] >= min_relevance * best]
    keys = values([ranked.ids[j] for j in relevant])
    sign = 1.0 if sort == "price_asc" else -1.0

    def key(pair: tuple[int, float | None]) -> tuple[bool, float, float]:
        j, v = pair
        return (v is None, sign * v if v is not None else 0.0, -float(ranked.final[j]))

    return [j for j, _ in sorted(zip(relevant, keys, strict=True), key=key)]


def listing(ranked: Ranked, order: list[int], asked: tuple, depth: int) -> Listing:
    return Listing(asked, [(ranked.ids[j], float(ranked.final[j]), ranked.reasons[j]) for j in order[:depth]])
