"""Prometheus metrics of the ingestion service (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "streamrec_consumer_events_total",
    "Records applied to the online features, by event type",
    ["type"],
)
DEAD_LETTERS = Counter(
    "streamrec_consumer_dead_letters_total",
    "Records sent to the dead-letter topic, by reason code",
    ["reason"],
)
CATALOG_REJECTS = Counter(
    "streamrec_consumer_catalog_rejects_total",
    "Invalid catalog records skipped here; index_updater owns their dead letters (one owner per topic)",
    ["reason"],
)
QUARANTINED = Counter(
    "streamrec_consumer_quarantined_total",
    "Events quarantined by the bot filter, by reason",
    ["reason"],
)
NOT_KEYED_BY_USER = Counter(
    "streamrec_consumer_events_not_keyed_by_user_total",
    "Valid events whose Kafka key is not their user_id: one user's events can then land in several "
    "partitions (and keyspaces on a Redis Cluster), out of order, with split per-user state",
)
REPLAYED = Counter(
    "streamrec_consumer_replayed_records_total",
    "Records delivered again after a crash or rebalance and skipped because already applied",
)
REDIS_ERRORS = Counter(
    "streamrec_consumer_redis_errors_total",
    "Redis calls that failed (the batch is retried)",
)
LAG = Gauge(
    "streamrec_consumer_lag_records",
    "Records between the partition end and our position",
    ["topic", "partition"],
)
BATCH_SECONDS = Histogram(
    "streamrec_consumer_batch_processing_seconds",
    "Time from a poll returning to its effects being durable and committed",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
