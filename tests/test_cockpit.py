"""The cockpit's bounded history (serving/cockpit.py) on real Redis and Kafka, and /dashboard/data."""

from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient

from learner.drift import DriftMonitor, ks_critical
from serving import metrics
from serving.app import create_app
from serving.cockpit import HISTORY, Sampler, history, history_point, quantile, record_action
from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.ops import add_learner_stats
from streamrec.ranking import FEATURE_NAMES, RankingHead
from streamrec.settings import DriftSettings, Settings
from streamrec.store import connect
from streamrec.vector_index.metrics import EVENT_TO_SEARCHABLE
from tests.conftest import isolated_settings
from tests.test_serving_app import FakeEngine, FakeProducer


def test_quantile_from_cumulative_buckets():
    buckets = [(0.01, 50.0), (0.1, 99.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == 0.01
    assert 0.01 < quantile(buckets, 0.9) < 0.1  # type: ignore[operator]
    assert quantile([], 0.5) is None


def test_sampler_appends_rates_to_a_capped_redis_list(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state", cockpit={"history_points": 3})
    r = connect(s)
    store = ModelStore.from_settings(s)
    store.publish(RankingHead(), {"reason": "initial", "metrics": {"click_auc": 0.71, "click_logloss": 0.3}})
    status = FakeEngine().status
    sampler = Sampler(s, status, r, follower=lambda: {0: 0})
    watched = list(s.drift.features)
    add_learner_stats(r, s.redis.prefix, {"events:click": 1, "items_shown": 10}, dict.fromkeys(watched), 0.109)
    assert sampler.sample() is None  # the first call is the baseline
    distances = {f: 0.0123 * (i + 1) for i, f in enumerate(watched)}
    add_learner_stats(r, s.redis.prefix, {"events:click": 3, "events:purchase": 1, "items_shown": 40}, distances, 0.109)
    producer = bus.make_producer(s)
    bus.publish_confirmed(producer, [(s.topic.events, f"u{i}", b"{}") for i in range(20)], timeout_s=10)
    producer.close()
    for part in range(s.topic.partitions):  # what the consumers applied
        r.set(f"{s.redis.prefix}off:{s.consumers.group}:{s.topic.events}:{part}", 5)
    r.hset(f"{s.redis.prefix}dlq:counts", "bad_json", 3)
    metrics.LATENCY.labels("search").observe(0.02)
    EVENT_TO_SEARCHABLE.observe(0.7)
    point = sampler.sample()
    assert point is not None
    assert point["model_version"] == 1 and point["auc"] == 0.71 and point["logloss"] == 0.3
    assert point["in_per_s"] > 0 and point["out_per_s"] > 0 and point["dlq_per_s"] > 0
    assert point["lag"] >= 0 and point["index_items"] == 3  # (Tansu's end offsets trail: lag clamped at 0)
    assert point["latency"]["search"]["p50_ms"] > 0
    # the learner's stats: rates per item shown over the interval, distances as it wrote them
    assert point["click_rate"] == 3 / 40 and point["purchase_rate"] == 1 / 40
    assert point["feature_ks"] == distances and point["feature_ks_threshold"] == 0.109
    # lag per consuming service (Tansu's end offsets trail, so only bounds are certain)
    assert set(point["lags"]) == {"consumers", "index-updater", "learner", "serving-vectors"}
    assert all(v is not None and v >= 0 for v in point["lags"].values()), point["lags"]
    assert metrics.CONSUMER_LAG.labels("learner")._value.get() == point["lags"]["learner"]
    assert 0.5 <= point["searchable_p50_s"] <= 1 and 0.5 <= point["searchable_p99_s"] <= 1
    size = len(json.dumps(point, separators=(",", ":")))
    assert size < 1200, size  # the README's bound: 2,880 points under 3.5 MB
    for _ in range(5):
        sampler.append(point)
    assert r.llen(s.redis.prefix + HISTORY) == 3 and history(s, r)[-1]["auc"] == 0.71
    sampler.stop()


def test_history_point_stays_under_1200_bytes_with_every_route_and_five_watched_features():
    """The README's bound (2,880 points, under 3.5 MB) for the largest point the sampler makes:
    large counts and rates, long floats in the model's metrics, the default five drift-watched
    features and latency on every API route (the point is built by the sampler's own function)."""
    routes = ["search", "recommend", "similar", "post_events", "post_catalog", "promote", "rollback"]
    buckets = [(le, 0.0) for le in (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))]

    def counters(t: float, n: float) -> dict:
        grow = [(le, n * (k + 1) / len(buckets)) for k, (le, _) in enumerate(buckets)]
        lags = {"consumers": 12345678, "index-updater": 12345678, "learner": 12345678, "serving-vectors": 12345678}
        learner = {
            "counts": {"events:click": int(n * 7), "events:purchase": int(n * 3), "items_shown": int(n * 97)},
            "feature_ks": {f: 0.123456789 for f in Settings().drift.features},
            "feature_ks_threshold": ks_critical(Settings().drift.feature_window, Settings().drift.feature_window),
        }
        return {
            "time": t,
            "applied": n * 1000,
            "end": n * 1234,
            "lag": 12345678,
            "lags": lags,
            "api_in": n * 1111,
            "dlq": n * 3,
            "quarantine": n * 7,
            "learner": learner,
            "latency": {route: grow for route in routes},
            "fresh": grow,
        }

    metrics_ = {k: 0.123456789123 for k in ("click_auc", "click_logloss", "challenger_click_logloss", "purchase_auc")}
    point = history_point(
        counters(1_700_000_003.123456, 9_876_543.0),
        counters(1_700_000_000.0, 1.0),
        {"model_version": 1234567, "index_items": 12345678},
        1234567,
        metrics_ | {"examples": 123456789012},
    )
    assert point is not None and set(point["latency"]) == set(routes) and len(point["feature_ks"]) == 5
    assert len(json.dumps(point, separators=(",", ":"))) < 1200, json.dumps(point)


def test_feature_distance_is_small_when_stationary_and_crosses_the_ks_line_after_a_shift():
    rng = np.random.default_rng(0)
    names = ["query_item_cos", "price_log"]
    monitor = DriftMonitor(DriftSettings(features=names, warmup=10**9, item_delta=0, rank_delta=0))
    cols = [FEATURE_NAMES.index(f) for f in names]

    def feed(shift: float, n: int = 2 * monitor.feature_window) -> None:
        for _ in range(n // 100):
            X = rng.normal(size=(100, len(FEATURE_NAMES))).astype(np.float32)
            X[:, cols[1]] += shift  # only price_log moves
            z = np.zeros(100)
            monitor.update(z, z, np.zeros(100, bool), X, np.zeros(100, np.int64))

    assert monitor.feature_distances() == {f: None for f in names}  # windows not full yet
    feed(0.0)
    line = ks_critical(monitor.feature_window, monitor.feature_window)
    stationary = monitor.feature_distances()
    assert all(d is not None and d < line for d in stationary.values()), stationary
    feed(1.0)
    shifted = monitor.feature_distances()
    assert shifted["price_log"] > line > shifted["query_item_cos"], shifted  # type: ignore[operator]
    monitor.reset()  # a new champion: a new reference
    assert monitor.feature_distances() == {f: None for f in names}


def test_dashboard_data_has_history_models_actions_and_drift(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state")
    store = ModelStore.from_settings(s)
    store.publish(RankingHead(), {"reason": "initial", "metrics": {"click_auc": 0.7}})
    r = connect(s)
    r.rpush(s.redis.prefix + HISTORY, json.dumps({"t": 1, "auc": 0.7}))
    record_action(s, {"action": "rollback", "from": 2, "to": 1})
    producer = bus.make_producer(s)
    drift = {"detector": "adwin_loss", "what": "prequential_click_loss", "detected_ms": 1_700_000_000_000}
    bus.publish_confirmed(producer, [(s.topic.drift, "adwin_loss", json.dumps(drift).encode())], timeout_s=10)
    producer.close()
    client = TestClient(create_app(s, FakeEngine(), FakeProducer()))
    data = client.get("/dashboard/data").json()
    assert data["history"] == [{"t": 1, "auc": 0.7}]
    assert data["models"][0]["version"] == 1 and data["models"][0]["created"].endswith("UTC")
    assert data["actions"][0]["action"] == "rollback"
    assert data["drift"][0]["detector"] == "adwin_loss" and data["drift"][0]["time"] == "2023-11-14 22:13:20 UTC"
    page = client.get("/dashboard").text
    assert "Drift events" in page and "/dashboard/data" in page
