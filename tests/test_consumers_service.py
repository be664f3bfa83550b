"""The ingestion service against the real embedded broker and Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from consumers.service import run
from streamrec import bus
from streamrec.features import FeatureStore
from streamrec.schemas import CatalogOp, DeadLetter, Event, encode
from tests.polling import wait_for

T0 = 1_700_000_000_000


def read_topic(settings, topic, n, timeout_s=30.0) -> list:
    c = bus.make_consumer(settings, group_id=None)
    try:
        tps = bus.all_partitions(c, topic)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        c.close()


@pytest.fixture
def service(settings):
    stop = threading.Event()
    t = threading.Thread(target=run, args=(settings, stop), daemon=True)
    t.start()
    yield stop, t
    stop.set()
    t.join(30)


def ev(i, user="u1", item="a", typ="view", **kw) -> Event:
    return Event(event_id=f"e{i}", type=typ, user_id=user, item_id=item, ts=T0 + i * 1000, session_id="s1", **kw)


def test_events_become_features_and_bad_input_is_dead_lettered(settings, service):
    p = bus.make_producer(settings)
    p.send(
        settings.topic.catalog,
        key="a",
        value=encode(CatalogOp(op="upsert", item_id="a", ts=T0, title="Pen", category="office", price=2.5)),
    )
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: fs.item_attributes(["a"])[0], what="catalog upsert")
    for i, (item, typ) in enumerate([("a", "view"), ("b", "view"), ("a", "click"), ("b", "purchase")]):
        p.send(settings.topic.events, key="u1", value=encode(ev(i, item=item, typ=typ)))
    bad = [
        b"\xff\xfe not utf8",
        b"{not json",
        b"[1, 2]",
        json.dumps({"event_id": "x", "type": "teleport", "user_id": "u", "ts": T0, "item_id": "a"}).encode(),
        json.dumps({"event_id": "x", "type": "view", "user_id": "u", "ts": T0}).encode(),
        b'{"pad": "' + b"x" * settings.consumers.max_event_bytes + b'"}',
    ]
    for raw in bad:
        p.send(settings.topic.events, key="bad", value=raw)
    p.flush()

    recent = wait_for(lambda: (r := fs.recent_items("u1")) and len(r) == 4 and r, what="recent items")
    assert [(r.item_id, r.type) for r in recent] == [("b", "purchase"), ("a", "click"), ("b", "view"), ("a", "view")]
    assert recent[0].ts == T0 + 3000
    stats_a, stats_b = fs.item_stats(["a", "b"], now_ms=T0 + 3000)
    assert stats_a.counts["view"] == pytest.approx(0.5 ** (3 / 86_400))  # one view 3 s ago, 1-day half-life
    assert stats_a.clicks == pytest.approx(0.5 ** (1 / 86_400))
    assert stats_b.counts["purchase"] == pytest.approx(1.0)
    assert fs.item_counts("a") == {"view": 1, "click": 1}
    # each event pairs with the distinct other items before it in the session: 1 + 1 + 1
    assert dict(fs.covisited("a")) == {"b": 3.0} and dict(fs.covisited("b")) == {"a": 3.0}
    assert set(dict(fs.trending(5))) == {"a", "b"}
    # only item "a" has a category; view (1) and click (2) decayed with a 7-day half-life
    assert fs.category_affinity("u1", now_ms=T0 + 2000) == {"office": pytest.approx(0.5 ** (2 / 604_800) + 2)}
    assert fs.item_attributes(["a", "zz"]) == [{"title": "Pen", "category": "office", "price": 2.5}, None]

    letters = [DeadLetter.model_validate_json(m.value) for m in read_topic(settings, settings.topic.dlq, len(bad))]
    assert sorted(d.reason for d in letters) == sorted(
        ["not_utf8", "not_json", "not_object", "unknown_type", "invalid", "oversize"]
    )
    assert sorted(d.original_bytes() for d in letters) == sorted(bad)
    assert all(d.source_topic == settings.topic.events and d.error for d in letters)


def test_stop_drains_and_commits(settings):
    stop = threading.Event()
    t = threading.Thread(target=run, args=(settings, stop), daemon=True)
    t.start()
    p = bus.make_producer(settings)
    n = 300
    for i in range(n):
        p.send(settings.topic.events, key=f"u{i % 7}", value=encode(ev(i, user=f"u{i % 7}", item=f"i{i % 13}")))
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: sum(sum(fs.user_counts(f"u{k}").values()) for k in range(7)) == n, what="all events applied")
    stop.set()
    t.join(30)
    assert not t.is_alive(), "run() did not return after stop"
    # Kafka's committed offsets caught up with the offsets stored atomically in Redis
    c = bus.make_consumer(settings, group_id=settings.consumers.group)
    try:
        tps = bus.all_partitions(c, settings.topic.events)
        committed = {tp.partition: c.committed(tp) for tp in tps}
    finally:
        c.close()
    stored = {
        tp.partition: fs.r.get(fs.keys.offset(settings.consumers.group, settings.topic.events, tp.partition))
        for tp in tps
    }
    assert sum(committed.values()) == n
    assert committed == {k: int(v) for k, v in stored.items()}


def test_bots_and_repeats_are_quarantined_not_counted(settings, service, monkeypatch):
    from consumers.outbox import Quarantined

    p = bus.make_producer(settings)
    normal = [ev(i, user="human", item=f"i{i}") for i in range(3)]
    # a bot: 80 events in 8 s from one user (limit 50 per 10 s window)
    bot = [
        Event(event_id=f"b{i}", type="click", user_id="bot", item_id=f"i{i % 5}", ts=T0 + i * 100) for i in range(80)
    ]
    repeat = [ev(10, user="human", item="x"), ev(10, user="human", item="x")]  # same event_id twice
    for e in normal + bot + repeat:
        p.send(settings.topic.events, key=e.user_id, value=encode(e))
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: sum(fs.quarantine_counts().values()) == 31, what="quarantine decisions")
    assert fs.quarantine_counts() == {"user_burst": 30, "duplicate_event": 1}
    assert fs.user_counts("bot") == {"click": 50}
    assert fs.user_counts("human") == {"view": 4}
    assert fs.is_quarantined("b79") == "user_burst" and fs.is_quarantined("b0") is None
    held = [Quarantined.model_validate_json(m.value) for m in read_topic(settings, settings.topic.quarantine, 31)]
    assert sorted(q.event.event_id for q in held if q.reason == "user_burst") == sorted(f"b{i}" for i in range(50, 80))
    assert [q.event.event_id for q in held if q.reason == "duplicate_event"] == ["e10"]


def test_status_shows_thresholds_decisions_and_lag(settings, service):
    from consumers.status import summary

    p = bus.make_producer(settings)
    for i in range(60):  # one user over the 50-per-window limit
        e = Event(event_id=f"s{i}", type="view", user_id="fast", item_id=f"i{i}", ts=T0 + i)
        p.send(settings.topic.events, key="fast", value=encode(e))
    p.send(settings.topic.events, key="x", value=b"not json")
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: fs.quarantine_counts().get("user_burst") == 10 and fs.dead_letter_counts(), what="decisions")
    wait_for(
        lambda: (
            sum(
                int(fs.r.get(fs.keys.offset(settings.consumers.group, settings.topic.events, p)) or 0) for p in range(3)
            )
            == 61
        ),
        what="offsets",
    )
    s = summary(settings)
    assert s["bot_filter"]["thresholds"]["user_limit"] == 50
    assert s["bot_filter"]["quarantined"] == {"user_burst": 10}
    assert s["bot_filter"]["recent_decisions"][0] == {
        "event_id": "s59",
        "user_id": "fast",
        "reason": "user_burst",
        "offset": s["bot_filter"]["recent_decisions"][0]["offset"],
        "ts": T0 + 59,
    }
    assert s["dead_letters"]["counts"] == {"not_json": 1}
    events = {k: v for k, v in s["partitions"].items() if k.startswith(settings.topic.events)}
    assert sum(v["applied_offset"] or 0 for v in events.values()) == 61
    assert all(v["outbox_pending"] == 0 and v["lag"] >= 0 for v in events.values())


def test_invalid_catalog_ops_are_left_to_the_index_updater(settings, service):
    """One DLQ owner per topic: index_updater dead-letters the catalog, consumers only skip."""
    p = bus.make_producer(settings)
    for value in (b"{broken", encode(CatalogOp(op="upsert", item_id="ok", ts=T0, title="Lamp", category="home"))):
        p.send(settings.topic.catalog, key="same-partition", value=value)
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: fs.item_attributes(["ok"])[0], what="the valid op after the invalid one")
    assert fs.dead_letter_counts() == {}
    assert read_topic(settings, settings.topic.dlq, 1, timeout_s=2) == []


def test_an_event_not_keyed_by_its_user_is_applied_and_counted(settings, service, caplog):
    """A producer keying events by something else than user_id splits a user over partitions (and
    keyspaces on a Redis Cluster): the event still counts, and ops see the mistake."""
    before = REGISTRY.get_sample_value("streamrec_consumer_events_not_keyed_by_user_total") or 0.0
    p = bus.make_producer(settings)
    p.send(settings.topic.events, key="u-keyed", value=encode(ev(1, user="u-keyed")))
    p.send(settings.topic.events, key="session-42", value=encode(ev(2, user="u-unkeyed")))
    p.flush()
    fs = FeatureStore.from_settings(settings)
    wait_for(lambda: fs.recent_items("u-keyed") and fs.recent_items("u-unkeyed"), what="both events applied")
    after = REGISTRY.get_sample_value("streamrec_consumer_events_not_keyed_by_user_total")
    assert after == before + 1
    assert any("not its user_id 'u-unkeyed'" in r.getMessage() for r in caplog.records)
