"""`streamrec up` with its features on a Redis Cluster (docs/REDIS-CLUSTER.md): a local cluster of
3 masters and ``STREAMREC_REDIS_CLUSTER`` / ``STREAMREC_REDIS_SHARDS`` in the environment, and the
rest as `tests/test_up.py` runs it: the demo shoppers' events reach every keyspace, searches and
recommendations read them back merged, the learner publishes models, `streamrec status` reports
the cluster's counters, and SIGTERM drains every service."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from redis.cluster import RedisCluster
from test_up import Up, _wait_until_up, sigterm_drains_every_service_and_exits_0, start_up, up_env

from launcher.embedded import free_port
from launcher.redis_cluster import LocalRedisCluster
from streamrec.features import FeatureStore
from streamrec.settings import Settings
from streamrec.store import keyspaces
from tests.polling import wait_for

pytestmark = pytest.mark.slow
SHARDS = 3


def test_up_on_a_redis_cluster_serves_learns_and_drains(tmp_path):
    with LocalRedisCluster(tmp_path / "cluster", masters=SHARDS, replicas=0) as cluster:
        env = up_env(
            tmp_path,
            free_port(),
            STREAMREC_REDIS_URL=cluster.url,
            STREAMREC_REDIS_CLUSTER="1",
            STREAMREC_REDIS_SHARDS=str(SHARDS),
            STREAMREC_LEARNER_LABEL_WINDOW_S="5",  # an impression is a labelled example after 5 s, not 30
        )
        proc, log_path, base = start_up(tmp_path, env)
        try:
            _wait_until_up(proc, log_path, base, timeout_s=300)
            rc = RedisCluster.from_url(cluster.url, decode_responses=True, protocol=2)
            prefixes = keyspaces(Settings(redis={"url": cluster.url, "cluster": True, "shards": SHARDS}))
            stores = [FeatureStore(rc, prefix) for prefix in prefixes]  # type: ignore[arg-type]
            wait_for(lambda: all(fs.clock_ms() for fs in stores), "demo events in every keyspace", 60, 0.5)
            assert {cluster.master_for(p + "x").port for p in prefixes} == {m.port for m in cluster.masters}
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.get("/search", params={"q": "ink cartridge"}).json()["items"]
                assert http.get("/recommend", params={"user_id": "A994"}).json()["items"]

            def status() -> dict:
                out = subprocess.run(
                    [sys.executable, "-m", "launcher.cli", "status", "--json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert out.returncode == 0, out.stderr
                return json.loads(out.stdout)

            wait_for(lambda: status()["models"]["serving_version"] >= 1, "a model learned from the cluster", 120, 2)
            partitions = status()["consumers"]["partitions"]
            assert all(p["applied_offset"] is not None for name, p in partitions.items() if "events" in name)
            sigterm_drains_every_service_and_exits_0(Up(proc, log_path, base, env, tmp_path))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
