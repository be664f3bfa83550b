"""Bounded Redis memory: every key family has a TTL or a stated cap, a full Redis sheds the oldest
features instead of failing writes, and memory per active user / item stays within the README's bound.

The writes go through the real writer script (``consumers.apply.Writer``) and the real serving /
learner / cockpit writers; the audit (``streamrec.memory``) enumerates what is actually in Redis.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from consumers.apply import Writer
from launcher.embedded import EmbeddedRedis
from serving.cockpit import HISTORY, record_action
from streamrec import memory
from streamrec.datasets import diginetica
from streamrec.ops import add_learner_stats
from streamrec.ranking import N_FEATURES, log_served
from streamrec.schemas import CatalogOp, DeadLetter, Event, Rejected, encode
from streamrec.settings import BotSettings, FeatureSettings, Settings
from streamrec.store import connect

ROOT = Path(__file__).resolve().parent.parent
TOPIC, CATALOG, PARTITIONS = "events", "catalog", 3
# README "Memory": bytes per active user / item / session with every cap reached (the worst case)
USER_BOUND_B, ITEM_BOUND_B, SESSION_BOUND_B = 6_000, 64_000, 600
T0 = 1_400_000_000_000


class Feed:
    """Records to the writer as the consumers send them: per partition, consecutive offsets, batches."""

    def __init__(self, writer: Writer, batch: int = 500):
        self.writer, self.batch = writer, batch
        self.next: dict[tuple[str, int], int] = {}
        self.results: list = []

    def send(self, topic: str, models: Iterable[Event | CatalogOp | DeadLetter], key_of=None) -> None:
        by_part: dict[int, list] = {}
        for m in models:
            key = (key_of or _key)(m)
            by_part.setdefault(hash(key) % PARTITIONS, []).append((m, key))
        for part, rows in by_part.items():
            for at in range(0, len(rows), self.batch):
                chunk = rows[at : at + self.batch]
                off = self.next.get((topic, part), 0)
                records = [(off + i, m, encode(m), key.encode()) for i, (m, key) in enumerate(chunk)]
                self.results.append(self.writer.apply(topic, part, records, off + len(records)))
                self.next[(topic, part)] = off + len(records)


def _key(m) -> str:
    return m.user_id if isinstance(m, Event) else m.item_id if isinstance(m, CatalogOp) else "dlq"


def dead_letter(n: int) -> DeadLetter:
    return DeadLetter.of(Rejected("not_json", "nope"), b"{oops %d" % n, topic=TOPIC, now_ms=0)


def test_every_key_streamrec_writes_has_a_ttl_or_a_stated_cap(data_dir, redis_server, tmp_path):
    s = Settings(state_dir=tmp_path, redis={"url": redis_server.url, "prefix": f"mem{uuid.uuid4().hex[:6]}:"})
    r = connect(s)
    feed = Feed(Writer(r, s.redis.prefix, "g", s.features, s.bot))
    events = list(diginetica.events(data_dir, limit=4_000))
    items = {e.item_id for e in events if e.item_id}
    # the session file's items ("sg…") are not in the category file: categories of our own
    feed.send(CATALOG, [CatalogOp(op="upsert", item_id=i, ts=T0, title=i, category=f"c{len(i) % 7}") for i in items])
    feed.send(CATALOG, [CatalogOp(op="delete", item_id=i, ts=events[-1].ts) for i in sorted(items)[:20]])
    burst = [Event(event_id=f"b{k}", type="view", user_id="bot", item_id="x", ts=events[0].ts + k) for k in range(80)]
    feed.send(TOPIC, [*events, *burst, dead_letter(0)])  # a user burst is quarantined; a dead letter
    assert all(res.status == "ok" for res in feed.results)
    # serving, learner and cockpit writers
    for k in range(50):
        log_served(r, s.redis.prefix, f"req{k}", ["a", "b"], np.zeros((2, N_FEATURES), np.float32), ttl_s=60)
    add_learner_stats(r, s.redis.prefix, {"events:view": 3}, {"price_log": 0.1}, 0.2)
    record_action(s, {"action": "promote", "version": 1})
    r.rpush(s.redis.prefix + HISTORY, "{}")
    r.set(s.redis.prefix + "cockpit:slot:1", "1", ex=30)

    report = memory.audit(r, s.redis.prefix)
    assert memory.violations(report) == []
    present = set(report)
    assert {"user", "user_recent", "item", "covis", "session", "item_sessions", "attr", "offset", "outbox"} <= present
    assert {"served", "quarantined", "dlq_counts", "learner_stats", "cockpit_actions", "cockpit_history"} <= present
    assert report["attr"].without_ttl == len(items) - 20  # live items: catalog state; tombstones expire
    per = memory.per_entity(report)
    assert per["user"] <= USER_BOUND_B and per["item"] <= ITEM_BOUND_B and per["session"] <= SESSION_BOUND_B, per


def test_a_key_of_no_family_or_a_ttl_family_without_ttl_is_a_violation():
    report = {
        "?": memory.FamilyUsage(keys=1, examples=["p:new:thing"]),
        "user": memory.FamilyUsage(keys=2, without_ttl=1),
        "offset": memory.FamilyUsage(keys=1, without_ttl=0),
    }
    found = memory.violations(report)
    assert len(found) == 3 and "no declared family" in found[0]


def test_readme_states_every_key_family():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Redis key families") :]
    for fam in memory.FAMILIES:
        assert re.search(rf"`{re.escape(fam.template)}`.*\| {fam.bound} \|", table), fam.name


def test_unsafe_eviction_policies_are_named():
    assert memory.policy_warning({"maxmemory_policy": "volatile-lru", "maxmemory": 10}) is None
    assert "offsets" in (memory.policy_warning({"maxmemory_policy": "allkeys-lru", "maxmemory": 0}) or "")
    assert "fail" in (memory.policy_warning({"maxmemory_policy": "noeviction", "maxmemory": 10}) or "")
    assert memory.policy_warning({"maxmemory_policy": "noeviction", "maxmemory": 0}) is None


def rolling_events(n: int, start: int = 0, ts0: int = 1_700_000_000_000) -> list[Event]:
    """``n`` events of ever new users (one 5-event session each) over a rolling window of items."""
    out = []
    for k in range(start, start + n):
        user = f"user-{k // 5}"
        out.append(
            Event(
                event_id=f"e{k}",
                type="click" if k % 7 == 0 else "view",
                user_id=user,
                session_id=f"s-{k // 5}",
                item_id=f"item-{(k // 50) + k % 40}",
                ts=ts0 + k * 1000,
            )
        )
    return out


@pytest.mark.slow
def test_a_full_redis_sheds_the_oldest_features_and_never_fails_a_write(tmp_path):
    limit_mb = 12
    with EmbeddedRedis(tmp_path / "redis", maxmemory_mb=limit_mb) as server:
        s = Settings(redis={"url": server.url, "prefix": "full:"})
        r = connect(s)
        assert memory.warn_if_unsafe(r) is None
        feed = Feed(Writer(r, s.redis.prefix, "g", s.features, BotSettings(user_limit=0, item_limit=0)))
        feed.send(
            CATALOG, [CatalogOp(op="upsert", item_id=f"item-{k}", ts=T0, title="t", category="c") for k in range(300)]
        )
        peak, dead, sent = 0, 0, 0
        while sent < 150_000:  # well past the limit: ~3x what fits
            feed.send(TOPIC, [*rolling_events(10_000, sent), dead_letter(dead)])
            sent, dead = sent + 10_000, dead + 1
            peak = max(peak, memory.used_memory(r))
        info = r.info("memory")
        stats = r.info("stats")
        assert all(res.status == "ok" for res in feed.results)  # a failed write raises; none did
        assert stats["evicted_keys"] > 0  # it did fill up
        assert info["used_memory"] <= limit_mb * 2**20, info["used_memory"]
        assert peak <= limit_mb * 2**20 * 1.05, peak  # at most a batch's worth over, until the next command
        for (topic, part), nxt in feed.next.items():  # offsets and outboxes are never evicted
            assert r.get(f"full:off:g:{topic}:{part}") == str(nxt)
        outboxes = sum(r.llen(f"full:outbox:g:{TOPIC}:{p}") for p in range(PARTITIONS))
        assert outboxes == dead
        assert sum(1 for _ in r.scan_iter("full:attr:*", count=1000)) == 300  # the catalog stays
        assert r.exists("full:u:user-29999")  # the newest features are there; the oldest went
        assert not r.exists("full:u:user-0") and not r.exists("full:u:user-0:recent")
        assert memory.violations(memory.audit(r, s.redis.prefix)) == []


@pytest.mark.slow
def test_memory_per_active_user_and_item_is_bounded_and_flat_at_a_stable_active_set(redis_server):
    """A fixed population (400 users, 4 sessions each in turn, 300 items) streams until every cap is
    reached; after that used_memory must stop growing (the caps, not the stream length, bound it)."""
    s = Settings(redis={"url": redis_server.url, "prefix": f"flat{uuid.uuid4().hex[:6]}:"})
    r = connect(s)
    # each item's session index capped at 100 (default 500) so that every cap is reached within 40k
    # events; the bound per item below is the default caps' worst case, so it holds a fortiori
    cfg = FeatureSettings(item_sessions_cap=100)
    feed = Feed(Writer(r, s.redis.prefix, "g", cfg, BotSettings(user_limit=0, item_limit=0)), batch=1000)
    feed.send(
        CATALOG, [CatalogOp(op="upsert", item_id=f"i{k}", ts=T0, title="t", category=f"c{k % 40}") for k in range(300)]
    )

    def chunk(k0: int, n: int) -> list[Event]:
        return [
            Event(
                event_id=f"e{k}",
                type="click" if k % 5 == 0 else "view",
                user_id=f"u{k % 400}",
                session_id=f"u{k % 400}-{(k // 4000) % 4}",
                item_id=f"i{(k * 7919 + k // 400) % 300}",
                ts=1_700_000_000_000 + k * 500,
            )
            for k in range(k0, k0 + n)
        ]

    sizes = []
    for step in range(8):
        feed.send(TOPIC, chunk(step * 10_000, 10_000))
        report = memory.audit(r, s.redis.prefix)
        sizes.append(sum(u.bytes for u in report.values()))
    growth = (sizes[-1] - sizes[4]) / sizes[4]  # every cap is reached by 50k events
    per = memory.per_entity(report)
    assert report["user"].keys == 400 and report["session"].keys <= 1600
    assert growth <= 0.01, (sizes, growth)
    assert per["user"] <= USER_BOUND_B and per["item"] <= ITEM_BOUND_B and per["session"] <= SESSION_BOUND_B, per
