"""Features on a Redis Cluster (docs/REDIS-CLUSTER.md): the keys are split into hash-tagged
keyspaces, an events partition is written to the keyspace that owns it, the catalog to every one.
On a local 3-master cluster (``launcher/redis_cluster.py``), each keyspace must answer every read
exactly as the in-memory twin fed the same catalog and only that keyspace's events, and a batch
delivered again must change nothing."""

from __future__ import annotations

import time

import pytest
import redis
from redis.cluster import RedisCluster
from test_feature_parity import BOT_OFF, TIGHT, USERS, assert_same_reads, event_list, replay

from consumers import apply as apply_module
from consumers.apply import BatchResult, ReplicaLag, ShardedWriter, Writer
from consumers.status import keyspace_report
from launcher.redis_cluster import LocalRedisCluster
from streamrec.features import FeatureStore, ShardedFeatureStore, open_features
from streamrec.features.layout import shard_of
from streamrec.memory import warn_if_unsafe
from streamrec.schemas import CatalogOp, Event, encode
from streamrec.settings import FeatureSettings, Settings
from streamrec.store import ClusterNotSupported, check_cluster, connect, connect_binary, keyspaces

SHARDS = 3
PARTITION = {user: k for k, user in enumerate(USERS)}  # one user per events partition


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=0) as c:
        yield c


def cluster_settings(cluster, prefix: str) -> Settings:
    return Settings(
        redis={"url": cluster.url, "prefix": prefix, "cluster": True, "shards": SHARDS},
        topic={"partitions": SHARDS},
    )


def writer_for(s: Settings, cfg: FeatureSettings) -> ShardedWriter:
    r = connect_binary(s)
    return ShardedWriter([Writer(r, p, "g", cfg, BOT_OFF) for p in keyspaces(s)], broadcast={"catalog"})


def destination(m: Event | CatalogOp) -> tuple[str, int]:
    return ("catalog", 0) if isinstance(m, CatalogOp) else ("events", PARTITION[m.user_id])


def apply_runs(writer: ShardedWriter, models, batch: int, again: bool = False) -> list[BatchResult]:
    """Apply the list in order, each run of records bound for one (topic, partition) as batches of at
    most ``batch``; ``again``: every batch a second time, as after a crash before the Kafka commit."""
    offsets: dict[tuple[str, int], int] = {}
    results = []
    start = 0
    while start < len(models):
        dest = destination(models[start])
        end = start + 1
        while end < len(models) and end - start < batch and destination(models[end]) == dest:
            end += 1
        first = offsets.get(dest, 0)
        recs = [(first + i, m, encode(m), b"k") for i, m in enumerate(models[start:end])]
        for _ in range(2 if again else 1):
            results.append(writer.apply(dest[0], dest[1], recs, first + len(recs)))
        offsets[dest] = first + len(recs)
        start = end
    return results


def keyspace_models(models, shard: int) -> list:
    """What keyspace ``shard`` applies: the whole catalog and its partitions' events, in order."""
    return [m for m in models if isinstance(m, CatalogOp) or shard_of(PARTITION[m.user_id], SHARDS) == shard]


def test_the_keyspaces_spread_over_every_master(cluster):
    s = cluster_settings(cluster, "spread:")
    owners = {cluster.master_for(prefix + "u:x").port for prefix in keyspaces(s)}
    assert owners == {m.port for m in cluster.masters}


@pytest.mark.parametrize(("caps", "batch"), [(TIGHT, 1), (FeatureSettings(), 17)])
def test_each_keyspace_equals_the_twin_of_its_own_events(cluster, caps, batch):
    models = event_list()
    s = cluster_settings(cluster, f"eq{batch}:")
    results = apply_runs(writer_for(s, caps), models, batch, again=True)
    assert all(res.status == "ok" for res in results)
    assert all(again.applied == 0 and again.skipped > 0 for again in results[1::2])  # delivered twice
    rc = RedisCluster.from_url(cluster.url, decode_responses=True, protocol=2)
    for shard, prefix in enumerate(keyspaces(s)):
        fs = FeatureStore(rc, prefix, caps)  # type: ignore[arg-type]  # the cluster client reads one slot
        assert_same_reads(fs, replay(keyspace_models(models, shard), caps), exercised=False)


def test_the_merged_reads_of_every_keyspace_equal_the_twin_of_every_event(cluster):
    """What serving and the learner read (``ShardedFeatureStore``): each user's state from its
    keyspace, the item-level sums over keyspaces decayed to one clock. Exact while no keyspace
    trims a list to its cap (the default caps, this small list)."""
    models = event_list(seed=11)
    cfg = FeatureSettings()
    s = cluster_settings(cluster, "merged:")
    apply_runs(writer_for(s, cfg), models, 17)
    rc = RedisCluster.from_url(cluster.url, decode_responses=True, protocol=2)
    merged = ShardedFeatureStore([FeatureStore(rc, p, cfg) for p in keyspaces(s)], cfg)  # type: ignore[arg-type]
    assert_same_reads(merged, replay(models, cfg), merged_log=True)
    assert isinstance(open_features(s), ShardedFeatureStore)


