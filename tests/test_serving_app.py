"""The HTTP layer alone (fake engine, fake producer): readiness as a dependency, request metrics as
a middleware, publishing confirmed by the broker and run off the event loop."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import RecordMetadata

from serving import metrics
from serving.app import create_app
from serving.catalog.filters import Filter
from streamrec.schemas import ResultList
from streamrec.settings import Settings


class FakeEngine:
    def __init__(self, ready: bool = True):
        self.is_ready = ready
        self.calls: list[tuple] = []

    def ready(self) -> bool:
        return self.is_ready

    def status(self) -> dict:
        return {"index_items": 3 if self.is_ready else 0, "index_version": 1}

    def _result(self, variant: str = "full") -> ResultList:
        return ResultList(request_id="r", items=[], model_version=1, index_version=1, variant=variant)

    def search(self, q, user_id, k, variant="full", impression=True, filters=None, facets=(), **paging):
        self.calls.append(("search", variant, impression))
        self.search_options = {"filters": filters, "facets": facets, **paging}
        return self._result(variant)

    def recommend(self, user_id, k, variant="full", impression=True, **options):
        self.calls.append(("recommend", variant, impression))
        self.recommend_options = {"variant": variant, **options}
        return self._result(variant)

    def similar(self, item_id, k, impression=True, filters=None):
        self.calls.append(("similar", impression))
        return None if item_id == "missing" else self._result()


class Future:
    def __init__(self, md=None, error=None):
        self.md, self.error = md, error

    def get(self, timeout=None):
        if self.error:
            raise self.error
        return self.md


class FakeProducer:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.sent: list[tuple] = []
        self.threads: set[str] = set()

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value))
        self.threads.add(threading.current_thread().name)
        if self.fail:
            return Future(error=KafkaTimeoutError("no ack"))
        return Future(RecordMetadata(topic, 0, None, len(self.sent) - 1, 0, None, 0, 0, 0))

    def flush(self, timeout=None):
        pass


def _client(engine=None, producer=None) -> tuple[TestClient, FakeProducer]:
    producer = producer or FakeProducer()
    # a loopback client: with no producer key configured, writes are accepted from loopback only
    app = create_app(Settings(), engine or FakeEngine(), producer)
    return TestClient(app, client=("127.0.0.1", 50000)), producer


def _count(endpoint: str, status: str) -> float:
    return metrics.REQUESTS.labels(endpoint, status)._value.get()


def test_query_routes_answer_503_until_ready_and_are_counted_by_route_and_status():
    client, _ = _client(FakeEngine(ready=False))
    before = _count("search", "503")
    r = client.get("/search", params={"q": "ink"})
    assert r.status_code == 503 and r.json()["detail"]["error"] == "not ready"
    assert _count("search", "503") == before + 1
    assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200


def test_query_routes_when_ready():
    client, _ = _client()
    ok, missing = _count("similar", "200"), _count("similar", "404")
    assert client.get("/search", params={"q": "ink"}).status_code == 200
    assert client.get("/search", params={"q": "  "}).status_code == 422
    assert client.get("/recommend", params={"user_id": "u"}).status_code == 200
    assert client.get("/similar/a").status_code == 200
    assert client.get("/similar/missing").status_code == 404
    assert (_count("similar", "200"), _count("similar", "404")) == (ok + 1, missing + 1)


def test_search_variants_and_impression_flag_reach_the_engine():
    engine = FakeEngine()
    client, _ = _client(engine)
    r = client.get("/search", params={"q": "ink"})
    assert r.json()["variant"] == "full" and engine.calls[-1] == ("search", "full", True)
    for variant in ("bm25", "dense", "rrf", "fused", "full"):
        r = client.get("/search", params={"q": "ink", "variant": variant, "impression": "false"})
        assert r.status_code == 200 and r.json()["variant"] == variant
        assert engine.calls[-1] == ("search", variant, False)
    assert client.get("/search", params={"q": "ink", "variant": "bogus"}).status_code == 422


def test_filters_and_facets_reach_the_engine_and_malformed_ones_are_refused():
    engine = FakeEngine()
    client, _ = _client(engine)
    params = {
        "q": "drill",
        "category": "Tools >Power Tools",
        "brand": ["Bosch", "Makita"],
        "price_min": "10",
        "price_max": "99.5",
        "availability": "any",
        "attr": ["volts:12..18", "colour:blue"],
        "facets": ["brand,price", "attr.volts"],
    }
    assert client.get("/search", params=params).status_code == 200
    f = engine.search_options["filters"]
    assert (f.category, f.brand, f.price_min, f.price_max, f.availability) == (
        "Tools > Power Tools",
        ("Bosch", "Makita"),
        10.0,
        99.5,
        "any",
    )
    assert [(c.name, c.value, c.lo, c.hi) for c in f.attributes] == [
        ("volts", None, 12.0, 18.0),
        ("colour", "blue", None, None),
    ]
    assert engine.search_options["facets"] == ["brand", "price", "attr.volts"]
    for bad, why in [
        ({"attr": "volts"}, "should match pattern"),
        ({"price_min": "-1"}, "greater than or equal"),
        ({"facets": "colour"}, "should match pattern"),
        ({"availability": "sometimes"}, "in_stock"),
    ]:
        r = client.get("/search", params={"q": "drill", **bad})
        assert r.status_code == 422 and why in json.dumps(r.json()), (bad, r.json())
    assert client.get("/similar/a", params={"brand": "Bosch"}).status_code == 200
    assert client.get("/recommend", params={"user_id": "u", "attr": "x"}).status_code == 422


def test_recommend_and_similar_take_the_impression_flag():
    engine = FakeEngine()
    client, _ = _client(engine)
    assert client.get("/recommend", params={"user_id": "u", "impression": "false"}).status_code == 200
    assert engine.calls[-1] == ("recommend", "full", False)
    assert client.get("/recommend", params={"user_id": "u", "variant": "full"}).json()["variant"] == "full"
    assert client.get("/recommend", params={"user_id": "u", "variant": "bm25"}).status_code == 422
    assert client.get("/similar/a", params={"impression": "false"}).status_code == 200
    assert engine.calls[-1] == ("similar", False)


def test_recommend_passes_variant_and_repeat_policy():
    engine = FakeEngine()
    client, _ = _client(engine)
    assert client.get("/recommend", params={"user_id": "u"}).status_code == 200
    assert engine.recommend_options == {"variant": "full", "exclude_seen": None, "filters": Filter()}
    assert (
        client.get("/recommend", params={"user_id": "u", "variant": "stan", "exclude_seen": "true"}).status_code == 200
    )
    assert engine.recommend_options == {"variant": "stan", "exclude_seen": True, "filters": Filter()}
    assert client.get("/recommend", params={"user_id": "u", "variant": "bogus"}).status_code == 422


def test_post_events_publishes_valid_objects_off_the_event_loop():
    client, producer = _client()
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}
    r = client.post("/events", json=[good, {"user_id": "u2"}])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1 and [x["index"] for x in body["rejected"]] == [1]
    assert [(t, k) for t, k, _ in producer.sent] == [(Settings().topic.events, "u1")]
    assert producer.threads and all("worker" in name.lower() for name in producer.threads), producer.threads
    assert client.post("/events", content=b"{not json").status_code == 400


def test_unacknowledged_publish_is_503_and_counted_failed():
    client, _ = _client(producer=FakeProducer(fail=True))
    topic = Settings().topic.events
    before = metrics.PUBLISHED.labels(topic, "failed")._value.get()
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}
    r = client.post("/events", json=good)
    assert r.status_code == 503 and r.json()["detail"].startswith("broker did not acknowledge: KafkaTimeoutError")
    assert metrics.PUBLISHED.labels(topic, "failed")._value.get() == before + 1


@pytest.mark.parametrize("path", ["/events", "/catalog"])
def test_oversized_batches_are_413(path):
    client, _ = _client()
    assert client.post(path, json=[{}] * 1001).status_code == 413
