"""docker-compose.yml cannot run here (no Docker engine), so check what can be checked: it parses,
every STREAMREC_* variable is a real setting, every service reaches Kafka and Redis, and
Prometheus scrapes each service on the port that service exposes."""

import os
import re
from pathlib import Path

import yaml

from streamrec.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STREAMREC_SERVICES = {"consumers": "consume", "index-updater": "index", "learner": "learn", "serving": "serve"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_infrastructure_and_the_four_services():
    services = _compose()["services"]
    assert {"kafka", "redis", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for name, command in STREAMREC_SERVICES.items():
        assert services[name]["command"] == [command]
        assert services[name]["build"] == "."


def _settings(env: dict, monkeypatch) -> Settings:
    """What a service started with exactly ``env`` reads (the test's own STREAMREC_* cleared)."""
    for name in [k for k in os.environ if k.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(key, str(_interpolate(value)))
    return Settings()


def test_every_streamrec_variable_is_a_setting_and_infrastructure_is_configured(monkeypatch):
    for name in STREAMREC_SERVICES:
        env = _compose()["services"][name]["environment"]
        keys = [k for k in env if k.startswith("STREAMREC_")]
        assert keys, name
        for key in keys:
            assert key in Settings.env_names(), f"{name}: {key} is not a setting"
        assert env["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert _interpolate(env["STREAMREC_REDIS_URL"]).startswith("redis://redis:")
        s = _settings(env, monkeypatch)  # values validate
        assert s.kafka.bootstrap == "kafka:9092" and s.topic.partitions == int(env["STREAMREC_TOPIC_PARTITIONS"])


def _interpolate(value):
    """Compose's ``${VAR:-default}`` → default, ``${VAR:?message}`` → a stand-in the operator must set."""
    if not isinstance(value, str):
        return value
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "set-by-operator", value)


def test_compose_requires_api_keys_for_writes_and_admin(monkeypatch):
    env = _compose()["services"]["serving"]["environment"]
    for name in ("STREAMREC_API_PRODUCER_KEYS", "STREAMREC_API_ADMIN_KEYS"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), f"{name} must be required (${{{name}:?…}})"
    s = _settings(env, monkeypatch)
    assert s.api.producer_keys == ["set-by-operator"] and s.api.admin_keys == ["set-by-operator"]
    assert s.api.rate_limit_per_s > 0


def test_prometheus_scrapes_each_service_where_it_serves_metrics():
    services = _compose()["services"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]}
    for name in STREAMREC_SERVICES:
        env = services[name]["environment"]
        port = env.get("STREAMREC_METRICS_PORT") or env.get("STREAMREC_HTTP_PORT")
        assert f"{name}:{port}" in targets, f"prometheus does not scrape {name}:{port}"


def test_dockerfile_installs_the_pinned_cpu_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "whl/cpu" in dockerfile


def test_grafana_dashboard_is_current_and_queries_only_metrics_the_code_defines():
    import json
    import runpy

    built = runpy.run_path(str(ROOT / "deploy" / "grafana" / "build_dashboard.py"))["build"]()
    committed = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "streamrec.json").read_text())
    assert committed == built, "re-run deploy/grafana/build_dashboard.py"
    for panel in committed["panels"]:
        for target in panel["targets"]:
            _assert_exported(target["expr"], panel["title"])


def _code_source() -> str:
    return "".join(
        p.read_text()
        for d in ("serving", "consumers", "learner", "index_updater", "streamrec")
        for p in (ROOT / d).rglob("*.py")
    )


def _assert_exported(expr: str, where: str) -> None:
    """Every streamrec_* metric in a PromQL expression is defined (quoted) in the services' code."""
    source = _code_source()
    metrics = re.findall(r"streamrec_[a-z0-9_]+", expr)
    for metric in metrics:
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        assert f'"{base}"' in source, f"{where}: {base} is not defined anywhere"


def test_alert_rules_use_only_metrics_the_code_exports_and_prometheus_loads_them():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            assert "streamrec_" in rule["expr"], rule["alert"]
            _assert_exported(rule["expr"], rule["alert"])
    assert {
        "StreamrecDriftDetected",
        "StreamrecModelNotPublished",
        "StreamrecConsumerLagHigh",
        "StreamrecDeadLetterRateHigh",
        "StreamrecFreshnessSLOBroken",
        "StreamrecServingLatencyHigh",
    } <= names


def test_the_cluster_profile_forms_three_masters_with_a_replica_each_and_the_services_can_use_it(monkeypatch):
    """``docker compose --profile cluster``: six nodes and a one-shot init that forms the cluster, which
    the services wait for; pointed at it (the variables the file's header names), they validate."""
    services = _compose()["services"]
    nodes = sorted(n for n in services if n.startswith("redis-node-"))
    assert len(nodes) == 6 and all(services[n]["profiles"] == ["cluster"] for n in nodes)
    assert all("--cluster-enabled yes" in " ".join(services[n]["command"]) for n in nodes)
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(nodes) and "--cluster-replicas 1" in " ".join(init["command"])
    for name in STREAMREC_SERVICES:
        assert services[name]["depends_on"]["redis-cluster-init"]["required"] is False  # without the profile
        env = services[name]["environment"] | {
            "STREAMREC_REDIS_URL": "redis://redis-node-1:6379/0",
            "STREAMREC_REDIS_CLUSTER": "true",
            "STREAMREC_REDIS_SHARDS": "3",
            "STREAMREC_REDIS_REPLICA_ACKS": "1",
        }
        s = _settings(env, monkeypatch)
        assert (s.redis.cluster, s.redis.shards, s.redis.replica_acks) == (True, 3, 1)
