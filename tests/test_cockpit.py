"""The cockpit's bounded history (serving/cockpit.py) on real Redis and Kafka, and /dashboard/data."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from serving import metrics
from serving.app import create_app
from serving.cockpit import HISTORY, Sampler, history, quantile, record_action
from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.ranking import RankingHead
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
    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state", cockpit_history_points=3)
    r = connect(s)
    store = ModelStore.from_settings(s)
    store.publish(RankingHead(), {"reason": "initial", "metrics": {"click_auc": 0.71, "click_logloss": 0.3}})
    status = FakeEngine().status
    sampler = Sampler(s, status, r)
    assert sampler.sample() is None  # the first call is the baseline
    producer = bus.make_producer(s)
    bus.publish_confirmed(producer, [(s.topic_events, f"u{i}", b"{}") for i in range(20)], timeout_s=10)
    producer.close()
    for part in range(s.topic_partitions):  # what the consumers applied
        r.set(f"{s.redis_prefix}off:{s.consumers_group}:{s.topic_events}:{part}", 5)
    r.hset(f"{s.redis_prefix}dlq:counts", "bad_json", 3)
    metrics.LATENCY.labels("search").observe(0.02)
    EVENT_TO_SEARCHABLE.observe(0.7)
    point = sampler.sample()
    assert point is not None
    assert point["model_version"] == 1 and point["auc"] == 0.71 and point["logloss"] == 0.3
    assert point["in_per_s"] > 0 and point["out_per_s"] > 0 and point["dlq_per_s"] > 0
    assert point["lag"] >= 0 and point["index_items"] == 3  # (Tansu's end offsets trail: lag clamped at 0)
    assert point["latency"]["search"]["p50_ms"] > 0
    assert 0.5 <= point["searchable_p50_s"] <= 1 and 0.5 <= point["searchable_p99_s"] <= 1
    size = len(json.dumps(point, separators=(",", ":")))
    assert size < 1024, size  # the README's bound: 2,880 points under 3 MB
    for _ in range(5):
        sampler.append(point)
    assert r.llen(s.redis_prefix + HISTORY) == 3 and history(s, r)[-1]["auc"] == 0.71
    sampler.stop()


def test_dashboard_data_has_history_models_actions_and_drift(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state")
    store = ModelStore.from_settings(s)
    store.publish(RankingHead(), {"reason": "initial", "metrics": {"click_auc": 0.7}})
    r = connect(s)
    r.rpush(s.redis_prefix + HISTORY, json.dumps({"t": 1, "auc": 0.7}))
    record_action(s, {"action": "rollback", "from": 2, "to": 1})
    producer = bus.make_producer(s)
    drift = {"detector": "adwin_loss", "what": "prequential_click_loss", "detected_ms": 1_700_000_000_000}
    bus.publish_confirmed(producer, [(s.topic_drift, "adwin_loss", json.dumps(drift).encode())], timeout_s=10)
    producer.close()
    client = TestClient(create_app(s, FakeEngine(), FakeProducer()))
    data = client.get("/dashboard/data").json()
    assert data["history"] == [{"t": 1, "auc": 0.7}]
    assert data["models"][0]["version"] == 1 and data["models"][0]["created"].endswith("UTC")
    assert data["actions"][0]["action"] == "rollback"
    assert data["drift"][0]["detector"] == "adwin_loss" and data["drift"][0]["time"] == "2023-11-14 22:13:20 UTC"
    page = client.get("/dashboard").text
    assert "Drift events" in page and "/dashboard/data" in page
