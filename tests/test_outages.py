"""Outages with traffic flowing: Redis stopped, then the broker frozen, each until the storefront has
seen every route answer during it (at least ``OUTAGE_MIN_S``), and recovery awaited on the answers.

The stack runs on its own broker and a persistent Redis (both restarted or frozen here, so not the
session's shared ones). A storefront keeps posting events and reading results the whole time;
a writer that gets a 503 retries the same batch, as the README tells clients to. Afterwards:

* no answer was a 500 or slower than its stated timeout; reads during the Redis outage were
  degraded 200s (/search, /similar) or fast 503s with Retry-After (/recommend);
* writes during the broker freeze answered 503 (or 429) within the publish timeout;
* no service was restarted (same pids), and each recovered on its own: features match a reference
  built from every acknowledged event (none lost, none counted twice), and the learner publishes
  new versions from new labels.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from launcher.embedded import EmbeddedKafka, EmbeddedRedis, free_port
from launcher.stack import LocalStack
from streamrec import bus
from streamrec.datasets import amazon18
from streamrec.features import FeatureStore, ReplayFeatures
from streamrec.schemas import Event
from streamrec.settings import Settings
from streamrec.store import connect
from tests.polling import clicks_learned, wait_for

pytestmark = pytest.mark.slow

CATALOG_SIZE = 120
USERS = [f"shopper{k}" for k in range(40)]
OUTAGE_MIN_S = 6.0  # every retry loop (consumers, learner, producer) meets the outage at least once
PUBLISH_TIMEOUT_S = 3.0  # SERVING_PUBLISH_TIMEOUT_S of this stack, so a frozen broker's 503 comes soon
# The stated bounds: a read never waits longer than the Redis read timeout plus the request's own
# work; a write never longer than the publish timeout.
READ_BOUND_S = 4.0
WRITE_BOUND_S = PUBLISH_TIMEOUT_S + 2.0


@dataclass
class Answer:
    phase: str
    route: str
    status: int  # 0: no HTTP answer (connection error or client timeout)
    seconds: float
    degraded: bool = False
    retry_after: str | None = None
    settled: bool = True  # started over a second into its phase and ended in it (switches are not instant)


@dataclass
class Storefront:
    """Posts events and reads results until stopped; remembers every answer and every event the
    API acknowledged (a 503'd batch is retried, same event_ids, until it is)."""

    base_url: str
    items: list[str]
    phase: str = "warm-up"
    phase_since: float = field(default_factory=time.monotonic)
    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[Event] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    last_ts: int = 0
    last_item: dict[str, str] = field(default_factory=dict)

    def next_ts(self) -> int:
        self.last_ts = max(int(time.time() * 1000), self.last_ts + 1)
        return self.last_ts

    def enter(self, phase: str) -> None:
        self.phase, self.phase_since = phase, time.monotonic()

    def begin(self) -> tuple[float, str, float]:
        return time.monotonic(), self.phase, self.phase_since

    def note(self, route: str, begun: tuple[float, str, float], response: httpx.Response | None) -> None:
        """Record an answer under the phase it started in."""
        started, phase, since = begun
        degraded = False
        if response is not None and response.status_code == 200 and route != "events":
            degraded = bool(response.json().get("degraded"))
        self.answers.append(
            Answer(
                phase,
                route,
                response.status_code if response is not None else 0,
                time.monotonic() - started,
                degraded,
                response.headers.get("retry-after") if response is not None else None,
                started - since > 1.0 and self.phase == phase,
            )
        )

    def batch(self, rng: random.Random) -> list[Event]:
        """Five interactions of different shoppers and one impression, at shopper speed (the bot filter must not fire:
        the reference below has no bot rules), ts strictly increasing."""
        out = []
        for user in rng.sample(USERS, 5):
            kind = rng.choices(["view", "click", "add_to_cart", "purchase"], [6, 3, 1, 0.5])[0]
            item = rng.choice([i for i in self.items if i != self.last_item.get(user)])
            self.last_item[user] = item
            out.append(Event(event_id=uuid.uuid4().hex, type=kind, user_id=user, ts=self.next_ts(), item_id=item))
        shown = rng.sample(self.items, 4)  # and what a shopper was shown: impressions must count once too
        out.append(
            Event(
                event_id=uuid.uuid4().hex,
                type="impression",
                user_id=rng.choice(USERS),
                ts=self.next_ts(),
                request_id=uuid.uuid4().hex,
                item_ids=shown,
            )
        )
        return out

    def write(self) -> None:
        rng = random.Random(1)
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            while not self.stop.is_set():
                events = self.batch(rng)
                body = [json.loads(e.model_dump_json(exclude_none=True)) for e in events]
                while True:  # a client retries the same batch until the API acknowledges it
                    begun = self.begin()
                    try:
                        r: httpx.Response | None = http.post("/events", json=body)
                    except httpx.HTTPError:
                        r = None
                    self.note("events", begun, r)
                    if r is not None and r.status_code == 202:
                        assert r.json()["accepted"] == len(events), r.text
                        self.acknowledged.extend(events)
                        break
                    time.sleep(0.5)
                time.sleep(0.2)

    def read(self) -> None:
        rng = random.Random(2)
        words = ["shoe", "dress", "bag", "watch", "shirt", "ring"]
        with httpx.Client(base_url=self.base_url, timeout=30) as http:
            while not self.stop.is_set():
                for route, path, params in (
                    ("search", "/search", {"q": rng.choice(words), "user_id": rng.choice(USERS)}),
                    ("recommend", "/recommend", {"user_id": rng.choice(USERS)}),
                    ("similar", f"/similar/{rng.choice(self.items)}", {}),
                ):
                    begun = self.begin()
                    try:
                        r: httpx.Response | None = http.get(path, params={**params, "impression": "false"})
                    except httpx.HTTPError:
                        r = None
                    self.note(route, begun, r)
                time.sleep(0.05)

    def wait_answered(self, phase: str, degraded_search: bool = False, refused_write: bool = False) -> None:
        """Until every route has answered, settled, inside ``phase`` (a degraded search / a refused
        write among them when asked), and at least ``OUTAGE_MIN_S`` went by."""

        def answered() -> bool:
            here = [a for a in list(self.answers) if a.phase == phase]
            settled = {a.route for a in here if a.settled}
            return (
                time.monotonic() - self.phase_since >= OUTAGE_MIN_S
                and settled >= {"search", "recommend", "similar", "events"}
                and (not degraded_search or any(a.route == "search" and a.degraded for a in here))
                and (not refused_write or any(a.route == "events" and a.status in (429, 503) for a in here))
            )

        wait_for(answered, f"every route answered during '{phase}'", timeout_s=90, every_s=0.2)

    def wait_healthy(self, phase: str, tail: int = 5) -> None:
        """Until the last ``tail`` answers of every route in ``phase`` are healthy (recovered)."""

        def healthy() -> bool:
            here = [a for a in list(self.answers) if a.phase == phase]
            for route in ("search", "recommend", "similar", "events"):
                last = [a for a in here if a.route == route][-tail:]
                if len(last) < tail or not all(a.status in (200, 202) and not a.degraded for a in last):
                    return False
            return True

        wait_for(healthy, f"every route healthy during '{phase}'", timeout_s=120, every_s=0.2)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=f, daemon=True) for f in (self.write, self.read)]
        for t in threads:
            t.start()
        return threads


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("outages")
    kafka = EmbeddedKafka(root / "tansu").start()
    redis_server = EmbeddedRedis(root / "redis", persistent=True).start()
    try:
        bus.wait_for_broker(kafka.bootstrap)
        s = Settings(
            state_dir=root / "state",
            kafka={
                "bootstrap": kafka.bootstrap,
                "consumer_session_timeout_ms": 6_000,
                "consumer_heartbeat_ms": 500,
                "consumer_max_poll_interval_ms": 10_000,
            },
            redis={"url": redis_server.url},
            http={"port": free_port()},
            learner={"publish_every_updates": 5, "publish_every_s": 0.5, "label_window_s": 2.0},
            serving={"publish_timeout_s": PUBLISH_TIMEOUT_S},
        )
        with LocalStack(s, metrics_base_port=0) as stack:
            catalog = list(itertools.islice(amazon18.catalog(data_dir), CATALOG_SIZE))
            body = [json.loads(op.model_dump_json(exclude_none=True)) for op in catalog]
            with httpx.Client(base_url=stack.base_url, timeout=10) as http:

                def posted() -> bool:
                    try:
                        return http.post("/catalog", json=body).status_code == 202
                    except httpx.HTTPError:
                        return False

                wait_for(posted, "catalog accepted", timeout_s=120)
            stack.wait_ready(timeout_s=240, min_items=CATALOG_SIZE)
            yield stack, kafka, redis_server, [op.item_id for op in catalog]
    finally:
        redis_server.stop()
        kafka.stop()


