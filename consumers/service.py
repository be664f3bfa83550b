"""The ingestion service: events and catalog ops from Kafka into the Redis online features.

Guarantee: every valid record's effects are applied to Redis exactly once, every rejected one is
dead-lettered, every bot-like one quarantined — across crashes (kill -9 at any instant) and
rebalances. Kafka delivers at least once; the writer script applies a partition batch and advances
that partition's offset *in Redis* in one atomic step, skipping records below the stored offset,
and a (re)assigned partition resumes from the Redis offset. Kafka's committed offset is written
after that, for lag monitoring and as the start point of a fresh Redis. Dead letters and quarantine
records are written to a Redis outbox in the same atomic step and published afterwards
(see ``consumers/outbox.py`` for the publishing guarantee).
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumers import metrics
from consumers.apply import BatchResult, Record, Writer
from consumers.botfilter import BotConfig
from consumers.outbox import Outbox
from consumers.validate import classify
from streamrec import bus
from streamrec.features import FeatureConfig
from streamrec.schemas import CatalogOp, DeadLetter, Event
from streamrec.settings import Settings
from streamrec.store import connect_binary

log = logging.getLogger(__name__)

GROUP = "streamrec-consumers"


class _Resume(ConsumerRebalanceListener):
    """On assignment, resume each partition where Redis says, and flush a predecessor's outbox."""

    def __init__(self, ingest: Ingestor):
        self.ingest = ingest

    def on_partitions_revoked(self, revoked):
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned):
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        for tp in assigned:
            self.ingest.resume(tp)


class Ingestor:
    """One consumer process: poll → validate → apply atomically → publish outbox → commit."""

    def __init__(self, settings: Settings, group: str = GROUP):
        self.s = settings
        self.r = connect_binary(settings)
        self.writer = Writer(self.r, settings.redis_prefix, group, FeatureConfig(), BotConfig())
        self.producer = bus.make_producer(settings)
        self.outbox = Outbox(settings, self.r, self.producer,
                             lambda t, p: (self.writer.outbox_key(t, p), self.writer.relayed_key(t, p)))
        self.consumer = bus.make_consumer(settings, group)
        self.consumer.subscribe([settings.topic_events, settings.topic_catalog], listener=_Resume(self))

    def resume(self, tp: TopicPartition) -> None:
        stored = self._retry(lambda: self.writer.stored_offset(tp.topic, tp.partition))
        if stored is not None:
            self.consumer.seek(tp, stored)
        self._retry(lambda: self.outbox.relay(tp.topic, tp.partition, recover=True))

    def _retry(self, fn, stop: threading.Event | None = None):
        """Redis/Kafka hiccups stall the batch instead of losing it."""
        delay = 0.1
        while True:
            try:
                return fn()
            except (redis.RedisError, KafkaError, OSError) as e:
                if isinstance(e, redis.RedisError):
                    metrics.REDIS_ERRORS.inc()
                log.warning("retrying after %r", e)
                if stop is not None and stop.is_set():
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def process(self, tp: TopicPartition, records, stop: threading.Event) -> int | None:
        """Apply one partition's records; returns the offset to commit, or None after a re-seek."""
        is_catalog = tp.topic == self.s.topic_catalog
        now_ms = int(time.time() * 1000)
        batch: list[Record] = []
        for rec in records:
            m = classify(rec.value, topic=tp.topic, is_catalog=is_catalog, max_bytes=self.s.max_event_bytes,
                         partition=tp.partition, offset=rec.offset, key=rec.key, now_ms=now_ms)
            batch.append((rec.offset, m, rec.value if rec.value is not None else b"", rec.key))
        next_offset = records[-1].offset + 1
        res: BatchResult = self._retry(lambda: self.writer.apply(tp.topic, tp.partition, batch, next_offset), stop)
        if res.status == "gap":
            log.warning("%s[%d] batch starts at %d after the stored offset %d: seeking back",
                        tp.topic, tp.partition, records[0].offset, res.stored_before)
            self.consumer.seek(tp, res.stored_before)
            return None
        self._count(batch, res)
        if res.outbox_len:
            self._retry(lambda: self.outbox.relay(tp.topic, tp.partition), stop)
        return next_offset

    @staticmethod
    def _count(batch: list[Record], res: BatchResult) -> None:
        if res.skipped:
            metrics.REPLAYED.inc(res.skipped)
        for off, m, _raw, _key in batch:
            if off < res.stored_before:
                continue
            if isinstance(m, DeadLetter):
                metrics.DEAD_LETTERS.labels(m.reason).inc()
            elif isinstance(m, CatalogOp):
                metrics.EVENTS.labels(f"catalog_{m.op}").inc()
            elif isinstance(m, Event):
                metrics.EVENTS.labels(m.type).inc()
        for reason in res.quarantined:
            metrics.QUARANTINED.labels(reason).inc()

    def _lag(self) -> None:
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            pos = self.consumer.position(tp, timeout_ms=0) if high is not None else None
            if high is not None and pos is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=200)
                if not polled:
                    continue
                started = time.perf_counter()
                commit = {}
                for tp, records in polled.items():
                    nxt = self.process(tp, records, stop)
                    if nxt is not None:
                        commit[tp] = OffsetAndMetadata(nxt, "", -1)
                if commit:
                    try:
                        self.consumer.commit(commit)
                    except KafkaError as e:  # Redis holds the truth; the next commit catches up
                        log.warning("Kafka commit failed (%r); Redis offsets stay authoritative", e)
                metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
                self._lag()
        finally:
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
