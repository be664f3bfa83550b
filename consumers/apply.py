"""Apply one partition batch to Redis atomically: features, bot decisions, outbox and offset."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from streamrec.features import Keys, encode_record, script_config, script_source
from streamrec.features.layout import shard_of
from streamrec.schemas import CatalogOp, DeadLetter, Event
from streamrec.settings import BotSettings, FeatureSettings, Settings
from streamrec.store import keyspaces

Record = tuple[int, Event | CatalogOp | DeadLetter, bytes, bytes | None]  # offset, model, raw, key

# records per script call: Redis serves nothing else while a script runs, so one call for a poll of
# 2,000 records would hold every serving read for its whole run; and the interpreter's time per
# record grows with the call's batch (bench/writer.py --batch)
CALL_RECORDS = 500
REPLICA_WAIT_S = 2.0  # how long a batch waits for its replicas before the consumer retries it


class ReplicaLag(redis.RedisError):
    """Fewer replicas than ``redis.replica_acks`` hold an applied batch: the consumer retries it
    (the batch is then skipped as applied, and waited for again)."""


@dataclass(frozen=True)
class BatchResult:
    status: str  # "ok" or "gap" (the batch starts after the stored offset: seek back to it)
    stored_before: int  # next offset to apply before this call (-1: never applied)
    applied: int = 0
    skipped: int = 0  # already applied by an earlier attempt
    outbox_len: int = 0
    quarantined: list[str] = field(default_factory=list)


class Writer:
    """Calls the writer script (``streamrec.features.APPLY_LUA``, its config compiled in) per partition batch."""

    def __init__(
        self,
        r: redis.Redis,
        prefix: str,
        group: str,
        features: FeatureSettings | None = None,
        bot: BotSettings | None = None,
        replica_acks: int = 0,
    ):
        self.r = r
        self.replica_acks = replica_acks
        self.keys = Keys(prefix)
        self.group = group
        self.prefix = prefix
        self.features = features or FeatureSettings()
        self.config_json = script_config(self.features, (bot or BotSettings()).script_fields(), self.keys)
        self.script = r.register_script(script_source(self.config_json))

    def offset_key(self, topic: str, partition: int) -> str:
        return self.keys.offset(self.group, topic, partition)

    def outbox_key(self, topic: str, partition: int) -> str:
        return self.keys.outbox(self.group, topic, partition)

    def relayed_key(self, topic: str, partition: int) -> str:
        return self.keys.relayed(self.group, topic, partition)

    def stored_offset(self, topic: str, partition: int) -> int | None:
        v = self.r.get(self.offset_key(topic, partition))
        return int(v) if v is not None else None

    def apply(
        self, topic: str, partition: int, records: list[Record], next_offset: int, first_offset: int | None = None
    ) -> BatchResult:
        """Apply ``records`` (offsets ``first_offset`` … ``next_offset - 1``, some may be left out), in
        script calls of at most :data:`CALL_RECORDS` records, each atomic with its part of the offsets:
        a crash between two calls leaves the offset where the first ended, as a smaller poll would."""
        if first_offset is None:
            first_offset = records[0][0] if records else next_offset
        total: BatchResult | None = None
        for start in range(0, max(len(records), 1), CALL_RECORDS):
            part = records[start : start + CALL_RECORDS]
            rest = start + CALL_RECORDS < len(records)
            res = self._call(
                topic,
                partition,
                part,
                records[start + CALL_RECORDS][0] if rest else next_offset,
                first_offset if start == 0 else part[0][0],
            )
            if res.status == "gap":
                return res
            if total is not None:
                res = BatchResult(
                    "ok",
                    total.stored_before,
                    total.applied + res.applied,
                    total.skipped + res.skipped,
                    res.outbox_len,
                    total.quarantined + res.quarantined,
                )
            total = res
        assert total is not None
        return total

    def _call(
        self, topic: str, partition: int, records: list[Record], next_offset: int, first_offset: int
    ) -> BatchResult:
        args: list = [self.prefix, self.config_json, next_offset, first_offset]
        args.extend(encode_record(*rec, self.features) for rec in records)
        keys = [self.offset_key(topic, partition), self.outbox_key(topic, partition)]
        reply = self.script(keys=keys, args=args) if not self.replica_acks else self._replicated(keys, args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "gap":
            return BatchResult("gap", int(reply[1]))
        reasons = [x.decode() if isinstance(x, bytes) else x for x in reply[5:]]
        return BatchResult("ok", int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), reasons)

    def _replicated(self, keys: list[str], args: list) -> list:
        """The script call, followed on the same connection by ``WAIT`` for ``replica_acks`` replicas
        (``WAIT`` counts the writes of its own connection), so a failover to a replica cannot lose a
        batch the consumer then treats as applied; too few acknowledgements raise :class:`ReplicaLag`.
        On a cluster, the call goes to the master of the keyspace's slot, and an error there
        (a failover under way) refreshes the cluster's slot map before the consumer retries."""
        cluster = self.r if isinstance(self.r, RedisCluster) else None
        client = cluster.get_redis_connection(cluster.get_node_from_key(keys[0])) if cluster else self.r
        pipe = client.pipeline(transaction=False)
        self.script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.replica_acks, int(REPLICA_WAIT_S * 1000))
        try:
            reply, acks = pipe.execute()
        except redis.RedisError:
            if cluster is not None:
                cluster.nodes_manager.initialize()
            raise
        if int(acks) < self.replica_acks:
            raise ReplicaLag(
                f"{acks} of the {self.replica_acks} replicas asked for (redis.replica_acks) acknowledged the "
                f"batch within {REPLICA_WAIT_S:.0f} s"
            )
        return reply


