"""Filters, facets and filtered retrieval held to a brute-force reference on a real catalogue.

Instacart's products carry real two-level categories (department > aisle); brand, price, stock and
two attributes are derived from each product id (the dataset has none), so every filter kind meets
real category paths and real titles. The reference below is written apart from serving/catalog:
a plain loop over the items' metadata.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.catalog import facets, retrieval
from serving.catalog.columns import CatalogColumns
from serving.catalog.filters import AttributeCondition, Filter
from serving.lexical import LexicalIndex
from streamrec.datasets import instacart
from streamrec.settings import CatalogSettings
from streamrec.vector_index import ItemMeta, LiveIndex

N_ITEMS = 3000
BRANDS = ["Acme", "Bolt", "Crest", "Dune", "Ember", "Fjord"]
COLOURS = ["red", "green", "blue", "black"]


def _synthetic(item_id: str) -> dict:
    h = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big")
    fields: dict = {
        "brand": BRANDS[h % 7] if h % 7 < len(BRANDS) else None,  # a seventh have none
        "price": None if h % 11 == 0 else round(0.5 + (h >> 8) % 20000 / 100, 2),
        "stock": (h >> 24) % 4,  # a quarter out of stock
        "attributes": {"weight": round((h >> 32) % 500 / 10, 1)},
    }
    if h % 3:
        fields["attributes"]["colour"] = COLOURS[(h >> 40) % 4]
    if h % 5 == 0:
        fields["attributes"]["sizes"] = sorted({"S", "M", "L", "XL"[: 1 + h % 2]} - {""})
    return fields


@pytest.fixture(scope="module")
def catalogue(data_dir) -> dict[str, ItemMeta]:
    return {
        op.item_id: ItemMeta(title=op.title or "", category=op.category, created_ms=op.ts, **_synthetic(op.item_id))
        for op in instacart.catalog(data_dir, limit=N_ITEMS)
    }


@pytest.fixture(scope="module")
def categories(catalogue) -> list[str]:
    paths = sorted({m.category for m in catalogue.values() if m.category})
    return sorted({p.split(" > ")[0] for p in paths}) + paths


# --- the reference ---------------------------------------------------------------------------------


def _ref_condition(meta: ItemMeta, c: AttributeCondition) -> bool:
    have = meta.attributes.get(c.name)
    if c.value is None:  # a range: numbers only
        return isinstance(have, float) and (c.lo is None or have >= c.lo) and (c.hi is None or have <= c.hi)
    if isinstance(have, list):
        return c.value in have
    if isinstance(have, float):
        try:
            return have == float(c.value)
        except ValueError:
            return False
    return have == c.value


def reference(meta: ItemMeta, f: Filter, skip: str | None = None) -> bool:
    """Every condition of ``f`` but ``skip``, by a plain reading of the README's rules."""
    ok = True
    if f.category and skip != "category":
        ok &= meta.category is not None and (
            meta.category == f.category or meta.category.startswith(f.category + " > ")
        )
    if f.brand and skip != "brand":
        ok &= meta.brand in f.brand
    if (f.price_min is not None or f.price_max is not None) and skip != "price":
        ok &= meta.price is not None and (f.price_min or 0) <= meta.price <= (f.price_max or float("inf"))
    wanted = f.availability or "in_stock"
    if wanted != "any" and skip != "availability":
        in_stock = meta.stock is None or meta.stock > 0
        ok &= in_stock == (wanted == "in_stock")
    names = {c.name for c in f.attributes}
    for name in names:
        if skip != f"attr.{name}":
            ok &= any(_ref_condition(meta, c) for c in f.attributes if c.name == name)
    return ok


# --- generated filters -----------------------------------------------------------------------------


@st.composite
def filters(draw, categories: list[str]) -> Filter:
    conditions = draw(
        st.lists(
            st.one_of(
                st.builds(lambda lo, width: f"weight:{lo}..{lo + width}", st.integers(0, 50), st.integers(0, 20)),
                st.builds(lambda hi: f"weight:..{hi}", st.integers(0, 50)),
                st.builds(lambda w: f"weight:{w / 10}", st.integers(0, 499)),
                st.sampled_from([f"colour:{c}" for c in COLOURS] + ["sizes:M", "sizes:XL", "colour:mauve"]),
            ),
            max_size=3,
        )
    )
    price = draw(st.one_of(st.none(), st.tuples(st.integers(0, 200), st.integers(0, 200))))
    return Filter.parse(
        category=draw(st.one_of(st.none(), st.sampled_from(categories))),
        brand=draw(st.lists(st.sampled_from(BRANDS + ["Nobody"]), max_size=3)),
        price_min=None if price is None or price[0] > 150 else float(min(price)),
        price_max=None if price is None or price[1] < 50 else float(max(price)),
        availability=draw(st.sampled_from([None, "in_stock", "out_of_stock", "any"])),
        attr=conditions,
    )


@pytest.fixture(scope="module")
def columns(catalogue) -> CatalogColumns:
    c = CatalogColumns()
    c.apply(catalogue)
    return c


