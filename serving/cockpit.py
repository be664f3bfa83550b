"""The ops cockpit's data: a bounded, downsampled history kept in Redis, and ``GET /dashboard/data``.

Works with the embedded default (no Prometheus): every ``cockpit.sample_s`` (10 s) one serving
replica appends a snapshot to a capped Redis list, ``{prefix}cockpit:history`` (``RPUSH`` +
``LTRIM`` to ``cockpit.history_points``, 2,880 = 8 h). A snapshot is about 0.8–1.2 KB of JSON
(served model version and its prequential AUC / log-loss from the model store, events/s in and
out, consumer lag per service, dead-letter and quarantine rates, click and purchase rates per item
shown, per-feature drift distances, index size, latency per route), so the list stays under 3.5 MB.
With several replicas a per-slot ``SET NX`` lets one of them sample each slot; its latency figures
(and its vector follower's lag) are that replica's.

Consumer lag per service (records behind the partition end): ``consumers`` from the offsets it
applied (in Redis) on the events and catalog topics, ``index-updater`` and ``learner`` from their
groups' committed offsets (the learner commits after each checkpoint, so its lag includes up to
``learner.checkpoint_every_s`` of records), ``serving-vectors`` from this replica's follower. Click
and purchase rates and the feature distances come from the learner's stats hash (``streamrec/ops.py``).

Operator actions (promote / roll back through ``/admin``) go to ``{prefix}cockpit:actions``
(the last 200) so the charts can mark them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, cast

import redis
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving import metrics
from serving.dashboard import recent_drift_events
from serving.merchandising import RuleStore
from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.ops import KS_ALPHA, LEARNER_STATS, parse_learner_stats
from streamrec.settings import Settings
from streamrec.store import connect, keyspaces, offset_keys, shared_prefix
from streamrec.vector_index.metrics import EVENT_TO_SEARCHABLE

log = logging.getLogger(__name__)

HISTORY = "cockpit:history"
ACTIONS = "cockpit:actions"
SLOT = "cockpit:slot:"
ACTIONS_KEPT = 200
# probes, scrapes and the cockpit itself: not the latency an operator watches
OPS_ROUTES = frozenset({"healthz", "readyz", "prometheus", "dashboard", "dashboard_data_route"})


def human_ms(ms: Any) -> str | None:
    if not isinstance(ms, (int, float)):
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def record_action(s: Settings, action: dict) -> None:
    """Remember an operator action for the cockpit (best effort: Redis away loses only the marker)."""
    try:
        r = connect(s)
        try:
            r.rpush(s.redis.prefix + ACTIONS, json.dumps({"t": int(time.time() * 1000), **action}))
            r.ltrim(s.redis.prefix + ACTIONS, -ACTIONS_KEPT, -1)
        finally:
            r.close()
    except (redis.RedisError, RuntimeError) as e:
        log.warning("cockpit: action not recorded: %r", e)


def _freshness_buckets() -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` of catalog change → searchable in this process's replica."""
    out = []
    for family in EVENT_TO_SEARCHABLE.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


def _delta_quantiles(now: list[tuple[float, float]], before: list[tuple[float, float]]) -> tuple:
    """``(count, p50, p99)`` of the observations between two cumulative bucket snapshots."""
    prev = dict(before)
    delta = [(le, n - prev.get(le, 0.0)) for le, n in now]
    count = delta[-1][1] if delta else 0
    if count <= 0:
        return 0, None, None
    return count, quantile(delta, 0.5), quantile(delta, 0.99)