def pids(stack: LocalStack) -> dict[str, int | None]:
    assert stack.supervisor is not None
    return {c["name"]: c["pid"] for c in stack.supervisor.status()}


def test_redis_and_broker_outages_degrade_then_recover_without_restarts_or_lost_events(outage_stack):
    stack, kafka, redis_server, items = outage_stack
    s = stack.settings
    before = pids(stack)
    shop = Storefront(stack.base_url, items)
    threads = shop.run()
    try:
        shop.wait_healthy("warm-up")
        shop.enter("redis down")
        redis_server.stop()  # a clean shutdown: the AOF keeps every acknowledged write
        shop.wait_answered("redis down", degraded_search=True)
        shop.enter("redis back")
        redis_server.start()
        shop.wait_healthy("redis back")
        shop.enter("broker frozen")
        assert kafka.proc is not None
        os.kill(kafka.proc.pid, signal.SIGSTOP)
        try:
            shop.wait_answered("broker frozen", refused_write=True)
        finally:
            shop.enter("broker back")
            os.kill(kafka.proc.pid, signal.SIGCONT)
        shop.wait_healthy("broker back")
    finally:
        shop.stop.set()
        for t in threads:
            t.join(60)
    answers = shop.answers

    # --- during: never a 500, never a hang -----------------------------------------------------
    assert not [a for a in answers if a.status >= 500 and a.status != 503], "5xx other than 503"
    slow_reads = [a for a in answers if a.route != "events" and a.seconds > READ_BOUND_S]
    assert not slow_reads, slow_reads[:5]
    slow_writes = [a for a in answers if a.route == "events" and a.seconds > WRITE_BOUND_S]
    assert not slow_writes, slow_writes[:5]
    for a in answers:
        if a.status == 503:
            assert a.retry_after, a
    down = [a for a in answers if a.phase == "redis down" and a.settled]
    assert {a.route for a in down} >= {"search", "recommend", "similar", "events"}
    for a in down:
        if a.route in ("search", "similar"):
            assert a.status == 200 and a.degraded, a
        elif a.route == "recommend":
            assert a.status in (200, 503), a
    assert any(a.route == "search" and a.degraded for a in down)
    frozen_writes = [a for a in answers if a.phase == "broker frozen" and a.route == "events"]
    assert frozen_writes and any(a.status in (429, 503) for a in frozen_writes), frozen_writes
    frozen_reads = [a for a in answers if a.phase == "broker frozen" and a.route == "search" and a.settled]
    assert frozen_reads and all(a.status == 200 for a in frozen_reads), frozen_reads[:5]

    # --- after: every service recovered on its own ---------------------------------------------
    for route in ("search", "recommend", "similar", "events"):
        tail = [a for a in answers if a.phase == "broker back" and a.route == route][-5:]
        assert tail and all(a.status in (200, 202) and not a.degraded for a in tail), (route, tail)
    assert pids(stack) == before, "a service was restarted"

    # Features: every acknowledged event counted exactly once (the retried batches included).
    events = sorted(shop.acknowledged, key=lambda e: e.ts)
    assert len({e.event_id for e in events}) == len(events)
    reference = ReplayFeatures(config=s.features)
    for e in events:
        reference.observe(e)
    store = FeatureStore(connect(s), s.redis.prefix, s.features)

    def features_match() -> bool:
        if store.clock_ms() != reference.clock:
            return False
        got, want = store.item_stats(items, now_ms=reference.clock), reference.item_stats(items, reference.clock)
        return all(
            g.counts.keys() == w.counts.keys()
            and all(abs(g.counts[t] - w.counts[t]) <= 1e-6 * max(1.0, w.counts[t]) for t in w.counts)
            and abs(g.impressions - w.impressions) <= 1e-6 * max(1.0, w.impressions)
            for g, w in zip(got, want, strict=True)
        ) and all(store.recent_items(u, 200) == reference.recent_items(u, 200) for u in USERS)

    wait_for(features_match, "Redis features to match the acknowledged events", timeout_s=90, every_s=1)

    # The learner is still learning: clicks posted now are joined and learned from.
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        learned_before = clicks_learned(http)
        posted = 0

        def learned() -> bool:
            nonlocal posted
            shown = http.get("/search", params={"q": "shoe", "user_id": "after-outage"}).json()
            if shown["items"]:
                click = {
                    "event_id": uuid.uuid4().hex,
                    "type": "click",
                    "user_id": "after-outage",
                    "ts": int(time.time() * 1000),
                    "item_id": shown["items"][0]["item_id"],
                    "request_id": shown["request_id"],
                    "position": 0,
                }
                posted += http.post("/events", json=click).status_code == 202
            return posted >= 3 and clicks_learned(http) >= learned_before + 3

        wait_for(learned, "clicks after the outages learned by the served model", timeout_s=90, every_s=1)
