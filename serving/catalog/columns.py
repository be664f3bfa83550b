"""The catalogue as columns, so a filter is evaluated over every item at once.

Why columns beside the index's metadata: a filter is checked against the whole catalogue for each
request (selective filters retrieve among the matching items only), and a Python loop over 100k
metadata objects costs tens of milliseconds where a numpy comparison costs tens of microseconds.
Each item has a row; deleted rows are reused. Kept current by the index's change notifications
(``LiveIndex.subscribe``), so a price or stock patch filters within one index apply.

Keyword values (brand, category, keyword attributes) are stored as codes, numbers as float64 with
NaN for "none". A row mask per condition: the facets need each condition apart (a facet counts
with every filter but its own, so choosing one brand does not hide the others).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from serving.catalog.filters import AttributeCondition, Availability, Filter
from streamrec.analysis import category_key, category_levels
from streamrec.vector_index import ItemMeta

_GROW = 1024


@dataclass(frozen=True)
class Selection:
    """The items a filter admits: a row mask over the columns, and how many."""

    mask: np.ndarray  # bool per row (dead rows False)
    count: int
    columns: CatalogColumns

    def admits(self, item_id: str) -> bool:
        row = self.columns.row(item_id)
        return row is not None and row < len(self.mask) and bool(self.mask[row])

    def item_ids(self) -> list[str]:
        return self.columns.ids_of(np.flatnonzero(self.mask))


class _Codes:
    """Keyword value ↔ small int, append-only (a value no item has any more keeps its code)."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.values: list[str] = []

    def of(self, value: str) -> int:
        c = self.code.get(value)
        if c is None:
            c = self.code[value] = len(self.values)
            self.values.append(value)
        return c


