"""One settings tree: each group reads ``STREAMREC_<GROUP>_<FIELD>``, the services read the groups."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from learner.drift import DriftMonitor
from learner.estimator import OnlineRanker
from learner.online import OnlineLearner
from streamrec.settings import RENAMED, DriftSettings, Settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_env_names_reach_the_groups_and_the_services(clean_env):
    clean_env.setenv("STREAMREC_FEATURE_RECENT_CAP", "40")
    clean_env.setenv("STREAMREC_BOT_USER_LIMIT", "7")
    clean_env.setenv("STREAMREC_SEARCH_MEMORY_PRIOR", "5")
    clean_env.setenv("STREAMREC_RECOMMEND_WEIGHT_STAN", "0.5")
    clean_env.setenv("STREAMREC_LEARNER_LR", "0.01")
    clean_env.setenv("STREAMREC_DRIFT_FEATURES", '["price_log"]')
    clean_env.setenv("STREAMREC_API_PRODUCER_KEYS", "a, b,")
    clean_env.setenv("STREAMREC_STATE_DIR", "/tmp/elsewhere")
    s = Settings()
    assert (s.features.recent_cap, s.bot.user_limit, s.search.memory_prior) == (40, 7, 5.0)
    assert s.recommend.weights["stan"] == 0.5 and s.api.producer_keys == ["a", "b"]
    assert str(s.state_dir) == "/tmp/elsewhere"
    core = OnlineLearner(OnlineRanker(lr=s.learner.lr, seed=0), s.learner, s.drift)
    assert core.config.lr == 0.01 and core.monitor.feature_names == ["price_log"]


def test_a_name_from_before_the_groups_is_refused_with_its_new_name(clean_env):
    clean_env.setenv("STREAMREC_SERVING_SEARCH_MEMORY_PRIOR", "5")
    with pytest.raises(
        ValidationError, match="STREAMREC_SERVING_SEARCH_MEMORY_PRIOR is now STREAMREC_SEARCH_MEMORY_PRIOR"
    ):
        Settings()
    assert RENAMED["STREAMREC_MODEL_POLL_S"] == "STREAMREC_SERVING_MODEL_POLL_S"


def test_a_misspelt_setting_of_a_group_is_an_error_not_a_default(clean_env):
    clean_env.setenv("STREAMREC_SEARCH_MEMORY_PRIORR", "5")
    with pytest.raises(ValidationError, match="search.memory_priorr"):
        Settings()
    with pytest.raises(ValidationError, match="memory_priorr"):
        Settings().replace(search={"memory_priorr": 5})


def test_replace_validates_and_keeps_what_it_does_not_change(clean_env):
    base = Settings(redis={"prefix": "t:"})
    s = base.replace(search={"memory_prior": 3.0}, http={"port": 9999})
    assert (s.search.memory_prior, s.http.port, s.redis.prefix) == (3.0, 9999, "t:")
    assert s.search.memory_weight == base.search.memory_weight and base.search.memory_prior != 3.0
    with pytest.raises(ValidationError, match="search.memory_prior"):
        base.replace(search={"memory_prior": -1.0})


def test_the_drift_monitor_defaults_are_the_groups(clean_env):
    mon, d = DriftMonitor(), DriftSettings()
    assert mon.feature_names == list(d.features) and mon.warmup == d.warmup
    assert (mon.loss_delta, mon.rank_delta, mon.item_delta) == (d.loss_delta, d.rank_delta, d.item_delta)


def test_a_managed_kafka_gets_its_security_options_and_sasl_needs_credentials(clean_env):
    """The options every kafka-python client is built with (streamrec/bus.py), from the environment;
    a SASL protocol without credentials is refused at start, not at the first connection."""
    clean_env.setenv("STREAMREC_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("STREAMREC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("STREAMREC_KAFKA_SASL_USERNAME", "shop")
    clean_env.setenv("STREAMREC_KAFKA_SASL_PASSWORD", "secret")
    clean_env.setenv("STREAMREC_KAFKA_SSL_CAFILE", "/etc/ssl/kafka-ca.pem")
    s = Settings()
    assert s.kafka.client_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "shop",
        "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/ssl/kafka-ca.pem",
    }
    assert "secret" not in repr(s.kafka)
    assert s.to_env()["STREAMREC_KAFKA_SASL_PASSWORD"] == "secret"  # the services it starts get it
    clean_env.delenv("STREAMREC_KAFKA_SASL_PASSWORD")
    with pytest.raises(ValidationError, match="needs kafka.sasl_username and kafka.sasl_password"):
        Settings()
