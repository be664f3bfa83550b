"""Fault test: 200k+ DIGINETICA events through real consumer processes that are killed with
SIGKILL at random (two of them share the partitions for part of the run). Afterwards every Redis
feature equals a reference computed straight from the file, the DLQ holds exactly the malformed
records mixed in, and the quarantine topic exactly the bot traffic."""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
from conftest import isolated_settings  # noqa: E402

from consumers.botfilter import BotConfig
from consumers.outbox import Quarantined
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features import FeatureConfig, FeatureStore
from streamrec.schemas import DeadLetter, Event, encode
from streamrec.settings import REPO_ROOT

pytestmark = pytest.mark.slow

N_SESSION_EVENTS = int(os.environ.get("STREAMREC_FAULT_EVENTS", "200000"))
KILLS = 6
# no trimming of co-visitation lists in this run, so the reference can be exact (trimming is
# covered in test_features.py); every other cap and default applies
FEATURE_ENV = {"STREAMREC_FEATURE_COVIS_TOP_N": "1000000"}
CFG = FeatureConfig(covis_top_n=1_000_000)
BOT = BotConfig()


# --- the input ---------------------------------------------------------------------------------


def malformed(i: int) -> tuple[bytes, str]:
    """One bad record per kind the validator must dead-letter, unique so the DLQ can be matched."""
    base = {"event_id": f"m{i}", "type": "view", "user_id": f"bad{i}", "ts": 1_451_606_400_000, "item_id": "1"}
    kind = i % 7
    if kind == 0:
        return f"not json {i} {{".encode(), "not_json"
    if kind == 1:
        return b"\xff\xfe\x00" + str(i).encode(), "not_utf8"
    if kind == 2:
        return json.dumps([i, "x"]).encode(), "not_object"
    if kind == 3:
        return json.dumps({**base, "type": "teleport"}).encode(), "unknown_type"
    if kind == 4:
        return json.dumps({**base, "ts": True, "position": -1}).encode(), "invalid"
    if kind == 5:
        return json.dumps({k: v for k, v in base.items() if k != "item_id"}).encode(), "invalid"
    return json.dumps({**base, "query": "x" * 70_000}).encode(), "oversize"


