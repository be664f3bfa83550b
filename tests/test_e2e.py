"""The whole loop, end to end, on real parts: embedded Tansu broker, a real Redis, the bundled
MiniLM encoder, and the four services as separate processes talking only through Kafka, Redis and
published snapshots. Requests go over HTTP, as the storefront's would."""

from __future__ import annotations

import base64
import itertools
import json
import time
import uuid

import httpx
import pytest
from kafka import KafkaProducer

from launcher.embedded import free_port
from launcher.stack import LocalStack
from streamrec import bus
from streamrec.datasets import amazon18
from streamrec.schemas import DeadLetter
from tests.conftest import isolated_settings
from tests.polling import clicks_learned, wait_for

CATALOG_SIZE = 300
pytestmark = pytest.mark.slow


def _now() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def stack(kafka_broker, redis_server, tmp_path_factory, data_dir):
    s = isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path_factory.mktemp("e2e"),
        http={"port": free_port()},
        learner={"publish_every_updates": 5, "publish_every_s": 0.5, "label_window_s": 2.0},
    )
    with LocalStack(s, metrics_base_port=0) as running:
        catalog = list(itertools.islice(amazon18.catalog(data_dir), CATALOG_SIZE))
        with httpx.Client(base_url=running.base_url, timeout=10) as http:
            wait_for(lambda: _posted(http, catalog), timeout_s=120)
        running.wait_ready(timeout_s=240, min_items=CATALOG_SIZE)
        yield running


def _posted(http: httpx.Client, catalog) -> bool:
    try:
        body = [json.loads(op.model_dump_json(exclude_none=True)) for op in catalog]
        return http.post("/catalog", json=body).status_code == 202
    except httpx.HTTPError:
        return False  # serving still starting


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        yield client


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [it["item_id"] for it in response.json()["items"]]


def test_new_catalog_item_becomes_searchable_and_deletes_remove_it(http):
    item = {
        "op": "upsert",
        "item_id": "e2e-telescope",
        "ts": _now(),
        "title": "Refracting brass telescope for amateur astronomy",
        "category": "Optics",
    }
    assert http.post("/catalog", json=item).json() == {"accepted": 1, "rejected": []}
    found = wait_for(lambda: "e2e-telescope" in _ids(http.get("/search", params={"q": "telescope astronomy", "k": 5})))
    assert found
    top = http.get("/search", params={"q": "telescope astronomy", "k": 5}).json()
    hit = next(it for it in top["items"] if it["item_id"] == "e2e-telescope")
    assert hit["title"].startswith("Refracting brass telescope") and hit["reasons"]
    assert http.get("/similar/e2e-telescope").status_code == 200

    http.post("/catalog", json={"op": "delete", "item_id": "e2e-telescope", "ts": _now()})
    wait_for(lambda: http.get("/similar/e2e-telescope").status_code == 404)
    assert "e2e-telescope" not in _ids(http.get("/search", params={"q": "telescope astronomy", "k": 20}))


def test_clicks_change_that_users_recommendations(http):
    user = f"shopper-{uuid.uuid4().hex[:6]}"
    before = _ids(http.get("/recommend", params={"user_id": user, "k": 10}))
    ink = _ids(http.get("/search", params={"q": "ink cartridge", "k": 3}))
    events = [{"event_id": uuid.uuid4().hex, "type": "click", "user_id": user, "item_id": i, "ts": _now()} for i in ink]
    assert http.post("/events", json=events).json()["accepted"] == 3

    def personalised():
        r = http.get("/recommend", params={"user_id": user, "k": 10})
        ids = _ids(r)
        return r.json() if ids and ids != before else None

    after = wait_for(personalised)
    reasons = " ".join(r for it in after["items"] for r in it["reasons"])
    assert "you viewed" in reasons or "together with" in reasons
    # repeats are allowed by default (often the next click); per request they can be excluded
    fresh = http.get("/recommend", params={"user_id": user, "k": 10, "exclude_seen": "true"}).json()
    assert fresh["items"] and not set(ink) & {it["item_id"] for it in fresh["items"]}


def test_malformed_events_land_in_the_dlq_with_reason_and_original_bytes(stack, http):
    s = stack.settings
    # Through the API: rejected synchronously with the reason, valid siblings still accepted.
    answer = http.post(
        "/events",
        json=[
            {"event_id": "ok-1", "type": "view", "user_id": "u", "item_id": "1", "ts": _now()},
            {"event_id": "bad-1", "type": "click", "user_id": "u", "ts": _now()},
        ],
    ).json()
    assert answer["accepted"] == 1 and answer["rejected"][0]["index"] == 1
    assert "item_id" in answer["rejected"][0]["error"]
    # Straight onto the topic, as a buggy producer would: dead-lettered by the consumers.
    bad = [b"\xff\xfenot utf8", b'{"event_id": "x", "type": "teleport"}', b"{truncated"]
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap)
    for raw in bad:
        producer.send(s.topic.events, raw)
    producer.flush()
    consumer = bus.make_consumer(s, group_id=None)
    consumer.assign(bus.all_partitions(consumer, s.topic.dlq))
    letters: dict[bytes, DeadLetter] = {}

    def collect():
        for records in consumer.poll(500).values():
            for rec in records:
                dl = DeadLetter.model_validate_json(rec.value)
                letters[dl.original_bytes()] = dl
        return all(raw in letters for raw in bad)

    wait_for(collect)
    consumer.close()
    assert letters[bad[0]].reason == "not_utf8"
    assert letters[bad[1]].reason == "unknown_type"
    assert letters[bad[2]].reason == "not_json"
    assert base64.b64decode(letters[bad[2]].payload_b64) == bad[2]


