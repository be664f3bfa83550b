"""Prometheus metrics of the serving API (exposed on its own /metrics). REQUESTS and LATENCY are
recorded for every routed request by `serving.app.RequestMetrics`, labelled by route name."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("streamrec_serving_requests_total", "API requests", ["endpoint", "status"])
LATENCY = Histogram(
    "streamrec_serving_request_duration_seconds",
    "API latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MODEL_VERSION = Gauge("streamrec_serving_model_version", "ranking head version being served")
MODEL_SWAPS = Counter("streamrec_serving_model_swaps_total", "hot-swaps of the ranking head")
INDEX_ITEMS = Gauge("streamrec_serving_index_items", "items in the serving replica's index")
INDEX_VERSION = Gauge("streamrec_serving_index_version", "batches applied to the serving replica")
IMPRESSIONS = Counter("streamrec_serving_impressions_total", "impression events published", ["outcome"])
PUBLISHED = Counter("streamrec_serving_published_total", "POST /events and /catalog payloads", ["topic", "outcome"])
CONSUMER_LAG = Gauge(
    "streamrec_serving_observed_consumer_lag_records",
    "records behind the topic end per consuming service, as the cockpit sampler reads it "
    "(consumers: applied offsets in Redis; index-updater, learner: committed offsets; serving-vectors: this replica)",
    ["service"],
)
PUBLISH_SHED = Counter(
    "streamrec_serving_publish_shed_total", "write requests answered 503 by backpressure, unread", ["topic"]
)
READS_SHED = Counter(
    "streamrec_serving_read_shed_total",
    "reads answered 503 at once because serving.max_inflight_reads were in flight (serving/backpressure.py)",
    ["endpoint"],
)
