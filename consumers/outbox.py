"""Publish the dead letters and quarantine records that a batch left in its Redis outbox.

The writer script appends them to ``P:outbox:{group}:{topic}:{partition}`` in the same atomic step
that applies the batch, so none is lost by a crash. Publishing is exactly-once across crashes:
after a flush, the outbox is trimmed and the output offsets reached are recorded in
``P:relayed:{group}:{topic}:{partition}`` (one MULTI). A crash between the flush and that record
leaves entries that may already be on Kafka; the next owner of the partition reads the output
topics from the recorded offsets, finds the records already there by their source coordinates
(topic, partition, offset — carried by every dead letter and quarantine record) and publishes only
the rest. The one residual: a consumer that stalls past the session timeout *while* publishing
and then resumes can repeat a record; readers can drop it by its source coordinates.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import redis
from kafka import KafkaProducer
from pydantic import BaseModel

from streamrec import bus
from streamrec.features import SEP
from streamrec.schemas import DeadLetter, Event
from streamrec.settings import Settings

log = logging.getLogger(__name__)
_SEP = SEP.encode()


class Quarantined(BaseModel):
    """What lands on ``settings.topic.quarantine``: the event as received and why it was held."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    event: Event


def source_id(topic: str, partition: int | None, offset: int | None) -> tuple[str, int, int]:
    return (topic, -1 if partition is None else partition, -1 if offset is None else offset)


def _parse(entry: bytes, topic: str, partition: int) -> tuple[str, bytes | None, bytes, int | None]:
    """An outbox entry → (output kind, key, value, source offset)."""
    kind, rest = entry[:1], entry[2:]
    if kind == b"d":
        value, key = rest.split(_SEP, 1)  # the DeadLetter JSON holds no raw U+001F; the key may
        return "dlq", key or None, value, DeadLetter.model_validate_json(value).source_offset
    off, reason, user, raw = rest.split(_SEP, 3)
    q = Quarantined(
        reason=reason.decode(),
        source_topic=topic,
        source_partition=partition,
        source_offset=int(off),
        event=Event.model_validate_json(raw),
    )
    return "quarantine", user, q.model_dump_json(exclude_none=True).encode(), int(off)


def _published_source(value: bytes) -> tuple[str, int, int] | None:
    try:
        if b'"payload_b64"' in value:
            d = DeadLetter.model_validate_json(value)
            return source_id(d.source_topic, d.source_partition, d.source_offset)
        q = Quarantined.model_validate_json(value)
        return source_id(q.source_topic, q.source_partition, q.source_offset)
    except ValueError:
        return None  # not ours (someone else publishing to the topic)


class Outbox:
    """Moves a partition's outbox entries to the DLQ / quarantine topics, each exactly once."""

    def __init__(self, settings: Settings, r: redis.Redis, producer: KafkaProducer, prefix_keys):
        self.s = settings
        self.r = r
        self.producer = producer
        self.keys = prefix_keys  # callable (topic, partition) -> (outbox key, relayed key)
        self.targets = {"dlq": settings.topic.dlq, "quarantine": settings.topic.quarantine}
        # source partitions whose publish was not recorded (it failed, or is under way): their next
        # relay must check Kafka first. Per partition: the writer lanes relay several at once
        self._unconfirmed: set[tuple[str, int]] = set()

    def relay(self, topic: str, partition: int, recover: bool = False) -> int:
        """Publish every entry of one source partition's outbox; returns how many were sent.

        ``recover=True`` (a partition just assigned) first skips entries that a crashed
        predecessor published without recording it.
        """
        outbox_key, relayed_key = self.keys(topic, partition)
        # casts: a binary client (no decode_responses) returns bytes; redis-py types `bytes | str`
        entries = cast(list[bytes], self.r.lrange(outbox_key, 0, -1))
        if not entries:
            return 0
        marks = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], self.r.hgetall(relayed_key)).items()}
        if not marks:  # first publish for this partition: remember where the outputs ended before it
            marks = self._ends()
            self.r.hset(relayed_key, mapping=marks)  # type: ignore[arg-type]  # redis-py: Mapping key invariant
        recover = recover or (topic, partition) in self._unconfirmed
        already = self._published_since(marks, topic, partition) if recover else set()
        self._unconfirmed.add((topic, partition))
        outgoing: list[bus.Outgoing] = []
        for entry in entries:
            target, key, value, off = _parse(entry, topic, partition)
            if source_id(topic, partition, off) in already:
                log.info("outbox %s[%d]@%d was already published; skipping", topic, partition, off)
                continue
            outgoing.append((self.targets[target], key, value))
        for md in bus.publish_confirmed(self.producer, outgoing, timeout_s=30):
            mark = f"{md.topic}:{md.partition}"
            marks[mark] = max(marks.get(mark, 0), md.offset + 1)
        pipe = self.r.pipeline(transaction=True)
        pipe.ltrim(outbox_key, len(entries), -1)
        pipe.hset(relayed_key, mapping=marks)  # type: ignore[arg-type]  # redis-py: Mapping key invariant
        pipe.execute()
        self._unconfirmed.discard((topic, partition))
        return len(outgoing)

    def _ends(self) -> dict[str, int]:
        c = bus.make_consumer(self.s, group_id=None)
        try:
            tps = [tp for t in self.targets.values() for tp in bus.all_partitions(c, t)]
            return {f"{tp.topic}:{tp.partition}": off for tp, off in c.end_offsets(tps).items()}
        finally:
            c.close()

    def _published_since(
        self, marks: dict[str, int], topic: str, partition: int, timeout_s: float = 30.0
    ) -> set[tuple[str, int, int]]:
        """Source ids of this partition found on the outputs at or after ``marks``."""
        c = bus.make_consumer(self.s, group_id=None)
        found: set[tuple[str, int, int]] = set()
        try:
            tps = [tp for t in self.targets.values() for tp in bus.all_partitions(c, t)]
            c.assign(tps)
            for tp in tps:
                c.seek(tp, marks.get(f"{tp.topic}:{tp.partition}", 0))
            # Tansu reports the base offset of the last batch as the end; a fetch returns whole
            # batches, so reading until at/after it and then an empty poll covers everything.
            ends = c.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                polled = c.poll(timeout_ms=300)
                for recs in polled.values():
                    for rec in recs:
                        sid = _published_source(rec.value or b"")
                        if sid and sid[0] == topic and sid[1] == partition:
                            found.add(sid)
                if not polled and all(c.position(tp) >= ends[tp] for tp in tps):
                    return found
            raise TimeoutError(f"could not read {sorted(self.targets.values())} to the end in {timeout_s}s")
        finally:
            c.close()
