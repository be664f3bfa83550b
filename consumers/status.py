"""What ``streamrec status`` prints for the ingestion service: thresholds, decisions, lag."""

from __future__ import annotations

from streamrec import bus
from streamrec.features import Keys, open_features
from streamrec.settings import Settings
from streamrec.store import connect, keyspaces, offset_keys


def summary(settings: Settings) -> dict:
    """A JSON-able dict: bot thresholds and decisions, dead letters, per-partition progress (on a
    Redis Cluster, a catalog partition is applied up to the keyspace furthest behind)."""
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
            "stream_clock_ms": fs.clock_ms(),
            "features": settings.features.model_dump(),
        }
    finally:
        r.close()
