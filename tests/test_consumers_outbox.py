"""Dead letters and quarantine records are published exactly once, also across a crash between
the Kafka publish and the Redis bookkeeping (the window the outbox recovery closes)."""

from __future__ import annotations

import pytest
import redis
from test_consumers_service import read_topic

from consumers.apply import Writer
from consumers.outbox import Outbox, _parse
from consumers.validate import classify
from streamrec import bus
from streamrec.schemas import DeadLetter
from streamrec.store import connect_binary


def outbox_for(settings, writer):
    return Outbox(
        settings,
        connect_binary(settings),
        bus.make_producer(settings),
        lambda t, p: (writer.outbox_key(t, p), writer.relayed_key(t, p)),
    )


def dead_letters(settings, writer, n, start=0):
    recs = []
    for off in range(start, start + n):
        raw = f"broken {off}".encode()
        recs.append(
            (off, classify(raw, topic="src", is_catalog=False, max_bytes=1024, partition=0, offset=off), raw, b"k")
        )
    res = writer.apply("src", 0, recs, start + n)
    assert res.outbox_len == n


class CrashAfterPublish(Exception):
    pass


@pytest.mark.parametrize("published_before_crash", [0, 1, 3])
def test_recovery_publishes_each_dead_letter_once(settings, published_before_crash):
    writer = Writer(connect_binary(settings), settings.redis.prefix, "g")
    dead_letters(settings, writer, 2, start=0)
    first = outbox_for(settings, writer)
    assert first.relay("src", 0) == 2  # an ordinary relay: records the output offsets reached
    dead_letters(settings, writer, 3, start=2)
    # the crashed owner got some of the next entries onto Kafka but never recorded it
    entries = first.r.lrange(writer.outbox_key("src", 0), 0, -1)
    for entry in entries[:published_before_crash]:
        _target, key, value, _off = _parse(entry, "src", 0)
        first.producer.send(settings.topic.dlq, key=key, value=value)
    first.producer.flush()

    successor = outbox_for(settings, writer)
    assert successor.relay("src", 0, recover=True) == 3 - published_before_crash
    letters = [DeadLetter.model_validate_json(m.value) for m in read_topic(settings, settings.topic.dlq, 5)]
    assert sorted(d.source_offset for d in letters) == [0, 1, 2, 3, 4]
    assert successor.r.llen(writer.outbox_key("src", 0)) == 0


def relay_failing_after_the_publish(box: Outbox, monkeypatch, partition: int = 0) -> None:
    """Relay with the Redis bookkeeping step failing after the Kafka publish (a crash's window)."""

    def broken_pipeline(*a, **kw):
        raise redis.ConnectionError("redis went away after the publish")

    monkeypatch.setattr(box.r, "pipeline", broken_pipeline)
    with pytest.raises(redis.ConnectionError):
        box.relay("src", partition)
    monkeypatch.undo()


def test_a_failed_bookkeeping_step_keeps_the_entries(settings, monkeypatch):
    writer = Writer(connect_binary(settings), settings.redis.prefix, "g")
    dead_letters(settings, writer, 2)
    box = outbox_for(settings, writer)
    relay_failing_after_the_publish(box, monkeypatch)
    assert box.r.llen(writer.outbox_key("src", 0)) == 2  # nothing forgotten ...
    assert box.relay("src", 0) == 0  # ... and the retry (as the service does it) repeats nothing
    assert len(read_topic(settings, settings.topic.dlq, 3, timeout_s=3)) == 2


def test_a_failed_bookkeeping_step_is_remembered_per_partition(settings, monkeypatch):
    """The writer lanes relay several partitions at once: another partition's successful relay
    between a failed one and its retry must not make the retry publish again."""
    writer = Writer(connect_binary(settings), settings.redis.prefix, "g")
    dead_letters(settings, writer, 2)
    box = outbox_for(settings, writer)
    relay_failing_after_the_publish(box, monkeypatch)
    other = [(0, classify(b"broken", topic="src", is_catalog=False, max_bytes=1024, partition=1, offset=0), b"x", b"k")]
    assert writer.apply("src", 1, other, 1).outbox_len == 1
    assert box.relay("src", 1) == 1  # another lane's partition, published and recorded
    assert box.relay("src", 0) == 0  # the retry still checks Kafka first: nothing twice
    assert len(read_topic(settings, settings.topic.dlq, 4, timeout_s=3)) == 3
