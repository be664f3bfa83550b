"""The exactly-once fault test on a Redis Cluster (docs/REDIS-CLUSTER.md): DIGINETICA events (with
malformed records, producer retries and bots mixed in, ``bench/feature_reference.py``) through real
consumer processes killed with SIGKILL at random, into 3 feature keyspaces on a local cluster of 3
masters with a replica each (``redis.replica_acks`` = 1). Mid-stream one master is killed too: its
replica takes over its slots and the old master rejoins as the new one's replica. Afterwards every
keyspace equals the reference computed from its own partitions' events, and the DLQ and the
quarantine topic hold exactly the records mixed in: nothing lost, nothing counted twice.

``tests/test_consumers_fault.py`` is the same test on one Redis, with a learner killed as well."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from conftest import isolated_settings
from redis.cluster import RedisCluster
from test_consumers_fault import Fleet

from bench.feature_reference import BOT, Reference, build_stream, feature_mismatches, rejection_mismatches
from launcher.redis_cluster import LocalRedisCluster
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features import FeatureStore, open_features
from streamrec.features.layout import shard_of
from streamrec.schemas import encode
from streamrec.store import keyspaces
from tests.polling import wait_for

pytestmark = pytest.mark.slow

N_SESSION_EVENTS = int(os.environ.get("STREAMREC_CLUSTER_FAULT_EVENTS", "10000"))  # + the real views and buys
SHARDS = 3
KILLS = 4
MASTER_KILLED_AT = 2  # the round whose two consumers are writing when a master dies
# paced so that producing (~20 s) outlasts the kills and the failover (~15 s): the kills land while
# records still arrive, however fast the consumers catch up
PRODUCE_PER_S = 2000


def test_kill9_and_a_master_failover_lose_nothing_and_count_nothing_twice(
    kafka_broker, redis_server, tmp_path, data_dir
):
    rng = random.Random(20160102)
    stream = build_stream(data_dir, N_SESSION_EVENTS, rng)
    raw_items = {e.item_id for _k, _v, e in stream if e is not None}
    ops = list(diginetica.catalog(data_dir, raw_items))
    categories = {op.item_id: op.category for op in ops if op.category}
    with LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        settings = isolated_settings(
            kafka_broker,
            redis_server,
            tmp_path / "state",
            redis={"url": cluster.url, "cluster": True, "shards": SHARDS, "replica_acks": 1},
            kafka={"consumer_session_timeout_ms": 4000, "consumer_heartbeat_ms": 400},
        )
        prefixes = keyspaces(settings)
        rc = RedisCluster.from_url(cluster.url, decode_responses=True, protocol=2)
        stores = [FeatureStore(rc, p) for p in prefixes]  # type: ignore[arg-type]  # one slot each
        merged = open_features(settings)  # serving's reader, made before the failover
        group, events_topic = settings.consumers.group, settings.topic.events

        def offset(p: int) -> int:
            return int(rc.get(stores[shard_of(p, SHARDS)].keys.offset(group, events_topic, p)) or 0)

        with Fleet(settings, tmp_path) as fleet:
            producer = bus.make_producer(settings, linger_ms=20, batch_size=512 * 1024)
            for op in ops:
                producer.send(settings.topic.catalog, key=op.item_id, value=encode(op))
            producer.flush()
            fleet.start()
            deadline = time.monotonic() + 120
            items = [op.item_id for op in ops]
            while any(sum(a is not None for a in fs.item_attributes(items)) < len(ops) for fs in stores):
                assert time.monotonic() < deadline, "catalog not applied to every keyspace"
                time.sleep(0.2)

            partition_of: list[int] = [-1] * len(stream)
            ends: dict[int, int] = {}  # partition -> offset after its last record

            def produce():
                futures, started = [], time.monotonic()
                for i in range(0, len(stream), 1000):
                    futures += [producer.send(events_topic, key=k, value=v) for k, v, _e in stream[i : i + 1000]]
                    time.sleep(max(0.0, started + (i + 1000) / PRODUCE_PER_S - time.monotonic()))
                producer.flush()
                for n, f in enumerate(futures):
                    md = f.get(timeout=60)
                    partition_of[n] = md.partition
                    ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)

            sender = threading.Thread(target=produce)
            sender.start()
            full = Reference.of(stream, categories)
            assert max(full.item_bucket.values()) <= BOT.item_limit  # so no item_burst, whatever the order

            mid_stream = 0
            for k in range(KILLS):
                time.sleep(rng.uniform(0.7, 2.0))
                want = 2 if 1 <= k <= 2 else 1
                while len(fleet.live) < want:
                    fleet.start()
                fleet.check_alive()
                if k == MASTER_KILLED_AT:  # while both consumers write: the replica is promoted, and
                    victim = cluster.master_for(prefixes[1] + "x")  # the keyspace waits for a replica again
                    mid_stream += sum(offset(p) for p in range(settings.topic.partitions)) < len(stream)
                    start = offset(1)  # partition 1 is keyspace 1's: kill its master while a consumer writes it
                    wait_for(lambda s=start: offset(1) > s, "a consumer writing keyspace 1", 60, 0.02)
                    cluster.kill_master(victim)
                    cluster.rejoin(victim)
                    fleet.check_alive()
                done = sum(offset(p) for p in range(settings.topic.partitions))
                fleet.kill9(rng.choice(fleet.live))
                mid_stream += done < len(stream)
                if not fleet.live:
                    fleet.start()
            sender.join()
            assert mid_stream == KILLS + 1, "the kills must land while events are still being applied"

            outboxes = [stores[shard_of(p, SHARDS)].keys.outbox(group, events_topic, p) for p in ends]
            deadline = time.monotonic() + 180
            while any(offset(p) < end for p, end in ends.items()) or any(rc.llen(key) for key in outboxes):
                assert time.monotonic() < deadline, "consumers did not finish"
                fleet.check_alive()
                time.sleep(0.5)
            codes = fleet.stop_all()
            assert codes == [0] * len(codes), "SIGTERM must drain and exit cleanly"
        logs = "".join(log.read_text(errors="replace") for log in tmp_path.glob("consumer*.log"))
        assert "Retrying" in logs, "the failover must have hit a write (the consumer retries it)"

        # --- each keyspace equals the reference of its own events; rejections are exactly what was mixed in
        # (through a client that learns the cluster after the failover: the first one's SCAN would
        # still count the old master, a replica now, as a master)
        rc = RedisCluster.from_url(cluster.url, decode_responses=True, protocol=2)
        stores = [FeatureStore(rc, p) for p in prefixes]  # type: ignore[arg-type]
        for shard, fs in enumerate(stores):
            own = [rec for rec, p in zip(stream, partition_of, strict=True) if rec[2] and shard_of(p, SHARDS) == shard]
            assert own, f"keyspace {shard} got no events"
            assert feature_mismatches(fs, Reference.of(own, categories), prefixes[shard]) == [], f"keyspace {shard}"
        # the reader made before the failover finds the promoted master by itself
        before = list(merged.stores)  # type: ignore[union-attr]
        assert rejection_mismatches(settings, merged, full) == []  # type: ignore[arg-type]
        assert merged.stores != before, "the old master's reader must have been replaced"  # type: ignore[union-attr]
