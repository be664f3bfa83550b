"""Facet counts over the items a query matches: what a storefront draws as its filter column.

Each facet is counted under every filter but its own (disjunctive faceting, as Algolia and
Elasticsearch's post_filter do): after choosing brand A the brand facet still shows B and C with
the counts they would have. A category counts toward every level of its path, so "Tools" counts
"Tools > Drills" too. Prices fall into ``catalog.price_buckets``, labelled ``lo..hi`` like an
``attr`` range; a numeric attribute reports its range (min, max) over the matches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from serving.catalog.columns import CatalogColumns
from serving.catalog.filters import Availability, Filter
from streamrec.analysis import category_key, category_levels
from streamrec.schemas import Facet, Facets, FacetValue
from streamrec.settings import CatalogSettings

FIXED = ("category", "brand", "price", "availability")
_ONE = r"(?:category|brand|price|availability|attr\.[A-Za-z0-9_.-]+)"
NAMES_PATTERN = rf"^\s*{_ONE}?\s*(?:,\s*{_ONE}?\s*)*$"  # a comma-separated list of them (the API checks it)


def check_names(names: Iterable[str]) -> list[str]:
    """The requested facets, each once; ValueError for an unknown fixed name."""
    out = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    bad = [n for n in out if n not in FIXED and not (n.startswith("attr.") and len(n) > 5)]
    if bad:
        raise ValueError(f"unknown facets {bad}: one of {list(FIXED)} or attr.<name>")
    return out


def price_label(edges: list[float], bucket: int) -> str:
    """Bucket ``bucket`` of ``np.digitize(price, edges, right=False)``, as ``lo..hi``."""
    lo = "" if bucket == 0 else f"{edges[bucket - 1]:g}"
    hi = "" if bucket == len(edges) else f"{edges[bucket]:g}"
    return f"{lo}..{hi}"


def count(
    columns: CatalogColumns,
    f: Filter,
    default_availability: Availability,
    matching: Iterable[str],
    names: list[str],
    s: CatalogSettings,
    exhaustive: bool,
) -> Facets:
    """Counts of ``names`` over the ``matching`` items (the query's matches before filtering)."""
    with columns.lock:  # one consistent view of the columns for every facet
        rows = np.unique(columns.rows_of(matching))
        masks = {k: m[rows] for k, m in columns.masks(f, default_availability).items()}
        live = columns.live[rows]
        everything = live.copy()
        for m in masks.values():
            everything &= m
        out: dict[str, Facet] = {}
        for name in names:
            keep = live.copy()
            for other, m in masks.items():
                if other != name:
                    keep &= m
            out[name] = _facet(columns, name, rows[keep], s)
    return Facets(counts=out, matched=int(everything.sum()), exhaustive=exhaustive)


def _top(counter: Counter, n: int) -> list[FacetValue]:
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [FacetValue(value=v, count=c) for v, c in ordered if c > 0]


def _facet(columns: CatalogColumns, name: str, rows: np.ndarray, s: CatalogSettings) -> Facet:
    n = s.facet_values
    if name == "brand":
        codes = columns.brand[rows]
        return Facet(values=_top(Counter({columns.brands.values[c]: k for c, k in _bincount(codes)}), n))
    if name == "category":
        counts: Counter = Counter()
        for c, k in _bincount(columns.category[rows]):
            levels = category_levels(columns.categories.values[c])
            for depth in range(1, len(levels) + 1):
                counts[category_key(levels[:depth])] += k
        return Facet(values=_top(counts, n))
    if name == "price":
        prices = columns.price[rows]
        prices = prices[~np.isnan(prices)]
        edges = s.price_buckets
        buckets = np.bincount(np.digitize(prices, edges), minlength=len(edges) + 1)
        values = [FacetValue(value=price_label(edges, b), count=int(k)) for b, k in enumerate(buckets) if k]
        return Facet(values=values)  # in price order, not by count: a price column reads low to high
    if name == "availability":
        available = int(columns.available[rows].sum())
        return Facet(
            values=_top(Counter({"in_stock": available, "out_of_stock": len(rows) - available}), n),
        )
    attribute = name.removeprefix("attr.")
    col = columns.numbers.get(attribute)
    keyword_counts: Counter = Counter()
    in_rows = set(rows.tolist())
    for value, posting in columns.keywords.get(attribute, {}).items():
        k = len(posting & in_rows) if len(posting) < len(in_rows) else sum(1 for r in in_rows if r in posting)
        if k:
            keyword_counts[value] = k
    facet = Facet(values=_top(keyword_counts, n))
    if col is not None:
        numbers = col[rows]
        numbers = numbers[~np.isnan(numbers)]
        if len(numbers):
            facet.min, facet.max = float(numbers.min()), float(numbers.max())
    return facet


def _bincount(codes: np.ndarray) -> list[tuple[int, int]]:
    codes = codes[codes >= 0]
    if not len(codes):
        return []
    counts = np.bincount(codes)
    return [(int(c), int(counts[c])) for c in np.flatnonzero(counts)]
