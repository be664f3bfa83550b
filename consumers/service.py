"""The ingestion service: events and catalog ops from Kafka into the Redis online features.

Guarantee: every valid record's effects are applied to Redis exactly once, every rejected event
is dead-lettered (invalid catalog ops are index_updater's to dead-letter), every bot-like one
quarantined — across crashes (kill -9 at any instant) and rebalances. Kafka delivers at least once;
the writer script applies a partition batch and advances that partition's offset *in Redis* in one
atomic step, skipping records below the stored offset, and a (re)assigned partition resumes from
the Redis offset. Kafka's committed offset is written
after that, for lag monitoring and as the start point of a fresh Redis. Dead letters and quarantine
records are written to a Redis outbox in the same atomic step and published afterwards
(see ``consumers/outbox.py`` for the publishing guarantee).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

import redis
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumers import metrics
from consumers.apply import BatchResult, Record, ShardedWriter
from consumers.outbox import Outbox
from consumers.validate import classify
from streamrec import bus
from streamrec.schemas import CatalogOp, DeadLetter, Event
from streamrec.settings import Settings
from streamrec.store import check_cluster, connect_binary, retry_until_done

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Task:
    tp: TopicPartition
    batch: list[Record]
    first_offset: int
    next_offset: int
    polled_at: float


class _Pipeline:
    """Writes batches on background threads, so that fetching and validating the next poll overlaps
    the Redis round trips of this one. One thread per writer lane (``ShardedWriter.lanes``): on a
    Redis Cluster each keyspace's batches go to their own master while the others' are applied, so
    one process is not held to one script call at a time. A partition's batches share a lane and
    are applied in order."""

    def __init__(self, ingest: Ingestor, stop: threading.Event, depth: int = 8):
        self.ingest, self.stop = ingest, stop
        lanes = ingest.writer.lanes
        self.tasks: list[queue.Queue[_Task | None]] = [queue.Queue(maxsize=depth) for _ in range(lanes)]
        self.results: queue.Queue[tuple[_Task, BatchResult] | BaseException] = queue.Queue()
        self.pending = 0
        self.threads = [
            threading.Thread(target=self._work, args=(q,), name=f"redis-writer-{i}", daemon=True)
            for i, q in enumerate(self.tasks)
        ]
        for t in self.threads:
            t.start()

    def _work(self, tasks: queue.Queue[_Task | None]) -> None:
        while (task := tasks.get()) is not None:
            try:
                self.results.put((task, self.ingest.write(task, self.stop)))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread, which raises
                self.results.put(e)

    def submit(self, task: _Task) -> None:
        self.pending += 1
        self.tasks[self.ingest.writer.lane(task.tp.topic, task.tp.partition)].put(task)

    def _take(self, block: bool) -> tuple[_Task, BatchResult] | None:
        try:
            item = self.results.get(block=block)
        except queue.Empty:
            return None
        self.pending -= 1
        if isinstance(item, BaseException):
            raise item
        return item

    def completed(self) -> list[tuple[_Task, BatchResult]]:
        out = []
        while (item := self._take(block=False)) is not None:
            out.append(item)
        return out

    def drain(self) -> list[tuple[_Task, BatchResult]]:
        out = []
        while self.pending:
            item = self._take(block=True)
            assert item is not None  # a blocking take never comes back empty
            out.append(item)
        return out

    def close(self) -> None:
        for tasks, thread in zip(self.tasks, self.threads, strict=True):
            try:
                tasks.put(None, timeout=30)
            except queue.Full:  # the writer is stuck retrying: it is a daemon thread, the process exits
                continue
            thread.join(30)


class _Resume(ConsumerRebalanceListener):
    """On assignment, resume each partition where Redis says, and flush a predecessor's outbox."""

    def __init__(self, ingest: Ingestor):
        self.ingest = ingest

    def on_partitions_revoked(self, revoked):
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        pipeline = getattr(self.ingest, "pipeline", None)
        if pipeline is not None:
            # Finish the batches in flight before giving the partitions up. No Kafka commit here:
            # kafka-python runs this on its IO thread, where blocking calls are refused, and the
            # next owner resumes from the offsets in Redis anyway.
            self.ingest.finish(pipeline.drain(), commit=False)

    def on_partitions_assigned(self, assigned):
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        for tp in assigned:
            self.ingest.resume(tp)


