"""Serving's pure parts: diversity re-ranking and the rebuilding lexical index."""

import numpy as np

from serving.lexical import LexicalIndex
from serving.rerank import mmr


def test_mmr_with_lambda_one_keeps_relevance_order():
    scores = np.array([0.2, 0.9, 0.5])
    vecs = np.eye(3, dtype=np.float32)
    assert mmr(scores, vecs, 3, lambda_=1.0) == [1, 2, 0]


def test_mmr_demotes_near_duplicates():
    # items 0 and 1 are the same product twice; 2 is different and slightly less relevant
    vecs = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores = np.array([1.0, 0.99, 0.9])
    assert mmr(scores, vecs, 2, lambda_=1.0) == [0, 1]
    assert mmr(scores, vecs, 2, lambda_=0.5) == [0, 2]


def test_mmr_handles_empty_and_k_larger_than_n():
    assert mmr(np.array([]), np.zeros((0, 4)), 5) == []
    assert sorted(mmr(np.array([1.0, 2.0]), np.eye(2), 10)) == [0, 1]


def test_lexical_index_rebuilds_when_the_catalog_version_moves():
    catalog = {"version": 1, "docs": {"a": "blue ballpoint pen", "b": "white binder"}}
    index = LexicalIndex(lambda: catalog["version"], lambda: dict(catalog["docs"]))
    assert index.search("pen", 5) == []  # nothing built yet: no error, no results
    index.rebuild()
    assert [hit[0] for hit in index.search("blue pen", 5)] == ["a"]
    catalog["docs"]["c"] = "red gel pen"
    index.rebuild()  # same version: no rebuild
    assert "c" not in [hit[0] for hit in index.search("pen", 5)]
    catalog["version"] = 2
    index.rebuild()
    assert {hit[0] for hit in index.search("pen", 5)} == {"a", "c"}
    assert index.search("   ", 5) == [] and index.search("zzzz", 5) == []
