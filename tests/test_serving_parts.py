"""Serving's pure parts: diversity re-ranking (the lexical index: tests/test_lexical.py)."""

import numpy as np

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