def test_a_catalog_partition_resumes_from_the_keyspace_furthest_behind(cluster):
    s = cluster_settings(cluster, "resume:")
    writer = writer_for(s, FeatureSettings())
    op = CatalogOp(op="upsert", item_id="a", ts=1_700_000_000_000, title="a", category="c")
    assert writer.stored_offset("catalog", 0) is None
    behind = writer.writers[1]
    assert behind.apply("catalog", 0, [(0, op, encode(op), b"a")], 1).status == "ok"
    assert writer.stored_offset("catalog", 0) is None  # the others have none: Kafka's committed offset
    assert writer.apply("catalog", 0, [(0, op, encode(op), b"a"), (1, op, encode(op), b"a")], 2).status == "ok"
    assert [w.stored_offset("catalog", 0) for w in writer.writers] == [2, 2, 2]
    assert behind.apply("catalog", 0, [(2, op, encode(op), b"a")], 3).status == "ok"
    assert writer.stored_offset("catalog", 0) == 2
    gap = writer.apply("catalog", 0, [(5, op, encode(op), b"a")], 6)
    assert (gap.status, gap.stored_before) == ("gap", 2)


def test_a_cluster_node_needs_the_setting(cluster, redis_server):
    s = cluster_settings(cluster, "refuse:")
    check_cluster(connect(s), s)  # said so: every service uses it
    single = s.replace(redis={"cluster": False, "shards": 1})
    with pytest.raises(ClusterNotSupported, match="STREAMREC_REDIS_CLUSTER=1"):
        check_cluster(connect(single), single)
    plain = single.replace(redis={"url": redis_server.url})
    check_cluster(connect(plain), plain)  # the embedded single Redis passes


def test_shards_need_a_cluster_and_a_partition_each():
    with pytest.raises(ValueError, match="set redis.cluster too"):
        Settings(redis={"shards": 2})
    with pytest.raises(ValueError, match="topic.partitions"):
        Settings(redis={"cluster": True, "shards": 4}, topic={"partitions": 3})
    with pytest.raises(ValueError, match="may not hold"):
        Settings(redis={"cluster": True, "prefix": "a{b}:"})


@pytest.mark.parametrize("on_cluster", [True, False])
def test_a_batch_too_few_replicas_hold_is_retried_not_acknowledged(cluster, settings, monkeypatch, on_cluster):
    """``redis.replica_acks``: no replica here, so the applied batch is reported as lagging (the
    consumer retries it: skipped as applied, then waited for again), on a cluster as on one Redis."""
    monkeypatch.setattr(apply_module, "REPLICA_WAIT_S", 0.05)
    s = cluster_settings(cluster, "lag:") if on_cluster else settings
    r = connect_binary(s)
    op = CatalogOp(op="upsert", item_id="a", ts=1_700_000_000_000, title="a", category="c")
    waiting = Writer(r, keyspaces(s)[0], "g", replica_acks=1)
    with pytest.raises(ReplicaLag, match="0 of the 1 replicas"):
        waiting.apply("catalog", 0, [(0, op, encode(op), b"a")], 1)
    again = Writer(r, keyspaces(s)[0], "g").apply("catalog", 0, [(0, op, encode(op), b"a")], 1)
    assert (again.applied, again.skipped) == (0, 1)


def test_the_eviction_policy_is_checked_on_every_master(cluster):
    """Each master is configured alone: one left on allkeys-lru (it may evict offsets) is named."""
    s = cluster_settings(cluster, "policy:")
    direct = [redis.Redis.from_url(m.url) for m in cluster.masters]
    before = [d.config_get("maxmemory-policy")["maxmemory-policy"] for d in direct]
    r = connect(s)
    try:
        for d in direct:
            d.config_set("maxmemory-policy", "volatile-lru")
        assert warn_if_unsafe(r) is None
        direct[-1].config_set("maxmemory-policy", "allkeys-lru")
        warning = warn_if_unsafe(r) or ""
        assert f":{cluster.masters[-1].port}: " in warning and "allkeys-lru" in warning
        assert all(f":{m.port}:" not in warning for m in cluster.masters[:-1])
    finally:
        for d, policy in zip(direct, before, strict=True):
            d.config_set("maxmemory-policy", policy)
        r.close()


