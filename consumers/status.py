"""What ``streamrec status`` prints for the ingestion service: thresholds, decisions, lag."""

from __future__ import annotations

from typing import cast

import redis
from redis.cluster import RedisCluster

from streamrec import bus
from streamrec.features import Keys, open_features
from streamrec.features.layout import shard_of
from streamrec.settings import Settings
from streamrec.store import connect, keyspaces, offset_keys


def keyspace_report(settings: Settings, r: redis.Redis) -> list[dict]:
    """Where each feature keyspace lives (docs/REDIS-CLUSTER.md): its master, the events partitions
    it applies, and that master's memory and eviction policy (a cluster's masters are configured
    one by one). One row on a single Redis."""
    prefixes = keyspaces(settings)
    rows = []
    for k, prefix in enumerate(prefixes):
        if isinstance(r, RedisCluster):
            node = r.get_node_from_key(prefix + "x")
            master, info = node.name, cast(dict, r.info("memory", target_nodes=node))
        else:
            kw = r.connection_pool.connection_kwargs
            master, info = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}", cast(dict, r.info("memory"))
        rows.append(
            {
                "keyspace": prefix,
                "master": master,
                "events_partitions": [p for p in range(settings.topic.partitions) if shard_of(p, len(prefixes)) == k],
                "used_memory": int(info["used_memory"]),
                "maxmemory": int(info.get("maxmemory", 0) or 0),
                "maxmemory_policy": str(info.get("maxmemory_policy", "")),
            }
        )
    return rows


def summary(settings: Settings) -> dict:
    """A JSON-able dict: bot thresholds and decisions, dead letters, per-partition progress (on a
    Redis Cluster, a catalog partition is applied up to the keyspace furthest behind), keyspaces."""
    fs = open_features(settings)
    r = connect(settings)
    group = settings.consumers.group
    try:
        partitions = {}
        for topic in (settings.topic.events, settings.topic.catalog):
            lag = bus.group_lag(settings, group, topic)
            for p, records in sorted(lag.items()):
                stored = [r.get(key) for key in offset_keys(settings, group, topic, p)]
                outboxes = [Keys(prefix).outbox(group, topic, p) for prefix in keyspaces(settings)]
                partitions[f"{topic}[{p}]"] = {
                    "lag": records,
                    "applied_offset": None if None in stored else min(int(x) for x in stored if x is not None),
                    "outbox_pending": sum(int(r.llen(key)) for key in outboxes),
                }
        return {
            "group": group,
            "bot_filter": {
                "thresholds": settings.bot.model_dump(),
                "quarantined": fs.quarantine_counts(),
                "recent_decisions": fs.recent_quarantine(10),
                "topic": settings.topic.quarantine,
            },
            "dead_letters": {"counts": fs.dead_letter_counts(), "topic": settings.topic.dlq},
            "partitions": partitions,
            "keyspaces": keyspace_report(settings, r),
            "stream_clock_ms": fs.clock_ms(),
            "features": settings.features.model_dump(),
        }
    finally:
        r.close()
