"""The Python client (``streamrec.client``): against the real app and broker, reads parse and
batches publish with their indexes kept; against a scripted server, a refused write is resent
with the same event_ids after the Retry-After it named, and a shed read is reported at once."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from streamrec import bus
from streamrec.client import ApiError, Client, Overloaded
from tests.conftest import isolated_settings
from tests.live_app import TITLES, build_app, serve
from tests.topics import events_on_topic

TS = 1_700_000_000_000


def test_reads_and_batched_writes_through_the_real_app(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state")
    producer = bus.make_producer(s, max_block_ms=5_000)
    try:
        with serve(build_app(s, producer)) as base, Client(base) as api:
            page = api.search("ballpoint pen", k=2, impression=False)
            assert page.items and page.items[0].item_id == "pen" and len(page.items) <= 2
            assert api.similar("pen", k=3).items[0].item_id in TITLES
            narrowed = api.search("pen", k=3, impression=False, brand=["Nobody"], facets="brand")
            assert narrowed.items == [] and narrowed.facets is not None
            assert api.suggest("pe").suggestions == []  # no search has led to a choice yet
            assert api.bought_together(["pen", "ink"], k=3).items == []  # no basket or visit yet
            with pytest.raises(ApiError) as refused:
                api.similar("no-such-item")
            assert refused.value.status == 404 and "no-such-item" in str(refused.value.detail)
            events = [{"type": "view", "user_id": f"u{j}", "item_id": "pen", "ts": TS + j} for j in range(2_500)]
            events[1_500]["type"] = "teleport"  # one invalid object in the second batch
            result = api.send_events(events)
            assert result.accepted == 2_499
            assert [r.index for r in result.rejected] == [1_500] and "type" in result.rejected[0].error
            on_topic = topic_user_ids(s, expected=2_499)
            assert len(on_topic) == 2_499 and "u1500" not in on_topic
    finally:
        producer.close(timeout=5)


def topic_user_ids(s, expected: int) -> set[str]:
    """Users of the view events on the topic (the impressions of the reads are there too)."""

    def users(events) -> set[str]:
        return {e.user_id for e in events if e.type == "view"}

    return users(events_on_topic(s, lambda es: len(users(es)) >= expected, "the events on the topic"))


class Scripted:
    """A server answering from a script of (status, headers) and recording each request's body."""

    def __init__(self, *answers: tuple[int, dict[str, str]]):
        self.answers = list(answers)
        self.bodies: list[list[dict]] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        if request.method == "POST":
            self.bodies.append(json.loads(request.content))
        status, headers = self.answers.pop(0)
        if status == 202:
            return httpx.Response(202, json={"accepted": len(self.bodies[-1]), "rejected": []})
        if status == 200:
            return httpx.Response(200, json={"request_id": "r", "items": [], "model_version": 1, "index_version": 1})
        return httpx.Response(status, json={"detail": f"scripted {status}"}, headers=headers)


def test_a_refused_write_is_resent_with_the_same_event_ids_after_its_retry_after():
    server = Scripted((503, {"Retry-After": "1"}), (429, {"Retry-After": "0"}), (202, {}))
    with Client("http://streamrec.test", transport=httpx.MockTransport(server)) as api:
        result = api.send_events([{"type": "view", "user_id": "u", "item_id": "i", "ts": TS}] * 3)
    assert result.accepted == 3 and len(server.bodies) == 3
    ids = [[e["event_id"] for e in body] for body in server.bodies]
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 3  # one id per event, kept across attempts
    assert server.times[1] - server.times[0] >= 1.0  # waited the Retry-After it was given


def test_a_write_gives_up_after_its_attempts_and_says_why():
    server = Scripted(*[(503, {"Retry-After": "0"})] * 3)
    with Client("http://streamrec.test", write_attempts=3, transport=httpx.MockTransport(server)) as api:
        with pytest.raises(Overloaded) as overloaded:
            api.send_events([{"event_id": "e1", "type": "view", "user_id": "u", "item_id": "i", "ts": TS}])
    assert overloaded.value.status == 503 and len(server.bodies) == 3


def test_a_shed_read_is_reported_at_once_unless_retries_are_asked_for():
    server = Scripted((503, {"Retry-After": "2"}))
    with Client("http://streamrec.test", transport=httpx.MockTransport(server)) as api:
        with pytest.raises(Overloaded) as shed:
            api.search("drill")
    assert shed.value.retry_after_s == 2 and len(server.times) == 1
    server = Scripted((503, {"Retry-After": "0"}), (200, {}))
    with Client("http://streamrec.test", read_attempts=2, transport=httpx.MockTransport(server)) as api:
        assert api.search("drill").request_id == "r"
    assert len(server.times) == 2
