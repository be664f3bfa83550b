"""Backpressure of writes against a broker that stops acknowledging (its process paused with
SIGSTOP): past ``serving.publish_max_inflight`` requests, POST /events is answered 503 with
Retry-After at once, publishes nothing, and serving recovers by itself once the broker is back.
Reads past ``serving.max_inflight_reads`` are shed the same way, without reaching the engine."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from launcher.embedded import EmbeddedKafka
from serving.app import create_app
from streamrec import bus
from streamrec.settings import Settings
from tests.live_app import serve
from tests.polling import wait_for
from tests.prometheus_text import sample_sum
from tests.test_serving_app import FakeEngine, FakeProducer
from tests.topics import events_on_topic

TS = 1_700_000_000_000
# the publish timeout outlasts starting the flood's 40 threads on a loaded 2-core box, so no slot frees mid-flood
FLOOD, INFLIGHT, TIMEOUT_S = 40, 4, 5.0


def events(tag: str, n: int = 10) -> list[dict]:
    return [{"event_id": f"{tag}-{j}", "type": "view", "user_id": f"u{j}", "item_id": "i", "ts": TS} for j in range(n)]


def topic_event_ids(s: Settings, until: str) -> set[str]:
    """Every event_id on the events topic, read until ``until`` has been seen."""
    found = events_on_topic(s, lambda es: any(e.event_id == until for e in es), f"{until} on the events topic")
    return {e.event_id for e in found}


def test_a_flood_past_a_silent_broker_is_shed_at_once_and_publishes_nothing(tmp_path):
    with EmbeddedKafka(tmp_path / "tansu") as broker:
        bus.wait_for_broker(broker.bootstrap)
        tag = uuid.uuid4().hex[:8]
        s = Settings(
            state_dir=tmp_path / "state",
            kafka={"bootstrap": broker.bootstrap},
            topic={"events": f"bp{tag}.events"},
            serving={"publish_max_inflight": INFLIGHT, "publish_timeout_s": TIMEOUT_S},
        )
        bus.ensure_topics(s)
        producer = bus.make_producer(s, max_block_ms=int(TIMEOUT_S * 1000))
        with serve(create_app(s, FakeEngine(), producer)) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/events", json=events("warm")).status_code == 202  # metadata and connection up

            def flood(i: int) -> tuple[int, float, str, str | None, list[dict]]:
                body = events(f"flood{i}")
                started = time.monotonic()
                with httpx.Client(base_url=url, timeout=30) as own:
                    r = own.post("/events", json=body)
                return r.status_code, time.monotonic() - started, r.text, r.headers.get("retry-after"), body

            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(FLOOD) as pool:
                    answers = list(pool.map(flood, range(FLOOD)))
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)

            shed = [a for a in answers if "too many writes in flight" in a[2]]
            waited = [a for a in answers if a not in shed]
            assert {a[0] for a in answers} == {503}, [a[:3] for a in answers if a[0] != 503]
            assert all(a[3] is not None and int(a[3]) >= 1 for a in answers), "every 503 carries Retry-After"
            assert len(shed) >= FLOOD - INFLIGHT and len(waited) <= INFLIGHT
            # shed ones never wait on the broker: all answered before a publish could even time out
            assert max(a[1] for a in shed) < TIMEOUT_S, sorted(a[1] for a in shed)[-3:]
            assert all(a[1] < TIMEOUT_S + 3 for a in waited), [a[1] for a in waited]
            page = http.get("/metrics").text
            assert sample_sum(page, "streamrec_serving_publish_shed_total", topic=s.topic.events) == len(shed)

            # Recovery without a restart: the broker answers again, so does serving.
            recovered = wait_for(
                lambda: http.post("/events", json=events("after")).status_code == 202,
                what="a 202 once the broker is back",
                timeout_s=60,
                every_s=0.5,
            )
            assert recovered
            on_topic = topic_event_ids(s, until="after-0")
            assert {e["event_id"] for e in events("warm") + events("after")} <= on_topic
            shed_ids = {e["event_id"] for a in shed for e in a[4]}
            assert not shed_ids & on_topic, "a shed request published something"
            # A request that timed out (503 after TIMEOUT_S) was never acknowledged, but what it handed to
            # the producer may still land once the broker is back, in whole or in part: its retry is
            # deduplicated by event_id (README, "Duplicates"), so nothing is counted twice.
        producer.close(timeout=5)


class BlockingEngine(FakeEngine):
    """Each read holds its thread until ``release`` is set, so reads pile up in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def search(self, q, user_id, k, variant="full", impression=True, **options):
        self.entered.release()
        self.release.wait(30)
        return super().search(q, user_id, k, variant, impression, **options)


def test_reads_past_the_bound_are_shed_at_once_and_the_rest_are_answered(tmp_path):
    s = Settings(state_dir=tmp_path, serving={"max_inflight_reads": 2})
    engine = BlockingEngine()
    app = create_app(s, engine, FakeProducer())  # type: ignore[arg-type]
    with serve(app) as base, ThreadPoolExecutor(2) as pool, httpx.Client(base_url=base, timeout=30) as http:
        held = [pool.submit(http.get, "/search", params={"q": f"drill {j}"}) for j in range(2)]
        for _ in held:
            assert engine.entered.acquire(timeout=20), "a read never reached the engine"
        shed_before = sample_sum(http.get("/metrics").text, "streamrec_serving_read_shed_total", endpoint="search")
        started = time.monotonic()
        r = http.get("/search", params={"q": "one too many"})
        shed_in_s = time.monotonic() - started
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert "overloaded" in r.json()["detail"]
        assert shed_in_s < 1.0  # answered on the event loop while both reads still hold their threads
        assert http.get("/healthz").status_code == 200  # operations routes are never shed
        after = sample_sum(http.get("/metrics").text, "streamrec_serving_read_shed_total", endpoint="search")
        assert after == shed_before + 1
        assert len([c for c in engine.calls if c[0] == "search"]) == 0  # the shed read did no work
        engine.release.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert http.get("/search", params={"q": "room again"}).status_code == 200
