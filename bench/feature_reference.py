"""The DIGINETICA replay the fault tests and ``bench/chaos.py`` share: the input stream (real
events with malformed records, producer retries and bots mixed in), a reference that applies the
documented feature rules sequentially in produce order, and the comparison of Redis against it.

The comparison returns mismatches as strings rather than asserting, so the bench can print how
many there are (0 is the claim) and a test can assert the list is empty.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from consumers.outbox import Quarantined
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features import FeatureStore
from streamrec.schemas import DeadLetter, Event, encode
from streamrec.settings import BotSettings, FeatureSettings, Settings

# no trimming of co-visitation lists in these runs, so the reference can be exact (trimming is
# covered in test_features.py); every other cap and default applies
FEATURE_ENV = {"STREAMREC_FEATURE_COVIS_TOP_N": "1000000"}
CFG = FeatureSettings(covis_top_n=1_000_000)
BOT = BotSettings()
MAX_REPORTED = 20  # mismatches listed in full; the count is always exact


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


def session_events(data_dir: Path, limit: int) -> Iterator[Event]:
    """``limit`` derived session events; past the file's ~906k, it is replayed as new sessions
    (ids suffixed ``~pass``, times shifted past the previous pass), so any length is possible."""
    produced, shift = 0, 0
    for n_pass in range(1_000):
        last = 0
        for e in diginetica.session_events(data_dir, limit=limit - produced):
            last = max(last, e.ts)
            if n_pass:
                sfx = f"~{n_pass}"
                e = e.model_copy(
                    update=dict(
                        event_id=e.event_id + sfx,
                        user_id=e.user_id + sfx,
                        session_id=(e.session_id or "") + sfx,
                        ts=e.ts + shift,
                    )
                )
            produced += 1
            yield e
        if produced >= limit:
            return
        shift += last - diginetica.START_MS + diginetica.SESSION_GAP_MS


def build_stream(data_dir: Path, n_session_events: int, rng: random.Random) -> list[tuple[str, bytes, Event | None]]:
    """(key, value, event or None when malformed) in produce order: ``n_session_events`` derived
    session events merged by time with the real purchases and views, plus 280 malformed records,
    150 producer retries (the very same record twice) and two bots of 200 clicks each."""
    real = list(
        heapq.merge(
            session_events(data_dir, n_session_events),
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
    bad: list[bytes] = field(default_factory=list)  # malformed records, for the DLQ
    clock: int = -1

    @classmethod
    def of(cls, stream: list[tuple[str, bytes, Event | None]], categories: dict[str, str]) -> Reference:
        ref = cls(categories=categories)
        for _k, v, e in stream:
            if e is None:
                ref.bad.append(v)
            else:
                ref.add(e)
        return ref

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
        assert e.item_id is not None  # DIGINETICA has no impressions
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


# --- Redis against the reference ---------------------------------------------------------------


class Mismatches(list):
    """Mismatch descriptions: the first ``MAX_REPORTED`` in full, then only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.count += 1
            if len(self) < MAX_REPORTED:
                self.append(what)


