"""Prometheus metrics of the learner (names ``streamrec_learner_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUC = Gauge("streamrec_learner_auc", "rolling prequential ROC AUC", ["task", "model"])
LOGLOSS = Gauge("streamrec_learner_logloss", "rolling prequential log-loss", ["task", "model"])
EXAMPLES = Counter("streamrec_learner_examples_total", "training examples learned from", ["label"])
UPDATES = Counter("streamrec_learner_updates_total", "micro-batch updates of the champion")
EVENTS = Counter("streamrec_learner_events_total", "events read from the events topic", ["type"])
UNJOINABLE = Gauge("streamrec_learner_unjoinable_outcomes", "outcomes that matched no impression")
PENDING = Gauge("streamrec_learner_pending_impressions", "impressions waiting for their label window")
FEATURE_ROWS = Gauge(
    "streamrec_learner_feature_rows", "impression rows since start, by origin (served / recomputed)", ["source"]
)
MODEL_VERSION = Gauge("streamrec_learner_model_version", "version the learner last published or adopted")
PUBLISHES = Counter("streamrec_learner_publishes_total", "model versions published", ["reason"])
DRIFT = Counter("streamrec_learner_drift_detections_total", "drift detections", ["detector", "what"])
CHALLENGER = Gauge("streamrec_learner_challenger_running", "1 while a challenger trains beside the champion")
PROMOTIONS = Counter("streamrec_learner_promotions_total", "challengers promoted to champion")
ROLLBACKS = Counter("streamrec_learner_rollbacks_total", "versions rolled back", ["by"])
LABEL_TO_PUBLISH = Histogram(
    "streamrec_learner_label_to_publish_seconds",
    "labelled event read → a model that learned from it published",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
QUERY_TUNING = Counter(
    "streamrec_learner_query_tuning_total",
    "query-encoder trainings, by outcome (published / rejected by the held-out gate / failed)",
    ["outcome"],
)
QUERY_ENCODER_VERSION = Gauge("streamrec_learner_query_encoder_version", "query-encoder version last published")
CHECKPOINT_SECONDS = Histogram(
    "streamrec_learner_checkpoint_seconds", "time to write a checkpoint", buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
)


def export(core_metrics: dict) -> None:
    """Copy the core's rolling metrics into the gauges (NaN-free values only)."""
    for model, prefix in (("champion", ""), ("challenger", "challenger_")):
        for task in ("click", "purchase"):
            a = core_metrics.get(f"{prefix}{task}_auc")
            ll = core_metrics.get(f"{prefix}{task}_logloss")
            if a is not None:
                AUC.labels(task, model).set(a)
            if ll is not None:
                LOGLOSS.labels(task, model).set(ll)
    CHALLENGER.set(1 if core_metrics.get("challenger_running") else 0)


REDIS_ERRORS = Counter(
    "streamrec_learner_redis_errors_total", "Redis calls that failed and were retried (the event waited, not lost)"
)
FEATURE_DRIFT = Gauge(
    "streamrec_learner_feature_drift_ks",
    "KS distance of a watched feature: reference window (champion's start) vs the latest window",
    ["feature"],
)
ITEMS_SHOWN = Counter("streamrec_learner_items_shown_total", "items listed in impression events read")
FUSION_JOINS = Gauge(
    "streamrec_learner_fusion_joins",
    "/recommend impressions and the session's next event, by outcome (joined = learned from), in the learner's state",
    ["outcome"],
)
FUSION_RR = Gauge(
    "streamrec_learner_fusion_reciprocal_rank",
    "recent test-then-train reciprocal rank (at 20) of the next item, by way of ordering (fixed / learned / rerank)",
    ["mode"],
)
FUSION_HIT = Gauge(
    "streamrec_learner_fusion_hit_rate",
    "recent test-then-train share of next items in the top 20, by way of ordering (fixed / learned / rerank)",
    ["mode"],
)
POSITION_BIAS_ETA = Gauge(
    "streamrec_learner_position_bias_eta", "examination at 0-based position k is (1/(k+1))^eta, estimated from swaps"
)
SEARCH_HEAD_EARNED = Gauge(
    "streamrec_learner_search_head_earned", "1 while the head's search scorecard lets serving add it to /search"
)
SEARCH_CARD_GAP = Gauge(
    "streamrec_learner_search_card_gap",
    "IPS-weighted DCG gain of first clicks on unseen queries: head order minus fused order",
)
CLICKLESS_SEARCHES = Gauge("streamrec_learner_clickless_searches", "search lists closed without a click, not learned")
