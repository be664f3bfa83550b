"""One settings tree: nested groups keep their env names, service configs come from the tree."""

from __future__ import annotations

from consumers.botfilter import BotConfig
from learner.drift import DriftMonitor
from learner.online import LearnerConfig
from streamrec.features import FeatureConfig
from streamrec.settings import Settings


def test_env_names_reach_the_nested_groups_and_the_service_configs(monkeypatch):
    monkeypatch.setenv("STREAMREC_FEATURE_RECENT_CAP", "40")
    monkeypatch.setenv("STREAMREC_FEATURE_CTR_PRIOR_IMPRESSIONS", "30")
    monkeypatch.setenv("STREAMREC_BOT_USER_LIMIT", "7")
    monkeypatch.setenv("STREAMREC_LEARNER_LR", "0.01")
    monkeypatch.setenv("STREAMREC_DRIFT_FEATURES", '["price_log"]')
    s = Settings()
    assert (s.features.recent_cap, s.features.ctr_prior_impressions, s.bot.user_limit) == (40, 30.0, 7)
    assert isinstance(s.features, FeatureConfig) and isinstance(s.bot, BotConfig)
    cfg = LearnerConfig.from_settings(s)
    assert cfg.lr == 0.01 and cfg.feature_names == ("price_log",)


def test_defaults_are_written_once(monkeypatch):
    import os

    for name in [k for k in os.environ if k.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    s = Settings()
    assert LearnerConfig() == LearnerConfig.from_settings(s)
    mon = DriftMonitor()
    assert mon.feature_names == list(s.drift_features) and mon.warmup == s.drift_warmup
    assert mon.loss_delta == s.drift_loss_delta and mon.rank_delta == s.drift_rank_delta
