"""A local Redis Cluster (``launcher/redis_cluster.py``: 3 masters, a replica each, from the
system's redis-server) for the features on a cluster (tests/test_cluster_features.py): it forms,
spreads keys over every master, and a master killed with SIGKILL hands its slots to its replica
without losing a write its replica acknowledged (``WAIT``)."""

from __future__ import annotations

import pytest
import redis

from launcher.embedded import free_port
from launcher.redis_cluster import LocalRedisCluster
from streamrec.settings import Settings
from streamrec.store import check_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1) as c:
        yield c


def test_keys_spread_over_every_master(cluster):
    rc = cluster.client()
    keys = [f"spread:{i}" for i in range(300)]
    for k in keys:
        rc.set(k, k)
    owners = {cluster.master_for(k).port for k in keys}
    assert owners == {m.port for m in cluster.masters}
    assert all(rc.get(k) == k.encode() for k in keys)


def test_a_redis_that_does_not_answer_is_left_to_the_outage_handling():
    check_cluster(redis.Redis(port=free_port(), socket_connect_timeout=0.5), Settings())


def test_a_killed_master_hands_its_slots_to_its_replica_and_loses_no_acknowledged_write(cluster):
    """Runs last in this module: it leaves the cluster with one master fewer."""
    victim = cluster.master_for("failover:0")
    keys = [k for k in (f"failover:{i}" for i in range(2000)) if cluster.master_for(k) is victim]
    direct = victim.conn
    pipe = direct.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, k)
    pipe.execute()
    # acknowledged: the replica holds every write before the master dies (replication is asynchronous)
    assert direct.execute_command("WAIT", 1, 5000) >= 1
    promoted = cluster.kill_master(victim)
    assert all(cluster.master_for(k) is promoted for k in keys)
    rc = cluster.client()
    assert [rc.get(k) for k in keys] == [k.encode() for k in keys]


def test_a_killed_master_rejoins_as_a_replica_of_its_successor(cluster):
    """After the failover above: the old master, started again, replicates the promoted one."""
    killed = next(n for n in cluster.nodes if n.proc is None)
    cluster.rejoin(killed)
    successor = next(m for m in cluster.masters if killed in cluster.replicas_of[m.port])
    assert killed not in cluster.masters and successor.conn.info("replication")["connected_slaves"] == 1