def _close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def feature_mismatches(fs: FeatureStore, ref: Reference, prefix: str) -> Mismatches:
    """Every user, item, co-visitation, affinity and trending feature in Redis vs ``ref``."""
    bad = Mismatches()
    r = fs.r
    bad.check(fs.clock_ms() == ref.clock, f"clock {fs.clock_ms()} != {ref.clock}")
    users = sorted(ref.recent)
    for start in range(0, len(users), 20_000):
        chunk = users[start : start + 20_000]
        pipe = r.pipeline(transaction=False)
        for u in chunk:
            pipe.hgetall(fs.keys.user(u))
            pipe.lrange(fs.keys.recent(u), 0, -1)
        replies = pipe.execute()
        for i, u in enumerate(chunk):
            counts = {k[2:]: int(v) for k, v in replies[2 * i].items() if k.startswith("n:")}
            bad.check(counts == dict(ref.user_n[u]), f"user {u} counts {counts} != {dict(ref.user_n[u])}")
            got = [tuple(x.split("\x1f")) for x in replies[2 * i + 1]]
            want = [(eid, item, t, str(ts), s) for eid, item, t, ts, s in ref.recent[u][: CFG.recent_cap]]
            bad.check(got == want, f"user {u} recent items differ")

    items = sorted(ref.item_n)
    tau = CFG.tau_ms(CFG.item_half_life_s)
    for start in range(0, len(items), 20_000):
        chunk = items[start : start + 20_000]
        pipe = r.pipeline(transaction=False)
        for it in chunk:
            pipe.hgetall(fs.keys.item(it))
            pipe.zrange(fs.keys.covis(it), 0, -1, withscores=True)
        replies = pipe.execute()
        for i, it in enumerate(chunk):
            h = replies[2 * i]
            counts = {k[2:]: int(v) for k, v in h.items() if k.startswith("n:")}
            bad.check(counts == dict(ref.item_n[it]), f"item {it} counts {counts} != {dict(ref.item_n[it])}")
            for t in ref.item_n[it]:
                stamps = ref.item_ts[(it, t)]
                top = max(stamps)
                bad.check(int(h.get(f"t:{t}", -1)) == top, f"item {it} last {t} time")
                want_d = sum(math.exp(-(top - s) / tau) for s in stamps)
                bad.check(_close(float(h.get(f"d:{t}", "nan")), want_d, 1e-9), f"item {it} decayed {t} count")
            got_cv = {m: int(s) for m, s in replies[2 * i + 1]}
            bad.check(got_cv == dict(ref.covis.get(it, {})), f"item {it} co-visitation differs")
    n_items = sum(1 for _ in r.scan_iter(f"{prefix}i:*", count=5000))
    bad.check(n_items == len(items), f"{n_items} item hashes, reference {len(items)}")
    n_cv = sum(1 for _ in r.scan_iter(f"{prefix}cv:*", count=5000))
    bad.check(n_cv == len(ref.covis), f"{n_cv} co-visitation sets, reference {len(ref.covis)}")

    bad.check(bool(ref.affinity), "no category affinity exercised")
    for u, cats in ref.affinity.items():
        got = r.hgetall(fs.keys.affinity(u))
        bad.check({c for c in got if not c.startswith("@")} == set(cats), f"user {u} affinity categories")
        for c, (v, t) in cats.items():
            ok = int(got.get(f"@{c}", -1)) == t and _close(float(got.get(c, "nan")), v, 1e-9)
            bad.check(ok, f"user {u} affinity {c}")

    tau_tr = CFG.tau_ms(CFG.trending_half_life_s)
    want_tr: Counter = Counter()
    for it, ts, w in ref.trending_events:
        want_tr[it] += w * math.exp(-(ref.clock - ts) / tau_tr)
    # trending keeps the top trending_cap items; the final top 20 were never evicted, and what an
    # item lost by an earlier eviction had decayed to well below the tolerance
    t0 = int(r.get(fs.keys.trending_t0))
    top = want_tr.most_common(1)[0][1]
    for it, v in [(it, v) for it, v in want_tr.most_common(20) if v > 1e-3 * top]:
        got_tr = r.zscore(fs.keys.trending, it)
        ok = got_tr is not None and _close(got_tr * math.exp((t0 - ref.clock) / tau_tr), v, 1e-6)
        bad.check(ok, f"trending {it}: {got_tr} vs {v}")
    return bad


def read_all(settings: Settings, topic: str, quiet_s: float = 2.0) -> list:
    """Every record of ``topic``, read until nothing arrives for ``quiet_s``."""
    c = bus.make_consumer(settings, group_id=None)
    try:
        tps = bus.all_partitions(c, topic)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list = []
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
                last = time.monotonic()
        return out
    finally:
        c.close()


def rejection_mismatches(settings: Settings, fs: FeatureStore, ref: Reference) -> Mismatches:
    """The DLQ holds exactly the malformed records, the quarantine topic exactly the bot traffic."""
    bad = Mismatches()
    letters = [DeadLetter.model_validate_json(m.value) for m in read_all(settings, settings.topic.dlq)]
    bad.check(sorted(d.original_bytes() for d in letters) == sorted(ref.bad), "DLQ records differ from the bad ones")
    want_reasons = Counter(malformed(int(d.source_key[3:]))[1] for d in letters if d.source_key)
    bad.check(Counter(d.reason for d in letters) == want_reasons, "DLQ reasons differ")
    held = [Quarantined.model_validate_json(m.value) for m in read_all(settings, settings.topic.quarantine)]
    got_q = Counter((q.event.event_id, q.reason) for q in held)
    bad.check(got_q == ref.quarantined, f"quarantine topic: {sum(got_q.values())} vs {sum(ref.quarantined.values())}")
    want_counts = dict(Counter(reason for (_e, reason) in ref.quarantined.elements()))
    bad.check(fs.quarantine_counts() == want_counts, f"quarantine counts {fs.quarantine_counts()} != {want_counts}")
    bad.check({"duplicate_event", "rapid_repeat", "user_burst"} <= set(want_counts), "a quarantine reason missing")
    return bad
