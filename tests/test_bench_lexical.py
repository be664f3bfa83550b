"""bench/lexical.py in small: on the synthetic Home Depot catalogue, single adds, replaces and deletes
are searchable at the writer's next commit, and what a change costs does not grow with the catalogue.

Work is counted (commits until a change is visible, documents analysed per change), never seconds:
the freshness target in seconds and the time per change at 1M items are bench/lexical.py's figures.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

import serving.lexical
from bench.lexical import catalogue, model_code, variant
from serving.lexical import LexicalIndex
from streamrec.datasets import homedepot
from streamrec.vector_index.live import ItemMeta
from tests.polling import wait_for


@pytest.fixture(scope="module")
def items(data_dir: os.PathLike) -> list[tuple[str, str]]:
    real = [(op.item_id, op.title or "") for op in homedepot.catalog(data_dir, limit=5000)]
    return catalogue(real, 20_000)  # 5,000 real titles, then variations of them


def _built(items: list[tuple[str, str]]) -> LexicalIndex:
    index = LexicalIndex()
    index.apply({item_id: ItemMeta(title) for item_id, title in items})
    index.refresh()
    return index


def _present(index: LexicalIndex, item_id: str, query: str) -> bool:
    return any(h.item_id == item_id for h in index.search(query, 10))


def _changes(items: list[tuple[str, str]], n: int, seed: int) -> Iterator[tuple[str, ItemMeta | None, str]]:
    """(item id, new text or None, a query that finds it): n adds, n replaces, n deletes, interleaved."""
    rng = random.Random(seed)
    targets = rng.sample(range(len(items)), 2 * n)
    for j in range(3 * n):
        kind = j % 3
        if kind == 2:
            item_id, title = items[targets.pop()]
            yield item_id, None, title
        else:
            code = model_code(rng, 10**7 + seed * 1000 + j)
            item_id = f"new{seed}-{j}" if kind == 0 else items[targets.pop()][0]
            title = variant(items[rng.randrange(len(items))][1], items[rng.randrange(len(items))][1], rng, code)
            yield item_id, ItemMeta(title), code


def test_single_changes_are_searchable_within_two_commits(items: list[tuple[str, str]]) -> None:
    index = _built(items[:3000])
    index.start()  # serving's writer thread and commit interval
    try:
        checked, deleted = 0, 0
        for item_id, item, query in _changes(items[:3000], 5, seed=1):
            if item is None and not _present(index, item_id, query):
                continue  # a title its own words do not rank in the top 10: its absence shows nothing
            committed = index.version
            index.apply({item_id: item})
            shown = item is not None
            wait_for(lambda i=item_id, q=query, s=shown: _present(index, i, q) == s, f"{item_id} changed", 30)
            # the writer's next commit (a second one when the change came while a commit was under way)
            assert index.version - committed <= 2, (item_id, index.version - committed)
            checked += 1
            deleted += item is None
        assert checked >= 12
        assert len(index) == 3000 + 5 - deleted  # replaces replaced, deletes deleted
    finally:
        index.stop()


def test_a_change_costs_the_same_work_at_2k_and_20k_items(
    items: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    small, large = _built(items[:2000]), _built(items)
    analysed = 0
    real_analyze = serving.lexical.analyze

    def counting(text: str) -> list[str]:
        nonlocal analysed
        analysed += 1
        return real_analyze(text)

    monkeypatch.setattr(serving.lexical, "analyze", counting)
    work: dict[int, list[int]] = {2000: [], 20_000: []}
    for trial in range(12):
        for n, index, pool in ((2000, small, items[:2000]), (20_000, large, items)):
            batch = {item_id: item for item_id, item, _ in _changes(pool, 1, seed=100 + trial)}
            analysed = 0
            index.apply(batch)
            index.refresh()  # analyse, add/delete, commit and reload: the writer thread's work
            work[n].append(analysed)
    assert len(small) == 2000 and len(large) == 20_000  # one add and one delete per trial
    assert work[2000] == work[20_000] and max(work[20_000]) <= 4  # 2 upserts × (title + category)
