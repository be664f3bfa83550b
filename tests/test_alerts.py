"""deploy/alerts.yml and deploy/prometheus.yml as Prometheus itself reads them (`promtool`, from
Debian's `prometheus` package). The metric names they use are checked in tests/test_compose.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install -y prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    r = _promtool("check", "rules", str(ROOT / "deploy" / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout + r.stderr


@needs_promtool
def test_promtool_accepts_the_prometheus_config_with_its_rule_file():
    r = _promtool("check", "config", str(ROOT / "deploy" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_alerts_fire_on_synthetic_series(tmp_path):
    """Unit tests of rules with promtool's rule tester: drift, lag, lag per service, DLQ share,
    publishes, events not keyed by user."""
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # the tester compares them too; labels are what we check
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "t.yml").write_text(
        """
rule_files: [alerts.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'streamrec_learner_drift_detections_total{detector="adwin_loss",what="prequential_click_loss"}'
        values: '0 0 1 1 1'
      - series: 'streamrec_consumer_lag_records{topic="streamrec.events",partition="0"}'
        values: '20000x10'
      - series: 'streamrec_serving_observed_consumer_lag_records{service="learner"}'
        values: '50000x10'
      - series: 'streamrec_serving_observed_consumer_lag_records{service="index-updater"}'
        values: '0x10'
      - series: 'streamrec_consumer_events_total{type="click"}'
        values: '0+60x20'
      - series: 'streamrec_consumer_dead_letters_total{reason="bad_json"}'
        values: '0+30x20'
      - series: 'streamrec_learner_publishes_total{reason="periodic"}'
        values: '0+1x30'
      - series: 'streamrec_consumer_events_not_keyed_by_user_total'
        values: '0x10 1x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: StreamrecDriftDetected
        exp_alerts:
          - exp_labels: {severity: info, detector: adwin_loss, what: prequential_click_loss}
      - eval_time: 10m
        alertname: StreamrecConsumerLagHigh
        exp_alerts:
          - exp_labels: {severity: warning, topic: streamrec.events}
      - eval_time: 10m
        alertname: StreamrecServiceLagHigh
        exp_alerts:
          - exp_labels: {severity: warning, service: learner}
      - eval_time: 15m
        alertname: StreamrecDeadLetterRateHigh
        exp_alerts:
          - exp_labels: {severity: warning}
      - eval_time: 25m
        alertname: StreamrecModelNotPublished
        exp_alerts: []
      - eval_time: 5m
        alertname: StreamrecEventsNotKeyedByUser
        exp_alerts: []
      - eval_time: 12m
        alertname: StreamrecEventsNotKeyedByUser
        exp_alerts:
          - exp_labels: {severity: warning}
"""
    )
    r = _promtool("test", "rules", str(tmp_path / "t.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