def _selected(columns: CatalogColumns, f: Filter) -> set[str]:
    sel = columns.select(f, "in_stock")
    return set(columns.ids_of(np.flatnonzero(columns.live))) if sel is None else set(sel.item_ids())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_filters_select_exactly_what_the_reference_admits(data, catalogue, categories, columns):
    f = data.draw(filters(categories))
    want = {i for i, m in catalogue.items() if reference(m, f)}
    assert _selected(columns, f) == want
    assert {i for i, m in catalogue.items() if f.admits(m, "in_stock")} == want


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_facets_count_each_field_under_the_other_filters(data, catalogue, categories, columns):
    f = data.draw(filters(categories))
    ids = sorted(catalogue)
    matching = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=400))
    names = ["category", "brand", "price", "availability", "attr.colour", "attr.weight", "attr.sizes"]
    cfg = CatalogSettings()
    got = facets.count(columns, f, "in_stock", matching, names, cfg, exhaustive=True)
    metas = [catalogue[i] for i in set(matching)]
    assert got.matched == sum(reference(m, f) for m in metas)
    for name in names:
        kept = [m for m in metas if reference(m, f, skip=name)]
        counts = {v.value: v.count for v in got.counts[name].values}
        if name == "brand":
            want = {b: sum(m.brand == b for m in kept) for b in BRANDS}
        elif name == "category":
            want = {}
            for m in kept:
                if m.category:
                    levels = m.category.split(" > ")
                    for depth in range(1, len(levels) + 1):
                        key = " > ".join(levels[:depth])
                        want[key] = want.get(key, 0) + 1
        elif name == "price":
            edges = [0.0] + cfg.price_buckets + [float("inf")]
            want = {
                f"{'' if lo == 0 else f'{lo:g}'}..{'' if hi == float('inf') else f'{hi:g}'}": sum(
                    m.price is not None and lo <= m.price < hi for m in kept
                )
                for lo, hi in itertools.pairwise(edges)
            }
        elif name == "availability":
            in_stock = sum(m.stock is None or m.stock > 0 for m in kept)
            want = {"in_stock": in_stock, "out_of_stock": len(kept) - in_stock}
        elif name == "attr.weight":
            weights = [m.attributes["weight"] for m in kept]
            assert (got.counts[name].min, got.counts[name].max) == (
                (min(weights), max(weights)) if weights else (None, None)
            )
            continue
        else:
            attr = name.removeprefix("attr.")
            want = {}
            for m in kept:
                have = m.attributes.get(attr)
                for v in have if isinstance(have, list) else [have] if have is not None else []:
                    want[v] = want.get(v, 0) + 1
        want = {k: v for k, v in want.items() if v}
        top = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.facet_values]
        assert counts == (dict(top) if name != "price" else want), name


def test_changes_keep_the_columns_exact(catalogue, categories):
    """Patches, deletes and re-adds reuse rows; the selection follows each change."""
    c = CatalogColumns()
    c.apply(catalogue)
    ids = sorted(catalogue)
    rng = np.random.default_rng(7)
    live = dict(catalogue)
    for step in range(30):
        picked = [ids[j] for j in rng.choice(len(ids), 50, replace=False)]
        changes: dict[str, ItemMeta | None] = {}
        for i in picked:
            if step % 3 == 0:
                changes[i] = None
            else:
                base = catalogue[i]
                changes[i] = replace(base, stock=int(rng.integers(0, 2)), brand=BRANDS[int(rng.integers(0, 6))])
        c.apply(changes)
        for i, meta in changes.items():
            if meta is None:
                live.pop(i, None)
            else:
                live[i] = meta
        f = Filter.parse(brand=BRANDS[:2], category=categories[step % len(categories)])
        assert _selected(c, f) == {i for i, m in live.items() if reference(m, f)}
    assert len(c) == len(live) and c.out_of_stock == sum(not m.available for m in live.values())
    everything_in_stock = CatalogColumns()
    everything_in_stock.apply({i: replace(m, stock=None) for i, m in live.items()})
    assert everything_in_stock.select(Filter(), "in_stock") is None  # nothing to filter


# --- filtered retrieval ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrieval_parts(catalogue, columns):
    rng = np.random.default_rng(11)
    ids = sorted(catalogue)
    vectors = rng.standard_normal((len(ids), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = LiveIndex(16, factory="Flat")
    index.apply([(i, v, catalogue[i]) for i, v in zip(ids, vectors, strict=True)], [])
    lexical = LexicalIndex()
    index.subscribe(lexical.apply)
    lexical.refresh()
    return index, lexical, dict(zip(ids, vectors, strict=True))


QUERIES = ["organic milk", "chocolate chip cookies", "frozen pizza", "green tea", "chicken"]


@pytest.mark.parametrize(
    "small, overfetch",
    [(0, retrieval.OVERFETCH), (0, 0.05), (10**6, retrieval.OVERFETCH)],
    ids=["index-then-filter", "index-then-filter-deepening", "only-the-admitted"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_filtered_retrieval_equals_exhaustive_search_over_the_admitted(
    data, small, overfetch, catalogue, categories, columns, retrieval_parts, monkeypatch
):
    """Both strategies of each side return what an exhaustive search over the admitted items does:
    the dense top-n by cosine, and the lexical top-n by BM25 (compared by score: ties may order
    either way). A tiny first fetch makes the index side read deeper, as a filter correlated with
    the query would."""
    monkeypatch.setattr(retrieval, "OVERFETCH", overfetch)
    index, lexical, vectors = retrieval_parts
    f = data.draw(filters(categories))
    sel = columns.select(f, "in_stock")
    admitted = [i for i, m in catalogue.items() if reference(m, f)]
    q = vectors[data.draw(st.sampled_from(sorted(vectors)))]
    n = 20
    got = retrieval.dense(index, q, n, sel, exact_max=small)
    scores = sorted((float(vectors[i] @ q) for i in admitted), reverse=True)[:n]
    np.testing.assert_allclose([s for _, s in got], scores, atol=1e-5)
    assert all(i in set(admitted) for i, _ in got)

    query = data.draw(st.sampled_from(QUERIES))
    terms = lexical.query_terms(query)
    hits = retrieval.lexical(lexical, query, n, terms, sel, restrict_max=small)
    everything = lexical.search(query, N_ITEMS, terms)
    allowed = set(admitted)
    want = [h.score for h in everything if h.item_id in allowed][:n]
    np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-5)
    assert all(h.item_id in allowed for h in hits)