def build_stream(data_dir, rng: random.Random) -> list[tuple[str, bytes, Event | None]]:
    """(key, value, event or None when malformed) in produce order."""
    real = list(
        heapq.merge(
            diginetica.session_events(data_dir, limit=N_SESSION_EVENTS),
            diginetica.purchase_events(data_dir),
            diginetica.view_events(data_dir),
            key=lambda e: e.ts,
        )
    )
    out: list[tuple[str, bytes, Event | None]] = []
    bad_at = set(rng.sample(range(len(real)), 280))
    dup_at = set(rng.sample(range(len(real)), 150))
    bot_at = {len(real) // 3: "bot-fast", 2 * len(real) // 3: "bot-same"}
    for n, e in enumerate(real):
        value = encode(e)
        out.append((e.user_id, value, e))
        if n in dup_at:  # a producer retry: the very same record again
            out.append((e.user_id, value, e))
        if n in bad_at:
            raw, _ = malformed(n)
            out.append((f"bad{n}", raw, None))
        if n in bot_at:  # a bot: 200 clicks 20 ms apart on real items (one item, or the last 7 seen)
            user = bot_at[n]
            for k in range(200):
                item = e.item_id if user == "bot-same" else real[n - k % 7].item_id
                b = Event(event_id=f"{user}-{k}", type="click", user_id=user, item_id=item, ts=e.ts + k * 20)
                out.append((user, encode(b), b))
    return out


# --- the reference: the documented rules, applied sequentially in produce order -----------------


@dataclass
class Reference:
    categories: dict[str, str]
    recent: dict[str, list[tuple[str, str, str, int, str]]] = field(default_factory=lambda: defaultdict(list))
    user_n: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    user_rl: dict[str, tuple[int, int]] = field(default_factory=dict)
    item_n: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    item_ts: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    covis: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    affinity: dict[str, dict[str, tuple[float, int]]] = field(default_factory=lambda: defaultdict(dict))
    trending_events: list[tuple[str, int, float]] = field(default_factory=list)
    item_bucket: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)  # (event_id, reason)
    clock: int = -1

    def rate_over(self, user: str, ts: int) -> bool:
        bucket = math.floor(ts / (BOT.window_s * 1000))
        b, n = self.user_rl.get(user, (None, 0))
        if b is None or bucket > b:
            b, n = bucket, 1
        elif bucket == b:
            n += 1
        self.user_rl[user] = (b, n)
        return bucket == b and n > BOT.user_limit

    def add(self, e: Event) -> None:
        self.clock = max(self.clock, e.ts)
        recent = self.recent[e.user_id]
        reason = None
        if any(r[0] == e.event_id for r in recent[: CFG.dedup_lookback]):
            reason = "duplicate_event"
        elif (
            recent
            and recent[0][1] == e.item_id
            and recent[0][2] == e.type
            and abs(e.ts - recent[0][3]) < BOT.repeat_gap_ms
        ):
            reason = "rapid_repeat"
        elif self.rate_over(e.user_id, e.ts):
            reason = "user_burst"
        if reason is None:
            self.item_bucket[(e.item_id, e.ts // int(BOT.window_s * 1000))] += 1
        if reason:
            self.quarantined[(e.event_id, reason)] += 1
            return
        session = e.session_id or ""
        seen = {e.item_id}
        for _eid, other, _t, ts, sess in recent[: CFG.covis_lookback]:
            if other not in seen and sess == session and abs(e.ts - ts) <= CFG.covis_window_s * 1000:
                seen.add(other)
                self.covis[e.item_id][other] += 1
                self.covis[other][e.item_id] += 1
        recent.insert(0, (e.event_id, e.item_id, e.type, e.ts, session))
        del recent[max(CFG.recent_cap, CFG.dedup_lookback, CFG.covis_lookback) :]
        self.user_n[e.user_id][e.type] += 1
        self.item_n[e.item_id][e.type] += 1
        self.item_ts[(e.item_id, e.type)].append(e.ts)
        w = CFG.weight(e.type)
        self.trending_events.append((e.item_id, e.ts, w))
        cat = self.categories.get(e.item_id)
        if cat:
            self._affinity(e.user_id, cat, e.ts, w)

    def _affinity(self, user: str, cat: str, ts: int, w: float) -> None:
        tau = CFG.tau_ms(CFG.affinity_half_life_s)
        cats = self.affinity[user]
        fresh = cat not in cats
        if fresh:
            cats[cat] = (w, ts)
        else:
            v, t = cats[cat]
            cats[cat] = (v * math.exp(-(ts - t) / tau) + w, ts) if ts >= t else (v + w * math.exp(-(t - ts) / tau), t)
        if fresh and len(cats) > CFG.category_cap:
            others = [(v * math.exp(-max(0, ts - t) / tau), c) for c, (v, t) in cats.items() if c != cat]
            del cats[min(others)[1]]


# --- consumer processes ------------------------------------------------------------------------


class Fleet:
    """Real ``python -m consumers`` processes sharing one group."""

    def __init__(self, settings, log_dir):
        from launcher.embedded import child_env

        self.env = (
            child_env(
                kafka_bootstrap=settings.kafka_bootstrap,
                redis_url=settings.redis_url,
                redis_prefix=settings.redis_prefix,
                topic_events=settings.topic_events,
                topic_catalog=settings.topic_catalog,
                topic_dlq=settings.topic_dlq,
                topic_quarantine=settings.topic_quarantine,
                consumers_group=settings.consumers_group,
                consumer_session_timeout_ms=4000,
                consumer_heartbeat_ms=400,
                consumer_max_poll_interval_ms=20_000,
                log_level="WARNING",
            )
            | FEATURE_ENV
        )
        self.log_dir = log_dir
        self.live: list[subprocess.Popen] = []
        self.started = 0
        self.killed = 0

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"consumer{self.started}.log", "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "consumers"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.fspath(REPO_ROOT),
        )
        log.close()
        self.started += 1
        self.live.append(p)
        return p

    def check_alive(self) -> None:
        crashed = [p for p in self.live if p.poll() is not None]
        assert not crashed, f"a consumer exited on its own (code {crashed[0].returncode}); see {self.log_dir}"

    def kill9(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.live.remove(p)
        self.killed += 1

    def stop_all(self) -> list[int]:
        for p in self.live:
            p.terminate()
        codes = [p.wait(60) for p in self.live]
        self.live.clear()
        return codes

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.live:  # a failed test leaves no consumer behind
            p.kill()
            p.wait()


def read_all(settings, topic: str, quiet_s: float = 2.0) -> list:
    c = bus.make_consumer(settings, group_id=None)
    try:
        tps = bus.all_partitions(c, topic)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, last = [], time.monotonic()
        while time.monotonic() - last < quiet_s:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
                last = time.monotonic()
        return out
    finally:
        c.close()


def test_kill9_and_rebalances_lose_nothing_and_count_nothing_twice(kafka_broker, redis_server, tmp_path, data_dir):
    settings = isolated_settings(
        kafka_broker, redis_server, tmp_path / "state", consumer_session_timeout_ms=4000, consumer_heartbeat_ms=400
    )
    rng = random.Random(20160101)
    stream = build_stream(data_dir, rng)
    raw_items = {e.item_id for _k, _v, e in stream if e is not None and not e.item_id.startswith("sg")}
    ops = list(diginetica.catalog(data_dir, raw_items))
    with Fleet(settings, tmp_path) as fleet:
        fs = FeatureStore.from_settings(settings)
        producer = bus.make_producer(settings, linger_ms=20, batch_size=512 * 1024)

        for op in ops:  # the catalog first, so category affinity does not depend on topic interleaving
            producer.send(settings.topic_catalog, key=op.item_id, value=encode(op))
        producer.flush()
        fleet.start()
        deadline = time.monotonic() + 120
        while sum(a is not None for a in fs.item_attributes([op.item_id for op in ops])) < len(ops):
            assert time.monotonic() < deadline, "catalog not applied"
            time.sleep(0.2)

        last_offset: dict[int, int] = {}

        def produce():
            futures = [producer.send(settings.topic_events, key=k, value=v) for k, v, _e in stream]
            producer.flush()
            for f in futures:
                md = f.get(timeout=60)
                last_offset[md.partition] = max(last_offset.get(md.partition, -1), md.offset)

        sender = threading.Thread(target=produce)
        sender.start()

        # the reference, while the consumers work
        ref = Reference(categories={op.item_id: op.category for op in ops})
        bad = []
        for _k, v, e in stream:
            if e is None:
                bad.append(v)
            else:
                ref.add(e)
        assert max(ref.item_bucket.values()) <= BOT.item_limit  # so no item_burst, whatever the order

        # chaos: SIGKILL at random instants; two consumers for the middle of the run; one kill lands
        # right after a start, while the group is rebalancing
        total = len(stream)
        mid_stream_kills = 0
        for k in range(KILLS):
            time.sleep(rng.uniform(1.0, 3.5))
            want = 2 if 1 <= k <= 3 else 1
            while len(fleet.live) < want:
                fleet.start()
            fleet.check_alive()
            victim = rng.choice(fleet.live)
            if k == 2:  # the newest consumer is joining: kill the other one mid-rebalance
                time.sleep(rng.uniform(1.0, 2.0))
                victim = fleet.live[0]
            applied = sum(
                int(fs.r.get(fs.keys.offset(settings.consumers_group, settings.topic_events, p)) or 0)
                for p in range(settings.topic_partitions)
            )
            fleet.kill9(victim)
            mid_stream_kills += applied < total
            if not fleet.live:
                fleet.start()
        sender.join()
        assert mid_stream_kills >= 5, "the kills must land while events are still being applied"

        def offset_done() -> bool:
            r = fs.r
            for p, last in last_offset.items():
                v = r.get(fs.keys.offset(settings.consumers_group, settings.topic_events, p))
                if v is None or int(v) < last + 1:
                    return False
            return not any(
                r.llen(fs.keys.outbox(settings.consumers_group, settings.topic_events, p)) for p in last_offset
            )

        deadline = time.monotonic() + 180
        while not offset_done():
            assert time.monotonic() < deadline, "consumers did not finish"
            fleet.check_alive()
            time.sleep(0.5)
        codes = fleet.stop_all()
        assert codes == [0] * len(codes), "SIGTERM must drain and exit cleanly"

    # --- every feature equals the reference ---------------------------------------------------
    r = fs.r
    assert fs.clock_ms() == ref.clock
    users = sorted(ref.recent)
    pipe = r.pipeline(transaction=False)
    for u in users:
        pipe.hgetall(fs.keys.user(u))
        pipe.lrange(fs.keys.recent(u), 0, -1)
    replies = pipe.execute()
    for i, u in enumerate(users):
        counts = {k[2:]: int(v) for k, v in replies[2 * i].items() if k.startswith("n:")}
        assert counts == dict(ref.user_n[u]), u
        got = [tuple(x.split("\x1f")) for x in replies[2 * i + 1]]
        want = [(eid, item, t, str(ts), s) for eid, item, t, ts, s in ref.recent[u][: CFG.recent_cap]]
        assert got == want, u

    items = sorted(ref.item_n)
    tau = CFG.tau_ms(CFG.item_half_life_s)
    pipe = r.pipeline(transaction=False)
    for it in items:
        pipe.hgetall(fs.keys.item(it))
        pipe.zrange(fs.keys.covis(it), 0, -1, withscores=True)
    replies = pipe.execute()
    for i, it in enumerate(items):
        h = replies[2 * i]
        assert {k[2:]: int(v) for k, v in h.items() if k.startswith("n:")} == dict(ref.item_n[it]), it
        for t in ref.item_n[it]:
            stamps = ref.item_ts[(it, t)]
            top = max(stamps)
            assert int(h[f"t:{t}"]) == top
            assert float(h[f"d:{t}"]) == pytest.approx(sum(math.exp(-(top - s) / tau) for s in stamps), rel=1e-9)
        assert {m: int(s) for m, s in replies[2 * i + 1]} == dict(ref.covis.get(it, {})), it
    assert sum(1 for _ in r.scan_iter(f"{settings.redis_prefix}i:*", count=5000)) == len(items)
    assert sum(1 for _ in r.scan_iter(f"{settings.redis_prefix}cv:*", count=5000)) == len(ref.covis)

    for u, cats in ref.affinity.items():
        got = r.hgetall(fs.keys.affinity(u))
        assert {c for c in got if not c.startswith("@")} == set(cats), u
        for c, (v, t) in cats.items():
            assert int(got[f"@{c}"]) == t and float(got[c]) == pytest.approx(v, rel=1e-9)
    assert ref.affinity, "no category affinity exercised"

    tau_tr = CFG.tau_ms(CFG.trending_half_life_s)
    want_tr: Counter = Counter()
    for it, ts, w in ref.trending_events:
        want_tr[it] += w * math.exp(-(ref.clock - ts) / tau_tr)
    # trending keeps the top trending_cap items; the final top 20 were never evicted, and what an
    # item lost by an earlier eviction had decayed to well below the tolerance
    t0 = int(r.get(fs.keys.trending_t0))
    top = want_tr.most_common(1)[0][1]
    for it, v in [(it, v) for it, v in want_tr.most_common(20) if v > 1e-3 * top]:
        got = r.zscore(fs.keys.trending, it)
        assert got is not None and got * math.exp((t0 - ref.clock) / tau_tr) == pytest.approx(v, rel=1e-6), it

    # --- dead letters and quarantine: exactly what was mixed in ----------------------------------
    letters = [DeadLetter.model_validate_json(m.value) for m in read_all(settings, settings.topic_dlq)]
    assert sorted(d.original_bytes() for d in letters) == sorted(bad)
    assert Counter(d.reason for d in letters) == Counter(malformed(int(d.source_key[3:]))[1] for d in letters)
    held = [Quarantined.model_validate_json(m.value) for m in read_all(settings, settings.topic_quarantine)]
    assert Counter((q.event.event_id, q.reason) for q in held) == ref.quarantined
    assert fs.quarantine_counts() == dict(Counter(reason for (_e, reason) in ref.quarantined.elements()))
    assert {"duplicate_event", "rapid_repeat", "user_burst"} <= set(fs.quarantine_counts())
