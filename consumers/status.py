"""What ``streamrec status`` prints for the ingestion service: thresholds, decisions, lag."""

from __future__ import annotations

from streamrec import bus
from streamrec.features import FeatureStore
from streamrec.settings import Settings


def summary(settings: Settings) -> dict:
    """A JSON-able dict: bot thresholds and decisions, dead letters, per-partition progress."""
    fs = FeatureStore.from_settings(settings)
    try:
        partitions = {}
        for topic in (settings.topic.events, settings.topic.catalog):
            lag = bus.group_lag(settings, settings.consumers.group, topic)
            for p, records in sorted(lag.items()):
                applied = fs.r.get(fs.keys.offset(settings.consumers.group, topic, p))
                partitions[f"{topic}[{p}]"] = {
                    "lag": records,
                    "applied_offset": int(applied) if applied is not None else None,
                    "outbox_pending": fs.r.llen(fs.keys.outbox(settings.consumers.group, topic, p)),
                }
        return {
            "group": settings.consumers.group,
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
        fs.r.close()
