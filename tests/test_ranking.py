"""Ranking features and head: shape, graceful degradation, explanations, served-row round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrec.features import ReplayFeatures
from streamrec.ranking import (
    FEATURE_NAMES,
    N_FEATURES,
    QUERY_FEATURE_NAMES,
    FeatureAssembler,
    RankingHead,
    head_from_state,
    load_served,
    log_served,
)
from streamrec.schemas import Event
from streamrec.store import connect
from tests.conftest import isolated_settings

T0 = 1_700_000_000_000
COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _features() -> ReplayFeatures:
    f = ReplayFeatures(
        {
            "a": {"title": "A", "category": "shoes", "price": 50.0},
            "b": {"title": "B", "category": "shoes", "price": 55.0},
            "c": {"title": "C", "category": "hats", "price": 500.0},
        }
    )
    evs = [
        Event(event_id="i1", type="impression", user_id="u", ts=T0, request_id="r1", item_ids=["a", "b", "c"]),
        Event(event_id="v1", type="view", user_id="u", ts=T0 + 1, item_id="a"),
        Event(event_id="c1", type="click", user_id="u", ts=T0 + 2, item_id="b", request_id="r1"),
        Event(event_id="c2", type="click", user_id="w", ts=T0 + 3, item_id="b"),
    ]
    for e in evs:
        f.observe(e)
    return f


def test_assemble_uses_profile_counters_and_vectors():
    vecs = {
        "a": np.array([1, 0, 0], np.float32),
        "b": np.array([0.9, 0.1, 0], np.float32),
        "c": np.array([0, 0, 1], np.float32),
    }
    X = FeatureAssembler(_features(), vecs.get).assemble(
        user_id="u",
        query_vec=np.array([0, 0, 2.0]),
        item_ids=["b", "c", "zzz"],
        retrieval_scores=np.array([0.5, 0.4, 0.1]),
        now_ms=T0 + 10,
    )
    assert X.shape == (3, N_FEATURES) and X.dtype == np.float32
    b, c, unknown = X
    assert b[COL["user_seen_item"]] == 1 and c[COL["user_seen_item"]] == 0
    assert b[COL["item_clicks_log"]] == pytest.approx(np.log1p(2), rel=1e-3)
    assert b[COL["item_ctr_smoothed"]] > c[COL["item_ctr_smoothed"]]
    assert c[COL["query_item_cos"]] == pytest.approx(1.0) and b[COL["query_item_cos"]] == pytest.approx(0.0)
    assert b[COL["user_item_cos"]] > c[COL["user_item_cos"]]
    assert b[COL["covisit_max_log"]] > 0  # b was clicked right after a was viewed
    assert b[COL["category_is_top"]] == 1 and c[COL["category_is_top"]] == 0
    assert b[COL["price_match"]] > c[COL["price_match"]]
    # an item nobody knows: no vector, no counters, no price — zeros and flags, never NaN
    assert unknown[COL["has_item_vec"]] == 0 and unknown[COL["has_price"]] == 0
    assert unknown[COL["retrieval_score"]] == pytest.approx(0.1)
    assert np.isfinite(X).all()


def test_assemble_degrades_without_user_query_or_vectors():
    X = FeatureAssembler(_features(), lambda _i: None).assemble(
        user_id=None, query_vec=None, item_ids=["a", "c"], retrieval_scores=None
    )
    assert X.shape == (2, N_FEATURES) and np.isfinite(X).all()
    for name in ("has_query_vec", "has_user_vec", "has_item_vec", "user_history_log", "category_affinity"):
        assert (X[:, COL[name]] == 0).all(), name
    assert FeatureAssembler(_features(), lambda _i: None).assemble(
        user_id="u", query_vec=None, item_ids=[], retrieval_scores=np.zeros(0)
    ).shape == (0, N_FEATURES)


def test_query_features_fill_their_columns_and_flag_else_zero():
    fa = FeatureAssembler(_features(), lambda _i: None)
    F = np.arange(2 * len(QUERY_FEATURE_NAMES), dtype=np.float32).reshape(2, -1)
    X = fa.assemble(user_id=None, query_vec=None, item_ids=["a", "b"], retrieval_scores=None, query_features=F)
    assert (X[:, [COL[n] for n in QUERY_FEATURE_NAMES]] == F).all() and (X[:, COL["has_query_features"]] == 1).all()
    X = fa.assemble(user_id=None, query_vec=None, item_ids=["a", "b"], retrieval_scores=None)
    assert (X[:, [COL[n] for n in QUERY_FEATURE_NAMES + ["has_query_features"]]] == 0).all()
    with pytest.raises(ValueError, match="query_features"):
        fa.assemble(user_id=None, query_vec=None, item_ids=["a"], retrieval_scores=None, query_features=F)


def test_assemble_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="retrieval_scores"):
        FeatureAssembler(_features(), lambda _i: None).assemble(
            user_id="u", query_vec=None, item_ids=["a", "b"], retrieval_scores=np.zeros(3)
        )


def test_head_predicts_probabilities_explains_and_round_trips():
    torch.manual_seed(0)
    head = RankingHead()
    with torch.no_grad():
        head.click_wide.weight[0, COL["query_item_cos"]] = 2.0
    X = np.zeros((2, N_FEATURES), np.float32)
    X[0, COL["query_item_cos"]] = 1.0
    pc, pb = head.predict(X)
    assert pc.shape == pb.shape == (2,) and pc[0] > pc[1] and ((0 < pc) & (pc < 1)).all()
    reasons = head.explain(X)
    assert reasons[0][0] == "query_item_cos" and "query_item_cos" not in reasons[1]
    clone = head_from_state(head.config(), head.state_dict())
    np.testing.assert_allclose(clone.predict(X)[0], pc)
    with pytest.raises(ValueError, match="feature matrix"):
        head.predict(np.zeros((2, N_FEATURES + 1), np.float32))


def test_served_rows_round_trip_in_redis(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(kafka_broker, redis_server, tmp_path)
    r = connect(s)
    X = np.arange(2 * N_FEATURES, dtype=np.float32).reshape(2, N_FEATURES)
    log_served(r, s.redis.prefix, "req-1", ["x", "y"], X, ttl_s=60)
    got = load_served(r, s.redis.prefix, "req-1")
    assert set(got) == {"x", "y"}
    np.testing.assert_array_equal(got["y"], X[1])
    assert 0 < r.pttl(f"{s.redis.prefix}served:req-1") <= 60_000
    assert load_served(r, s.redis.prefix, "missing") is None
    r.hset(f"{s.redis.prefix}served:old", mapping={"schema": "other", "items": "[]", "X": ""})
    assert load_served(r, s.redis.prefix, "old") is None  # another feature schema: recompute instead
    with pytest.raises(ValueError):
        log_served(r, s.redis.prefix, "req-2", ["x"], X, ttl_s=60)