class CatalogColumns:
    """Filterable columns of the live catalogue; thread-safe (one lock, held for microseconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held by readers that need several columns consistent (facets)
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._cap = 0
        self._ids = np.empty(0, dtype=object)
        self.live = np.zeros(0, dtype=bool)
        self.available = np.zeros(0, dtype=bool)
        self.price = np.zeros(0, dtype=np.float64)
        self.brand = np.zeros(0, dtype=np.int32)
        self.category = np.zeros(0, dtype=np.int32)
        self.brands = _Codes()
        self.categories = _Codes()  # full paths, normalised (category_key)
        self.keywords: dict[str, dict[str, set[int]]] = {}  # attribute → value → rows
        self._row_keywords: dict[int, list[set[int]]] = {}  # row → the posting sets holding it
        self.numbers: dict[str, np.ndarray] = {}  # attribute → float64 per row (NaN: none)
        self.out_of_stock = 0  # live items not available

    # --- changes ---------------------------------------------------------------------------
    def apply(self, changes: Mapping[str, ItemMeta | None], reset: bool = False) -> None:
        """An index change notification: upserts (metadata) and deletes (None)."""
        with self.lock:
            if reset:
                for item_id in list(self._row):
                    self._remove(item_id)
            for item_id, meta in changes.items():
                self._remove(item_id)
                if meta is not None:
                    self._add(item_id, meta)

    def _grow(self) -> None:
        cap = max(_GROW, self._cap * 2)

        def grown(a: np.ndarray, fill) -> np.ndarray:
            out = np.full(cap, fill, dtype=a.dtype)
            out[: self._cap] = a
            return out

        self._ids = grown(self._ids, None)
        self.live = grown(self.live, False)
        self.available = grown(self.available, False)
        self.price = grown(self.price, np.nan)
        self.brand = grown(self.brand, -1)
        self.category = grown(self.category, -1)
        self.numbers = {k: grown(v, np.nan) for k, v in self.numbers.items()}
        self._free.extend(range(cap - 1, self._cap - 1, -1))  # lowest rows first
        self._cap = cap

    def _add(self, item_id: str, meta: ItemMeta) -> None:
        if not self._free:
            self._grow()
        r = self._free.pop()
        self._row[item_id] = r
        self._ids[r] = item_id
        self.live[r] = True
        self.available[r] = meta.available
        self.out_of_stock += not meta.available
        self.price[r] = np.nan if meta.price is None else meta.price
        self.brand[r] = -1 if meta.brand is None else self.brands.of(meta.brand)
        levels = category_levels(meta.category) if meta.category else ()
        self.category[r] = self.categories.of(category_key(levels)) if levels else -1
        for name, value in meta.attributes.items():
            if isinstance(value, (int, float)):
                col = self.numbers.get(name)
                if col is None:
                    col = self.numbers[name] = np.full(self._cap, np.nan)
                col[r] = value
            else:
                postings = self.keywords.setdefault(name, {})
                for v in value if isinstance(value, list) else [value]:
                    rows = postings.setdefault(v, set())
                    rows.add(r)
                    self._row_keywords.setdefault(r, []).append(rows)

    def _remove(self, item_id: str) -> None:
        r = self._row.pop(item_id, None)
        if r is None:
            return
        self._ids[r] = None
        self.out_of_stock -= not self.available[r]
        self.live[r] = self.available[r] = False
        self.price[r] = np.nan
        self.brand[r] = self.category[r] = -1
        for col in self.numbers.values():
            col[r] = np.nan
        for rows in self._row_keywords.pop(r, ()):  # only the item's own values: a patch costs O(its attributes)
            rows.discard(r)
        self._free.append(r)

    # --- reads -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row)

    def row(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def rows_of(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the items that are live, in the given order (unknown ones skipped)."""
        get = self._row.get
        return np.fromiter((r for i in item_ids if (r := get(i)) is not None), dtype=np.int64)

    def ids_of(self, rows: np.ndarray) -> list[str]:
        return self._ids[rows].tolist()

    def select(self, f: Filter, default_availability: Availability) -> Selection | None:
        """The items ``f`` admits; None when it admits every live item (no filtering needed)."""
        if not f.narrows(default_availability):
            return None
        only_in_stock = f == Filter(availability="in_stock") or (f == Filter() and default_availability == "in_stock")
        if only_in_stock and self.out_of_stock == 0:
            return None  # the common request: nothing is out of stock, nothing to filter (no pass over the rows)
        with self.lock:
            masks = self.masks(f, default_availability)
            mask = self.live.copy()
            for m in masks.values():
                mask &= m
            if len(masks) == 1 and "availability" in masks and mask.sum() == len(self._row):
                return None  # only availability, and everything is available
            return Selection(mask, int(mask.sum()), self)

    def masks(self, f: Filter, default_availability: Availability) -> dict[str, np.ndarray]:
        """One row mask per condition of ``f``, by facet name (call under ``lock``)."""
        out: dict[str, np.ndarray] = {}
        n = self._cap
        if f.category is not None:
            want = category_levels(f.category)
            codes = [c for c, path in enumerate(self.categories.values) if category_levels(path)[: len(want)] == want]
            out["category"] = np.isin(self.category[:n], codes)
        if f.brand:
            codes = [self.brands.code[b] for b in f.brand if b in self.brands.code]
            out["brand"] = np.isin(self.brand[:n], codes)
        if f.price_min is not None or f.price_max is not None:
            with np.errstate(invalid="ignore"):
                m = ~np.isnan(self.price)
                if f.price_min is not None:
                    m &= self.price >= f.price_min
                if f.price_max is not None:
                    m &= self.price <= f.price_max
            out["price"] = m
        wanted = f.availability_or(default_availability)
        if wanted != "any":
            out["availability"] = self.available.copy() if wanted == "in_stock" else ~self.available
        for name, conditions in f.by_attribute().items():
            m = np.zeros(n, dtype=bool)
            for c in conditions:
                m |= self._attribute_mask(name, c)
            out[f"attr.{name}"] = m
        return out

    def _attribute_mask(self, name: str, c: AttributeCondition) -> np.ndarray:
        m = np.zeros(self._cap, dtype=bool)
        col = self.numbers.get(name)
        if col is not None and (c.is_range or c.number() is not None):
            with np.errstate(invalid="ignore"):
                if c.is_range:
                    m = ~np.isnan(col)
                    if c.lo is not None:
                        m &= col >= c.lo
                    if c.hi is not None:
                        m &= col <= c.hi
                else:
                    m = col == c.number()
        if not c.is_range:
            rows = self.keywords.get(name, {}).get(c.value or "")
            if rows:
                m[np.fromiter(rows, dtype=np.int64, count=len(rows))] = True
        return m