def test_the_recent_quarantine_decisions_of_every_keyspace_are_merged_by_event_time(cluster):
    """Two users in two keyspaces, each sending two events again (duplicates, quarantined): the
    decisions come back newest event first, whichever keyspace holds them."""
    s = cluster_settings(cluster, "qrecent:")
    writer = writer_for(s, FeatureSettings())
    first, second = USERS[0], USERS[1]
    assert shard_of(PARTITION[first], SHARDS) != shard_of(PARTITION[second], SHARDS)

    t0 = 1_700_000_000_000

    def view(user: str, n: int, ts: int) -> Event:
        return Event(event_id=f"{user}-{n}", type="view", user_id=user, item_id=f"i{n}", ts=t0 + ts, session_id=user)

    sent = [view(first, 1, 1_000), view(second, 1, 2_000), view(first, 2, 3_000), view(second, 2, 4_000)]
    apply_runs(writer, sent, batch=10)
    again = [m for user in (first, second) for m in sent if m.user_id == user]  # one keyspace after the other
    offsets = {user: 2 for user in (first, second)}
    for user in (first, second):
        recs = [(offsets[user] + i, m, encode(m), b"k") for i, m in enumerate(m for m in again if m.user_id == user)]
        res = writer.apply("events", PARTITION[user], recs, offsets[user] + len(recs))
        assert res.quarantined == ["duplicate_event", "duplicate_event"]
    decisions = open_features(s).recent_quarantine(10)
    assert [d["event_id"] for d in decisions] == [f"{second}-2", f"{first}-2", f"{second}-1", f"{first}-1"]
    assert [d["ts"] - t0 for d in decisions] == [4_000, 3_000, 2_000, 1_000]


def test_serving_merges_the_keyspaces_trending_once_per_trending_cache_s(cluster):
    """Trending is one list every request reads: merging every keyspace's capped list per request
    cost serving more than any other read, so the merged list is kept for ``trending_cache_s``."""
    s = cluster_settings(cluster, "trendcache:")
    writer = writer_for(s, FeatureSettings())
    t0 = 1_700_000_000_000

    def buy(user: str, n: int, item: str) -> Event:
        return Event(event_id=f"{user}-{n}", type="purchase", user_id=user, item_id=item, ts=t0 + n, session_id=user)

    apply_runs(writer, [buy(USERS[0], 1, "a")], batch=10)
    cached = open_features(s, trending_cache_s=0.3)
    fresh = open_features(s)
    assert isinstance(cached, ShardedFeatureStore)
    assert [i for i, _ in cached.trending(10)] == ["a"]
    # two purchases of "b" in two other keyspaces
    writer.apply("events", PARTITION[USERS[1]], [(0, m := buy(USERS[1], 2, "b"), encode(m), b"k")], 1)
    writer.apply("events", PARTITION[USERS[2]], [(0, m := buy(USERS[2], 3, "b"), encode(m), b"k")], 1)
    asked, cached.stores = cached.stores, []
    assert [i for i, _ in cached.trending(5)] == ["a"]  # the merged copy, not yet expired: no keyspace asked
    cached.stores = asked
    assert [i for i, _ in fresh.trending(10)] == ["b", "a"]  # an uncached reader merges at once
    time.sleep(0.35)
    assert cached.trending(10) == fresh.trending(10)  # merged again once older than trending_cache_s


def test_each_keyspace_and_the_catalog_get_a_writer_lane(cluster, redis_server):
    """A consumer applies one batch per lane at once (consumers/service.py): each keyspace's on its
    own master, the broadcast catalog's on one more; a single Redis runs one script at a time."""
    writer = writer_for(cluster_settings(cluster, "lanes:"), FeatureSettings())
    assert writer.lanes == SHARDS + 1
    assert [writer.lane("events", p) for p in range(6)] == [shard_of(p, SHARDS) for p in range(6)]
    assert writer.lane("catalog", 0) == writer.lane("catalog", 2) == SHARDS
    single = ShardedWriter([Writer(connect_binary(Settings(redis={"url": redis_server.url})), "x:", "g")], {"catalog"})
    assert single.lanes == 1 and single.lane("events", 5) == single.lane("catalog", 0) == 0


def test_status_names_each_keyspaces_master_partitions_and_policy(cluster, redis_server):
    """`streamrec status` shows where the features live: on a cluster each keyspace's master (its
    own memory and eviction policy), on a single Redis one row."""
    s = cluster_settings(cluster, "report:")
    rows = keyspace_report(s, connect(s))
    assert [row["master"].rsplit(":", 1)[1] for row in rows] == [
        str(cluster.master_for(prefix + "x").port) for prefix in keyspaces(s)
    ]
    assert sorted(p for row in rows for p in row["events_partitions"]) == list(range(s.topic.partitions))
    assert all(row["used_memory"] > 0 and row["maxmemory_policy"] for row in rows)
    single = Settings(redis={"url": redis_server.url, "prefix": "report:"})
    (row,) = keyspace_report(single, connect(single))
    assert row["keyspace"] == "report:" and row["events_partitions"] == list(range(single.topic.partitions))
