"""Writes deploy/grafana/dashboards/streamrec.json: the ops + drift dashboard, one panel per row
of (title, PromQL). Edit the list here and re-run; tests check every metric exists in the code."""

from __future__ import annotations

import json
from pathlib import Path

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Serving",
        "reqps",
        [
            ("requests/s by endpoint", "sum by (endpoint) (rate(streamrec_serving_requests_total[1m]))"),
            ("errors/s", 'sum(rate(streamrec_serving_requests_total{status=~"5.."}[1m]))'),
            ("reads shed/s {{endpoint}}", "sum by (endpoint) (rate(streamrec_serving_read_shed_total[1m]))"),
        ],
    ),
    (
        "Serving CPU per /search by stage (the budget: serving/stages.py)",
        "s",
        [
            (
                "{{stage}}",
                'sum by (stage) (rate(streamrec_serving_stage_cpu_seconds_total{route="search"}[5m])) '
                '/ scalar(sum(rate(streamrec_serving_requests_total{endpoint="search"}[5m])))',
            ),
        ],
    ),
    (
        "Serving latency p50 / p99",
        "s",
        [
            (
                "p50 {{endpoint}}",
                "histogram_quantile(0.5, sum by (le, endpoint) "
                "(rate(streamrec_serving_request_duration_seconds_bucket[5m])))",
            ),
            (
                "p99 {{endpoint}}",
                "histogram_quantile(0.99, sum by (le, endpoint) "
                "(rate(streamrec_serving_request_duration_seconds_bucket[5m])))",
            ),
        ],
    ),
    (
        "Garbage-collector pauses (serving freezes the survivors of each full collection)",
        "s",
        [
            (
                "p99 generation {{generation}}",
                "histogram_quantile(0.99, sum by (le, generation) (rate(streamrec_gc_pause_seconds_bucket[5m])))",
            ),
        ],
    ),
    (
        "Model and index versions served",
        "none",
        [
            ("model version", "max(streamrec_serving_model_version)"),
            ("learner version", "max(streamrec_learner_model_version)"),
            ("index items", "max(streamrec_serving_index_items)"),
        ],
    ),
    (
        "Events ingested/s by type",
        "ops",
        [
            ("{{type}}", "sum by (type) (rate(streamrec_consumer_events_total[1m]))"),
        ],
    ),
    (
        "Consumer lag (records)",
        "none",
        [
            ("{{topic}}/{{partition}}", "sum by (topic, partition) (streamrec_consumer_lag_records)"),
        ],
    ),
    (
        "Consumer lag per service (records, as serving's cockpit sampler reads it)",
        "none",
        [
            ("{{service}}", "max by (service) (streamrec_serving_observed_consumer_lag_records)"),
        ],
    ),
    (
        "Dead letters and quarantine/s by reason",
        "ops",
        [
            ("dlq {{reason}}", "sum by (reason) (rate(streamrec_consumer_dead_letters_total[5m]))"),
            ("quarantine {{reason}}", "sum by (reason) (rate(streamrec_consumer_quarantined_total[5m]))"),
            ("redis errors", "sum(rate(streamrec_consumer_redis_errors_total[5m]))"),
            ("not keyed by user", "sum(rate(streamrec_consumer_events_not_keyed_by_user_total[5m]))"),
        ],
    ),
    (
        "Consumer batch latency p99",
        "s",
        [
            (
                "p99",
                "histogram_quantile(0.99, sum by (le) (rate(streamrec_consumer_batch_processing_seconds_bucket[5m])))",
            ),
        ],
    ),
    (
        "Drift: prequential AUC",
        "percentunit",
        [
            ("{{task}} {{model}}", "streamrec_learner_auc"),
        ],
    ),
    (
        "Drift: prequential log-loss",
        "none",
        [
            ("{{task}} {{model}}", "streamrec_learner_logloss"),
        ],
    ),
    (
        "Drift: per-feature KS distance (reference vs latest 500 values)",
        "none",
        [
            ("{{feature}}", "max by (feature) (streamrec_learner_feature_drift_ks)"),
            ("KS critical value (alpha 0.005, n = m = 500)", "vector(0.1095)"),
        ],
    ),
    (
        "Click and purchase rate (events per item shown)",
        "percentunit",
        [
            (
                "clicks per item shown",
                'sum(rate(streamrec_learner_events_total{type="click"}[5m]))'
                " / clamp_min(sum(rate(streamrec_learner_items_shown_total[5m])), 1e-9)",
            ),
            (
                "purchases per item shown",
                'sum(rate(streamrec_learner_events_total{type="purchase"}[5m]))'
                " / clamp_min(sum(rate(streamrec_learner_items_shown_total[5m])), 1e-9)",
            ),
        ],
    ),
    (
        "Drift detections, promotions, rollbacks",
        "none",
        [
            (
                "{{detector}} on {{what}}",
                "sum by (detector, what) (increase(streamrec_learner_drift_detections_total[10m]))",
            ),
            ("promotions", "sum(increase(streamrec_learner_promotions_total[10m]))"),
            ("rollbacks", "sum(increase(streamrec_learner_rollbacks_total[10m]))"),
            ("challenger running", "max(streamrec_learner_challenger_running)"),
        ],
    ),
    (
        "Learner throughput",
        "ops",
        [
            ("examples/s {{label}}", "sum by (label) (rate(streamrec_learner_examples_total[1m]))"),
            ("updates/s", "sum(rate(streamrec_learner_updates_total[1m]))"),
        ],
    ),
    (
        "Index: items embedded/s and snapshot age",
        "none",
        [
            ("embedded/s", "sum(rate(streamrec_index_items_embedded_total[1m]))"),
            ("snapshot age (s)", "max(streamrec_index_snapshot_age_seconds)"),
            ("index items", "max(streamrec_index_items)"),
        ],
    ),
    (
        "Index batch latency p99",
        "s",
        [
            ("p99", "histogram_quantile(0.99, sum by (le) (rate(streamrec_index_batch_seconds_bucket[5m])))"),
        ],
    ),
    (
        "Freshness: catalog change → searchable, label → model published",
        "s",
        [
            (
                "searchable p50",
                "histogram_quantile(0.5, sum by (le) (rate(streamrec_index_event_to_searchable_seconds_bucket[5m])))",
            ),
            (
                "searchable p99",
                "histogram_quantile(0.99, sum by (le) (rate(streamrec_index_event_to_searchable_seconds_bucket[5m])))",
            ),
            (
                "model published p99",
                "histogram_quantile(0.99, sum by (le) (rate(streamrec_learner_label_to_publish_seconds_bucket[5m])))",
            ),
        ],
    ),
    (
        "Alerts: model publishes, dead-letter share",
        "none",
        [
            ("model versions published / 15m", "sum(increase(streamrec_learner_publishes_total[15m]))"),
            (
                "dead-letter share",
                "sum(rate(streamrec_consumer_dead_letters_total[5m])) / clamp_min(sum(rate("
                "streamrec_consumer_events_total[5m])) + sum(rate(streamrec_consumer_dead_letters_total[5m])), 1e-9)",
            ),
        ],
    ),
]


def build() -> dict:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(65 + j),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "prometheus"},
                    }
                    for j, (legend, expr) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": "streamrec",
        "title": "streamrec",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
        "tags": ["streamrec"],
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "streamrec.json"
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
