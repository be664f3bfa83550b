"""A service pointed at a Redis Cluster node stops at start with a clear error (issue 20: cluster
support is not built yet); a single Redis passes the same check, and a Redis that does not answer
is left to the outage handling."""

from __future__ import annotations

import pytest
import redis

from launcher.embedded import EmbeddedRedis, free_port
from streamrec.store import ClusterNotSupported, refuse_cluster


class ClusterNode(EmbeddedRedis):
    """A real redis-server in cluster mode (one node, no slots assigned: enough to say what it is)."""

    name = "redis-cluster-node"

    def command(self) -> list[str]:
        return [*super().command(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


def test_a_cluster_node_is_refused_with_a_clear_error(tmp_path, redis_server):
    with ClusterNode(tmp_path) as node:
        with pytest.raises(ClusterNotSupported, match="single Redis"):
            refuse_cluster(redis.Redis.from_url(node.url))
    refuse_cluster(redis.Redis.from_url(redis_server.url))  # the embedded single Redis passes


def test_a_redis_that_does_not_answer_is_left_to_the_outage_handling():
    refuse_cluster(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
