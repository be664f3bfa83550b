"""Kafka plumbing shared by every service: topics, producers, consumers, lag.

Consumers are always created with auto-commit off: each service commits only after its effects
are durable (see the guarantee stated in each consumer's module docstring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.producer.future import RecordMetadata
from kafka.serializer import Serializer

from streamrec.settings import Settings

log = logging.getLogger(__name__)


def topic_specs(s: Settings) -> list[NewTopic]:
    """Every topic streamrec uses. Vectors are compacted: the latest vector per item is the state."""
    p = s.topic.partitions
    return [
        NewTopic(s.topic.events, p, 1),
        NewTopic(s.topic.catalog, p, 1),
        NewTopic(s.topic.dlq, 1, 1),
        NewTopic(s.topic.quarantine, 1, 1),
        NewTopic(s.topic.vectors, p, 1, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(s.topic.drift, 1, 1),
    ]


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0, options: Mapping[str, str] | None = None) -> None:
    """Return once a broker answers; ``options``: the clients' security options (``KafkaSettings.client_options``)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **(options or {})).close()
            return
        except (KafkaError, OSError) as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"no Kafka broker answered at {bootstrap} within {timeout_s}s: {last!r}")


def ensure_topics(s: Settings) -> list[str]:
    """Create missing topics; returns the names created (existing ones are left alone)."""
    admin = KafkaAdminClient(bootstrap_servers=s.require_kafka(), request_timeout_ms=10_000, **s.kafka.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topic_specs(s) if t.name not in existing]
        for spec in missing:
            try:
                admin.create_topics([spec])
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in missing]
    finally:
        admin.close()


class KeySerializer(Serializer):
    """Keys are text (user_id, item_id); bytes pass through; None stays None (no key)."""

    def serialize(self, topic, headers, data):
        return data.encode() if isinstance(data, str) else data


def make_producer(s: Settings, **overrides) -> KafkaProducer:
    """acks=all + retries: a send that returns is on the broker; keys are str, values bytes."""
    cfg = dict(
        bootstrap_servers=s.require_kafka(),
        **s.kafka.client_options(),
        acks="all",
        linger_ms=2,
        retries=10,
        max_in_flight_requests_per_connection=1,  # keeps per-partition order under retries
        key_serializer=KeySerializer(),
    )
    cfg.update(overrides)
    return KafkaProducer(**cfg)


# (topic, key, value): one record to publish; the key is text or bytes (see KeySerializer), None for none
Outgoing = tuple[str, str | bytes | None, bytes]


class PublishError(KafkaError):
    """The broker did not acknowledge a record. A KafkaError, so callers that retry on Kafka trouble
    (without committing their input) treat it like the error it wraps."""


BATCH_HEADER = "streamrec-batch-size"


def publish_confirmed(producer: KafkaProducer, records: Iterable[Outgoing], timeout_s: float) -> list[RecordMetadata]:
    """Send ``records``, flush, and wait until the broker has acknowledged every one of them.

    Written once because "it returned, so it is on the broker" is what every caller commits on:
    the serving API before answering 202, the index updater and the consumers' outbox before they
    record their progress. Returns each record's metadata (topic, partition, offset), in order.
    Raises PublishError naming the first record not acknowledged within ``timeout_s``; an error
    from ``send`` itself (a record too large, say) propagates as raised.
    """
    return confirm(producer, send_all(producer, records, timeout_s))


class Sending:
    """Records handed to the producer by :func:`send_all`, not yet known to be on the broker."""

    def __init__(self, pending: list[tuple[str, str | bytes | None, Any]], deadline: float, timeout_s: float):
        self.pending, self.deadline, self.timeout_s = pending, deadline, timeout_s


def send_all(producer: KafkaProducer, records: Iterable[Outgoing], timeout_s: float) -> Sending:
    """The first half of :func:`publish_confirmed`: send without waiting (the index updater embeds
    its next chunk meanwhile); ``timeout_s`` counts from now. :func:`confirm` is the second half."""
    records = list(records)
    # How many records went out together: the index updater embeds small batches (a single POST
    # /catalog) before a bulk backlog, so a live change never waits behind an import.
    headers = [(BATCH_HEADER, str(len(records)).encode())]
    deadline = time.monotonic() + timeout_s  # the whole call, not each step: callers state this bound
    pending = [
        (topic, key, producer.send(topic, key=key, value=value, headers=headers)) for topic, key, value in records
    ]
    return Sending(pending, deadline, timeout_s)


def confirm(producer: KafkaProducer, sending: Sending) -> list[RecordMetadata]:
    """Flush and wait until every record of ``sending`` is acknowledged (PublishError if not in time)."""
    pending, deadline, timeout_s = sending.pending, sending.deadline, sending.timeout_s
    try:
        # without a timeout, a silent broker holds the caller for good
        producer.flush(timeout=max(0.0, deadline - time.monotonic()))
    except KafkaTimeoutError as e:
        raise PublishError(f"broker did not acknowledge {len(pending)} records within {timeout_s:g}s: {e!r}") from e
    acknowledged = []
    for i, (topic, key, future) in enumerate(pending):
        try:
            acknowledged.append(future.get(timeout=max(0.001, deadline - time.monotonic())))
        except KafkaError as e:
            raise PublishError(
                f"broker did not acknowledge record {i + 1} of {len(pending)} "
                f"to {topic} (key {key!r}) within {timeout_s:g}s: {e!r}"
            ) from e
    return acknowledged


def make_consumer(s: Settings, group_id: str | None, topics: Iterable[str] = (), **overrides) -> KafkaConsumer:
    """A manual-commit consumer; ``group_id=None`` for replicas that assign partitions themselves."""
    cfg = dict(
        bootstrap_servers=s.require_kafka(),
        **s.kafka.client_options(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=s.kafka.consumer_session_timeout_ms,
        heartbeat_interval_ms=s.kafka.consumer_heartbeat_ms,
        max_poll_interval_ms=s.kafka.consumer_max_poll_interval_ms,
        max_poll_records=s.kafka.consumer_max_poll_records,
    )
    cfg.update(overrides)
    consumer = KafkaConsumer(**cfg)
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def all_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    """Partitions of ``topic``, waiting for metadata (a fresh client knows none yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no partitions in broker metadata")


def positions_lag(s: Settings, topic: str, positions: dict[int, int]) -> dict[int, int]:
    """Per-partition lag of a reader that keeps its own positions (a replica following a topic),
    clamped at 0 as in :func:`group_lag`."""
    c = make_consumer(s, group_id=None)
    try:
        ends = c.end_offsets(all_partitions(c, topic))
        return {tp.partition: max(0, end - positions.get(tp.partition, 0)) for tp, end in ends.items()}
    finally:
        c.close()


def group_lag(s: Settings, group_id: str, topic: str) -> dict[int, int]:
    """Per-partition lag of a consumer group.

    Clamped at 0: the embedded Tansu broker reports the base offset of the last batch as its high
    watermark, so committed offsets can run ahead of it there.
    """
    c = make_consumer(s, group_id=group_id)
    try:
        tps = all_partitions(c, topic)
        ends = c.end_offsets(tps)
        lag = {}
        for tp in tps:
            committed = c.committed(tp) or 0
            lag[tp.partition] = max(0, ends.get(tp, 0) - committed)
        return lag
    finally:
        c.close()
