"""Replica-side Prometheus metrics (index_updater's own are in index_updater/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPLICA_APPLIED = Counter("streamrec_index_replica_records_total", "vector records applied by replicas", ["kind"])
REPLICA_BAD = Counter(
    "streamrec_index_replica_bad_records_total", "vector records a replica could not decode (logged and skipped)"
)
EVENT_TO_SEARCHABLE = Histogram(
    "streamrec_index_event_to_searchable_seconds",
    "catalog event appended → its vector searchable in a replica",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
REPLICA_SIZE = Gauge("streamrec_index_replica_items", "live items in the replica index")
REBUILDS = Counter("streamrec_index_rebuilds_total", "background index rebuilds", ["why"])