class Ingestor:
    """One consumer process: poll → validate → apply atomically → publish outbox → commit.

    The atomic apply and the outbox run on the pipeline thread; polling, validation, seeks and
    Kafka commits stay on the consumer thread (KafkaConsumer is not thread-safe).
    """

    def __init__(self, settings: Settings, group: str | None = None):
        group = group or settings.consumers.group
        self.s = settings
        self.r = connect_binary(settings)
        check_cluster(self.r, settings)
        self.writer = ShardedWriter.from_settings(self.r, settings, group)
        self.producer = bus.make_producer(settings)
        self.outbox = Outbox(
            settings, self.r, self.producer, lambda t, p: (self.writer.outbox_key(t, p), self.writer.relayed_key(t, p))
        )
        self.to_recover: set[TopicPartition] = set()
        self._warned_key = False  # the first event not keyed by its user is logged, every one counted
        self.consumer = bus.make_consumer(settings, group)
        self.consumer.subscribe([settings.topic.events, settings.topic.catalog], listener=_Resume(self))

    def resume(self, tp: TopicPartition) -> None:
        """Seek to the Redis offset (runs on kafka-python's IO thread: nothing blocking on Kafka)."""
        stored = self._retry(lambda: self.writer.stored_offset(tp.topic, tp.partition))
        if stored is not None:
            self.consumer.seek(tp, stored)
        self.to_recover.add(tp)

    def recover_outboxes(self, stop: threading.Event) -> None:
        """Publish what a previous owner of newly assigned partitions left in their outboxes,
        before any new batch of theirs (the pipeline is idle for them: drained on revoke)."""
        while self.to_recover:
            tp = self.to_recover.pop()
            self._retry(functools.partial(self.outbox.relay, tp.topic, tp.partition, recover=True), stop)

    def _retry(self, fn, stop: threading.Event | None = None):
        """Redis/Kafka hiccups stall the batch instead of losing it."""

        def count(e: BaseException) -> None:
            if isinstance(e, redis.RedisError):
                metrics.REDIS_ERRORS.inc()

        return retry_until_done(fn, stop, retry_on=(redis.RedisError, KafkaError, OSError), on_error=count)

    def validate(self, tp: TopicPartition, records) -> list[Record]:
        """Every record becomes a model or a dead letter (never an exception).

        Invalid catalog records are left out: index_updater dead-letters the catalog topic (one
        DLQ owner per topic, docs/CONTRACTS.md), so they are only counted here.
        """
        is_catalog = tp.topic == self.s.topic.catalog
        now_ms = int(time.time() * 1000)
        out: list[Record] = []
        for rec in records:
            m = classify(
                rec.value,
                topic=tp.topic,
                is_catalog=is_catalog,
                max_bytes=self.s.consumers.max_event_bytes,
                partition=tp.partition,
                offset=rec.offset,
                key=rec.key,
                now_ms=now_ms,
            )
            if is_catalog and isinstance(m, DeadLetter):
                metrics.CATALOG_REJECTS.labels(m.reason).inc()
                continue
            if isinstance(m, Event) and rec.key != m.user_id.encode():
                self._not_keyed_by_user(tp, m, rec.key)
            out.append((rec.offset, m, rec.value if rec.value is not None else b"", rec.key))
        return out

    def _not_keyed_by_user(self, tp: TopicPartition, m: Event, key: bytes | None) -> None:
        """Counted and applied (the event is valid); the first one is logged, naming the producer's
        mistake: the per-user rules (duplicates, repeats, sessions) assume a user's events share a
        partition."""
        metrics.NOT_KEYED_BY_USER.inc()
        if not self._warned_key:
            self._warned_key = True
            log.warning(
                "event %s on %s-%d has Kafka key %r, not its user_id %r: producers must key events by "
                "user_id (counted in streamrec_consumer_events_not_keyed_by_user_total)",
                m.event_id,
                tp.topic,
                tp.partition,
                key,
                m.user_id,
            )

    def write(self, task: _Task, stop: threading.Event) -> BatchResult:
        """The atomic Redis step, then the outbox; runs on the pipeline thread."""
        tp = task.tp
        res: BatchResult = self._retry(
            lambda: self.writer.apply(tp.topic, tp.partition, task.batch, task.next_offset, task.first_offset), stop
        )
        if res.status == "ok" and res.outbox_len:
            self._retry(lambda: self.outbox.relay(tp.topic, tp.partition), stop)
        return res

    def finish(self, done: list[tuple[_Task, BatchResult]], commit: bool = True) -> None:
        """Back on the consumer thread: commit what is durable, re-seek after a gap, count."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for task, res in done:
            if res.status == "gap":
                log.warning(
                    "%s[%d] batch ending before %d starts after the stored offset %d: seeking back",
                    task.tp.topic,
                    task.tp.partition,
                    task.next_offset,
                    res.stored_before,
                )
                self.consumer.seek(task.tp, res.stored_before)
                offsets.pop(task.tp, None)
                continue
            offsets[task.tp] = OffsetAndMetadata(task.next_offset, "", -1)
            self._count(task.batch, res)
            metrics.BATCH_SECONDS.observe(time.perf_counter() - task.polled_at)
        if offsets and commit:
            try:
                self.consumer.commit(offsets)
            except KafkaError as e:  # Redis holds the truth; the next commit catches up
                log.warning("Kafka commit failed (%r); Redis offsets stay authoritative", e)

    @staticmethod
    def _count(batch: list[Record], res: BatchResult) -> None:
        """Metrics of a batch, each label's counter moved once (not once per record)."""
        if res.skipped:
            metrics.REPLAYED.inc(res.skipped)
        events: Counter[str] = Counter()
        dead: Counter[str] = Counter()
        for off, m, _raw, _key in batch:
            if off < res.stored_before:
                continue
            if isinstance(m, DeadLetter):
                dead[m.reason] += 1
            elif isinstance(m, CatalogOp):
                events[f"catalog_{m.op}"] += 1
            elif isinstance(m, Event):
                events[m.type] += 1
        for label, n in events.items():
            metrics.EVENTS.labels(label).inc(n)
        for reason, n in dead.items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)
        for reason, n in Counter(res.quarantined).items():
            metrics.QUARANTINED.labels(reason).inc(n)

    def _lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            pos = self.consumer.position(tp, timeout_ms=0) if high is not None else None
            if high is not None and pos is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))

    def run(self, stop: threading.Event) -> None:
        self.pipeline = _Pipeline(self, stop)
        try:
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=200)
                polled_at = time.perf_counter()
                self.recover_outboxes(stop)
                for tp, records in polled.items():
                    self.pipeline.submit(
                        _Task(tp, self.validate(tp, records), records[0].offset, records[-1].offset + 1, polled_at)
                    )
                self.finish(self.pipeline.completed())
                self._lag()
            self.finish(self.pipeline.drain())
        finally:
            self.pipeline.close()
            self.close()

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        finally:
            self.producer.flush()
            self.producer.close()
            self.r.close()


def run(settings: Settings, stop: threading.Event) -> None:
    """Consume until ``stop`` is set; the batch in hand is finished and committed before returning."""
    Ingestor(settings).run(stop)