class ShardedWriter:
    """The feature writer over every keyspace (one on a single Redis, ``redis.shards`` on a Redis
    Cluster, docs/REDIS-CLUSTER.md): an events partition's batches go to the keyspace that owns the
    partition, and a catalog batch goes to every keyspace, since each one's script reads the
    categories of its own events' items. Every keyspace keeps its own offset of each partition it
    applies, so exactly-once holds per keyspace as on a single Redis."""

    def __init__(self, writers: Sequence[Writer], broadcast: Collection[str]):
        self.writers = list(writers)
        self.broadcast = frozenset(broadcast)

    @classmethod
    def from_settings(cls, r: redis.Redis, s: Settings, group: str) -> ShardedWriter:
        writers = [Writer(r, prefix, group, s.features, s.bot, s.redis.replica_acks) for prefix in keyspaces(s)]
        return cls(writers, broadcast={s.topic.catalog})

    def owner(self, partition: int) -> Writer:
        return self.writers[shard_of(partition, len(self.writers))]

    @property
    def lanes(self) -> int:
        """How many batches may be applied at once: one per keyspace (each on its own master) and
        one for the broadcast topics; on a single Redis one, as it runs one script at a time."""
        return 1 if len(self.writers) == 1 else len(self.writers) + 1

    def lane(self, topic: str, partition: int) -> int:
        """The lane of a partition's batches (:attr:`lanes`): a partition's batches share one, so
        they are applied in order."""
        if len(self.writers) == 1:
            return 0
        return len(self.writers) if topic in self.broadcast else shard_of(partition, len(self.writers))

    def outbox_key(self, topic: str, partition: int) -> str:
        """A broadcast batch has no outbox entries (its invalid records are left out): one key serves."""
        return self.owner(partition).outbox_key(topic, partition)

    def relayed_key(self, topic: str, partition: int) -> str:
        return self.owner(partition).relayed_key(topic, partition)

    def stored_offset(self, topic: str, partition: int) -> int | None:
        """Where the partition resumes: for a broadcast topic the oldest of the keyspaces' offsets, and
        None (Kafka's committed offset) while one keyspace has none: each skips what it applied."""
        if topic not in self.broadcast:
            return self.owner(partition).stored_offset(topic, partition)
        stored = [w.stored_offset(topic, partition) for w in self.writers]
        return None if None in stored else min(s for s in stored if s is not None)

    def apply(
        self, topic: str, partition: int, records: list[Record], next_offset: int, first_offset: int | None = None
    ) -> BatchResult:
        """:meth:`Writer.apply` on the owning keyspace, or on each keyspace in turn for a broadcast
        topic; a gap in any one is returned at once (the consumer seeks back to it and the keyspaces
        ahead skip what they applied). The first keyspace's result stands for a broadcast batch."""
        if topic not in self.broadcast:
            return self.owner(partition).apply(topic, partition, records, next_offset, first_offset)
        results = []
        for w in self.writers:
            res = w.apply(topic, partition, records, next_offset, first_offset)
            if res.status == "gap":
                return res
            results.append(res)
        return results[0]
