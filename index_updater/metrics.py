"""Prometheus metrics of the index updater (replica-side ones live in streamrec/vector_index/metrics.py,
including ``streamrec_index_event_to_searchable_seconds``, observed by every replica)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CATALOG_RECORDS = Counter(
    "streamrec_index_catalog_records_total",
    "catalog records handled, by outcome (embedded, reused_vector, unchanged, deleted, dead_lettered)",
    ["outcome"],
)
ITEMS_EMBEDDED = Counter("streamrec_index_items_embedded_total", "items run through the encoder")
EMBED_SECONDS = Counter(
    "streamrec_index_embed_seconds_total", "seconds the encoder spent embedding (busy share: rate of this)"
)
EMBED_RATE = Gauge("streamrec_index_embed_items_per_second", "encoder throughput of the last batch")
BATCH_SECONDS = Histogram(
    "streamrec_index_batch_seconds",
    "one catalog batch: validate, embed, publish, acknowledged",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
BACKLOG = Gauge("streamrec_index_backlog_records", "catalog records read ahead, waiting for the encoder")
INDEX_ITEMS = Gauge("streamrec_index_items", "live items in the index the updater snapshots")
SNAPSHOT_AGE = Gauge("streamrec_index_snapshot_age_seconds", "age of the newest index snapshot written")
SNAPSHOT_SECONDS = Histogram(
    "streamrec_index_snapshot_write_seconds",
    "time to write one snapshot",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