def _histogram_buckets() -> dict[str, list[tuple[float, float]]]:
    """Cumulative ``(le, count)`` per endpoint of the serving latency histogram (this process)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in metrics.LATENCY.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["endpoint"] not in OPS_ROUTES:
                out.setdefault(sample.labels["endpoint"], []).append((float(sample.labels["le"]), sample.value))
    return {k: sorted(v) for k, v in out.items()}


def _api_published(topic: str) -> float:
    """Events this replica put on ``topic``: accepted POST /events objects plus impressions. The
    embedded broker (Tansu) reports a partition's end offset as its last batch's base offset, so the
    topic rate understates there; this one is exact for what came through the API."""
    total = 0.0
    for family in (*metrics.PUBLISHED.collect(), *metrics.IMPRESSIONS.collect()):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            if labels.get("topic") == topic and labels.get("outcome") == "accepted":
                total += sample.value
            elif "topic" not in labels and labels.get("outcome") in ("published", "ok", "accepted"):
                total += sample.value
    return total


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative buckets (linear inside a bucket, as Prometheus does)."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lo_le, lo_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lo_le
            return lo_le + (le - lo_le) * ((rank - lo_n) / (n - lo_n) if n > lo_n else 1.0)
        lo_le, lo_n = le, n
    return lo_le


class Sampler:
    """Appends one snapshot every ``cockpit.sample_s`` to the Redis history (a daemon thread)."""

    def __init__(
        self,
        s: Settings,
        status: Any,
        r: redis.Redis | None = None,
        kafka: bool = True,
        follower: Any = None,
    ):
        self.s, self.status = s, status  # status: () -> engine.status() dict
        self.follower = follower  # () -> {partition: next offset} of this replica's vector follower
        self.r = r if r is not None else connect(s)
        self.store = ModelStore.from_settings(s)
        self.kafka = kafka
        self.consumer: Any = None
        self.groups: dict[str, Any] = {}  # group id -> a consumer that only reads committed offsets
        self.prev: dict[str, Any] | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cockpit-sampler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for c in (self.consumer, *self.groups.values()):
            if c is not None:
                c.close()

    def _loop(self) -> None:
        period = self.s.cockpit.sample_s
        while not self.stop_event.wait(period - (time.time() % period)):
            slot = int(time.time() // period)
            try:
                if self.r.set(f"{self.s.redis.prefix}{SLOT}{slot}", "1", nx=True, ex=int(period * 3) + 1):
                    self.append(self.sample())
                else:
                    self.sample()  # keep the counters' baseline current for when this replica samples
            except Exception as e:  # the sampler must never take serving down
                log.warning("cockpit sample failed: %r", e)

    def append(self, point: dict | None) -> None:
        if point is None:
            return
        key = self.s.redis.prefix + HISTORY
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(point, separators=(",", ":")))
        pipe.ltrim(key, -self.s.cockpit.history_points, -1)
        pipe.execute()

    # --- one snapshot ------------------------------------------------------------------------

    def _counters(self) -> dict[str, Any]:
        """Cumulative counters now (rates are their deltas between two samples)."""
        s, p = self.s, self.s.redis.prefix
        n = s.topic.partitions
        spaces = keyspaces(s)
        pipe = self.r.pipeline(transaction=False)
        for topic in (s.topic.events, s.topic.catalog):
            for part in range(n):
                for key in offset_keys(s, s.consumers.group, topic, part):
                    pipe.get(key)
        for prefix in spaces:
            pipe.hgetall(f"{prefix}dlq:counts")
            pipe.hgetall(f"{prefix}q:counts")
        pipe.hgetall(p + LEARNER_STATS)
        res = pipe.execute()
        at = 0
        applied: dict[str, dict[int, int]] = {}
        for topic in (s.topic.events, s.topic.catalog):
            applied[topic] = {}
            for part in range(n):
                width = len(offset_keys(s, s.consumers.group, topic, part))
                stored = [int(x) for x in res[at : at + width] if x is not None]
                at += width
                if len(stored) == width:  # applied up to the keyspace furthest behind
                    applied[topic][part] = min(stored)
        applied_by_part, catalog_applied = applied[s.topic.events], applied[s.topic.catalog]
        ends = self._end_offsets(s.topic.events)
        dlq: Counter[str] = Counter()
        quarantine: Counter[str] = Counter()
        for k in range(len(spaces)):
            dlq.update({f: int(v) for f, v in cast(dict, res[at + 2 * k]).items()})
            quarantine.update({f: int(v) for f, v in cast(dict, res[at + 2 * k + 1]).items()})
        lag = _lag(ends, applied_by_part)
        catalog_ends = self._end_offsets(s.topic.catalog)
        consumers_catalog = _lag(catalog_ends, catalog_applied)
        lags = {
            "consumers": lag + consumers_catalog if lag is not None and consumers_catalog is not None else lag,
            "index-updater": _lag(catalog_ends, self._committed(s.index.updater_group, s.topic.catalog)),
            "learner": _lag(ends, self._committed(s.learner.group, s.topic.events)),
            "serving-vectors": _lag(
                self._end_offsets(s.topic.vectors) if self.follower is not None else None,
                self.follower() if self.follower is not None else {},
            ),
        }
        for service, records in lags.items():
            if records is not None:
                metrics.CONSUMER_LAG.labels(service).set(records)
        return {
            "time": time.time(),
            "applied": sum(applied_by_part.values()),
            "end": sum(ends.values()) if ends is not None else None,
            "lag": lag,
            "lags": lags,
            "api_in": _api_published(s.topic.events),
            "dlq": sum(dlq.values()),
            "quarantine": sum(quarantine.values()),
            "learner": parse_learner_stats(cast(dict, res[-1])),
            "latency": _histogram_buckets(),
            "fresh": _freshness_buckets(),
        }

    def _end_offsets(self, topic: str) -> dict[int, int] | None:
        if not self.kafka:
            return None
        try:
            if self.consumer is None:
                self.consumer = bus.make_consumer(self.s, group_id=None)
            tps = bus.all_partitions(self.consumer, topic, timeout_s=2)
            return {tp.partition: int(end) for tp, end in self.consumer.end_offsets(tps).items()}
        except Exception as e:
            log.debug("cockpit: no end offsets of %s: %r", topic, e)
            return None

    def _committed(self, group: str, topic: str) -> dict[int, int] | None:
        """A consumer group's committed offsets (read only: the consumer never joins the group)."""
        if not self.kafka:
            return None
        try:
            c = self.groups.get(group)
            if c is None:
                c = self.groups[group] = bus.make_consumer(self.s, group_id=group)
            return {tp.partition: int(c.committed(tp) or 0) for tp in bus.all_partitions(c, topic, timeout_s=2)}
        except Exception as e:
            log.debug("cockpit: no committed offsets of %s: %r", group, e)
            return None

    def sample(self) -> dict | None:
        """A snapshot with rates over the time since the previous call (None on the first call)."""
        now = self._counters()
        prev, self.prev = self.prev, now
        status = self.status()
        version = self.store.latest_version()
        try:
            m = self.store.meta(version).get("metrics", {}) if version else {}
        except KeyError:
            m = {}
        return history_point(now, prev, status, version, m)