def test_clicks_reach_the_learner_and_raise_the_served_model_version(http):
    start = http.get("/healthz").json()["model_version"]
    learned_before = clicks_learned(http)
    user = f"learner-{uuid.uuid4().hex[:6]}"
    clicks = 0
    for query in ("pen", "paper", "binder", "tape", "stapler", "labels", "ink", "envelope"):
        result = http.get("/search", params={"q": query, "user_id": user, "k": 10}).json()
        shown = [it["item_id"] for it in result["items"]]
        if not shown:
            continue
        r = http.post(
            "/events",
            json={
                "event_id": uuid.uuid4().hex,
                "type": "click",
                "user_id": user,
                "item_id": shown[0],
                "request_id": result["request_id"],
                "position": 0,
                "ts": _now(),
            },
        )
        assert r.status_code == 202, r.text
        clicks += 1
    assert clicks >= 4
    # every click joined its impression and was learned from: a lost click fails here, even though
    # the impressions alone could move the version
    wait_for(lambda: clicks_learned(http) >= learned_before + clicks, f"{clicks} clicks learned", timeout_s=60)
    # and serving hot-swaps to the version that learned them (it polls the model store)
    wait_for(lambda: http.get("/healthz").json()["model_version"] > start, "serving on a newer version", timeout_s=30)
    assert http.get("/search", params={"q": "pen", "k": 3}).json()["model_version"] > start


def test_api_rejects_bad_parameters_clearly(http):
    assert http.get("/search", params={"q": "pen", "k": 0}).status_code == 422
    assert http.get("/search", params={"q": "pen", "k": 101}).status_code == 422
    assert http.get("/search").status_code == 422
    assert http.get("/recommend").status_code == 422
    assert http.get("/similar/no-such-item").status_code == 404
    r = http.post("/events", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.text
    assert "streamrec_serving_requests_total" in http.get("/metrics").text


def test_a_stock_patch_hides_a_product_everywhere_until_it_is_restocked(http):
    hits = http.get("/search", params={"q": "ink cartridge", "k": 3, "impression": "false"}).json()["items"]
    item = hits[0]["item_id"]
    lists = {
        "search": lambda: _ids(http.get("/search", params={"q": "ink cartridge", "k": 20, "impression": "false"})),
        "similar": lambda: _ids(http.get(f"/similar/{hits[1]['item_id']}", params={"k": 20, "impression": "false"})),
    }
    assert all(item in shown() for shown in lists.values())
    patch = {"op": "patch", "item_id": item, "ts": _now(), "stock": 0, "price": 12.5}
    assert http.post("/catalog", json=patch).json() == {"accepted": 1, "rejected": []}
    assert wait_for(lambda: all(item not in shown() for shown in lists.values()))
    anything = http.get("/search", params={"q": "ink cartridge", "k": 20, "availability": "any", "impression": "false"})
    shown = next(it for it in anything.json()["items"] if it["item_id"] == item)
    assert shown["in_stock"] is False and shown["price"] == 12.5 and shown["title"] == hits[0]["title"]
    http.post("/catalog", json={"op": "patch", "item_id": item, "ts": _now(), "stock": 7})
    assert wait_for(lambda: all(item in shown() for shown in lists.values()))


def test_filters_and_facets_through_the_api(http):
    params = {"q": "ink cartridge", "k": 20, "impression": "false", "facets": "brand,availability"}
    everything = http.get("/search", params=params).json()
    brands = everything["facets"]["counts"]["brand"]["values"]
    assert brands and everything["facets"]["matched"] > 0
    brand = brands[0]["value"]
    narrowed = http.get("/search", params={**params, "brand": brand}).json()
    assert narrowed["items"] and all(it["brand"] == brand for it in narrowed["items"])
    # the brand facet still counts the other brands (disjunctive); the matched count is the brand's
    assert narrowed["facets"]["counts"]["brand"]["values"] == brands
    assert narrowed["facets"]["matched"] == brands[0]["count"]
    assert len(narrowed["items"]) >= min(brands[0]["count"], 20)  # never fewer than the count (deeper: more)
    bad = http.get("/search", params={"q": "ink", "attr": "no-colon"})
    assert bad.status_code == 422 and "attr" in bad.text


def test_searches_that_led_to_a_choice_are_suggested_within_seconds(http):
    word = f"zq{uuid.uuid4().hex[:5]}"  # a query nobody made before
    query = f"Refracting {word} telescope"
    item = _ids(http.get("/search", params={"q": "ink cartridge", "k": 1, "impression": "false"}))[0]
    user = f"searcher-{uuid.uuid4().hex[:6]}"
    view = {
        "event_id": uuid.uuid4().hex,
        "type": "view",
        "user_id": user,
        "item_id": item,
        "ts": _now(),
        "query": "zzview",
    }
    click = {
        "event_id": uuid.uuid4().hex,
        "type": "click",
        "user_id": user,
        "item_id": item,
        "ts": _now(),
        "query": query,
    }
    assert http.post("/events", json=[view, click]).json()["accepted"] == 2

    def suggested() -> list[str]:
        return [s["text"] for s in http.get("/suggest", params={"q": "refracting " + word[:3]}).json()["suggestions"]]

    started = time.monotonic()
    assert wait_for(lambda: query.lower() in suggested(), timeout_s=15)
    assert time.monotonic() - started < 10
    typo = http.get("/suggest", params={"q": f"refracing {word}"}).json()  # a letter dropped
    assert query.lower() in [s["text"] for s in typo["suggestions"]] and typo["corrected"] == f"refracting {word}"
    assert http.get("/suggest", params={"q": "zzvi"}).json()["suggestions"] == []  # a view is no choice