def history_point(
    now: dict[str, Any], prev: dict[str, Any] | None, status: dict, version: int | None, m: dict
) -> dict | None:
    """One history point from two reads of the counters (``Sampler._counters``), serving's status
    and the served model's metrics; None without a previous read (rates need two)."""
    if prev is None:
        return None
    point: dict[str, Any] = {
        "t": int(now["time"] * 1000),
        "model_version": version,
        "served_version": status.get("model_version"),
        "auc": _round(m.get("click_auc")),
        "logloss": _round(m.get("click_logloss")),
        "challenger_logloss": _round(m.get("challenger_click_logloss")),
        "purchase_auc": _round(m.get("purchase_auc")),
        "examples": m.get("examples"),
        "index_items": status.get("index_items"),
        "lag": now["lag"],
        "lags": now["lags"],
        "feature_ks": now["learner"]["feature_ks"],
        "feature_ks_threshold": now["learner"]["feature_ks_threshold"],
    }
    dt = max(1e-6, now["time"] - prev["time"])

    def rate(key: str) -> float | None:
        if now[key] is None or prev[key] is None:
            return None
        return round(max(0, now[key] - prev[key]) / dt, 3)

    point.update(in_per_s=rate("end"), api_in_per_s=rate("api_in"), out_per_s=rate("applied"))
    point["click_rate"], point["purchase_rate"] = _per_item_shown(now["learner"]["counts"], prev["learner"]["counts"])
    point["dlq_per_s"] = rate("dlq")
    point["quarantine_per_s"] = rate("quarantine")
    _n, fresh50, fresh99 = _delta_quantiles(now["fresh"], prev["fresh"])
    point["searchable_p50_s"] = round(fresh50, 3) if fresh50 is not None else None
    point["searchable_p99_s"] = round(fresh99, 3) if fresh99 is not None else None
    latency: dict[str, dict[str, float | None]] = {}
    for endpoint, buckets in now["latency"].items():
        count, p50, p99 = _delta_quantiles(buckets, prev["latency"].get(endpoint, []))
        if count <= 0:
            continue
        latency[endpoint] = {
            "rps": round(count / dt, 3),
            "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
            "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        }
    point["latency"] = latency
    return point


def _round(v: Any, digits: int = 4) -> Any:
    """Chart precision (a model's metrics carry 17 digits; the history's size bound assumes 4)."""
    return round(v, digits) if isinstance(v, float) else v


def _lag(ends: dict[int, int] | None, positions: dict[int, int] | None) -> int | None:
    """Records between the partition ends and ``positions`` (clamped at 0 per partition: Tansu's
    end offset is its last batch's base offset, so positions can run ahead of it there)."""
    if ends is None or positions is None:
        return None
    return sum(max(0, end - positions.get(part, 0)) for part, end in ends.items())


def _per_item_shown(now: dict[str, int], before: dict[str, int]) -> tuple[float | None, float | None]:
    """Click and purchase events per item shown in impressions, between two learner stats reads."""
    shown = now.get("items_shown", 0) - before.get("items_shown", 0)
    if shown <= 0:
        return None, None

    def per(kind: str) -> float:
        return round(max(0, now.get(f"events:{kind}", 0) - before.get(f"events:{kind}", 0)) / shown, 4)

    return per("click"), per("purchase")


def history(s: Settings, r: redis.Redis, limit: int | None = None) -> list[dict]:
    raw = cast(list[str], r.lrange(s.redis.prefix + HISTORY, -(limit or s.cockpit.history_points), -1))
    return [json.loads(x) for x in raw]


def dashboard_data(s: Settings, status: dict, drift: list[dict]) -> dict:
    """Everything the cockpit page draws, as one JSON document."""
    r = connect(s)
    try:
        points = history(s, r)
        actions = [json.loads(x) for x in cast(list[str], r.lrange(s.redis.prefix + ACTIONS, 0, -1))]
        dlq: Counter[str] = Counter()  # per keyspace on a Redis Cluster: summed
        quarantine: Counter[str] = Counter()
        for prefix in keyspaces(s):
            dlq.update({k: int(v) for k, v in cast(dict, r.hgetall(f"{prefix}dlq:counts")).items()})
            quarantine.update({k: int(v) for k, v in cast(dict, r.hgetall(f"{prefix}q:counts")).items()})
        rules = [rule.model_dump(mode="json") for rule in RuleStore(r, shared_prefix(s)).all()]
    finally:
        r.close()
    store = ModelStore.from_settings(s)
    models = store.list()[-100:]
    for m in models:
        m["created"] = human_ms(m.get("created_ms"))
    for a in actions:
        a["time"] = human_ms(a.get("t"))
    for d in drift:
        d["time"] = human_ms(d.get("detected_ms"))
    top = lambda counts: sorted(counts.items(), key=lambda kv: -kv[1])[:5]  # noqa: E731
    return {
        "now_ms": int(time.time() * 1000),
        "sample_s": s.cockpit.sample_s,
        "history_points_max": s.cockpit.history_points,
        "feature_window": s.drift.feature_window,
        "ks_alpha": KS_ALPHA,
        "serving": status,
        "serving_version": store.latest_version(),
        "history": points,
        "models": models[::-1],
        "actions": actions[::-1],
        "drift": drift[::-1],
        "dead_letters": {"total": sum(dlq.values()), "top": top(dlq)},
        "quarantine": {"total": sum(quarantine.values()), "top": top(quarantine)},
        "rules": rules,  # merchandising: listed (and edited through /admin/rules) on the page
    }


class _DriftCache:
    """The drift topic read at most every ``ttl_s`` (each read opens a consumer)."""

    def __init__(self, s: Settings, ttl_s: float = 5.0):
        self.s, self.ttl_s = s, ttl_s
        self.at, self.value = 0.0, cast(list[dict], [])
        self.lock = threading.Lock()

    def get(self) -> list[dict]:
        with self.lock:
            if time.monotonic() - self.at > self.ttl_s:
                self.value = recent_drift_events(self.s, limit=50)
                self.at = time.monotonic()
            return [dict(d) for d in self.value]


def cockpit_routes(s: Settings, engine: Any) -> APIRouter:
    router = APIRouter()
    drift = _DriftCache(s)

    @router.get("/dashboard/data")
    async def dashboard_data_route() -> dict:
        """History (bounded, in Redis), model versions, operator actions and drift events, as JSON."""
        return await run_in_threadpool(lambda: dashboard_data(s, engine.status(), drift.get()))

    return router
