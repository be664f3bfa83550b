"""Reading what reached the events topic, from its beginning, for tests that check delivery."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamrec import bus
from streamrec.schemas import Event, decode_event
from streamrec.settings import Settings
from tests.polling import wait_for


def events_on_topic(
    s: Settings, done: Callable[[list[Event]], bool], what: str, timeout_s: float = 30, settle_s: float = 0.0
) -> list[Event]:
    """Every event on ``s.topic.events``, polled until ``done(events)``, then for ``settle_s`` more
    (so that a copy that should not be there has time to show up)."""
    consumer = bus.make_consumer(s, group_id=None)
    try:
        tps = bus.all_partitions(consumer, s.topic.events)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen: list[Event] = []

        def read() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend(decode_event(r.value) for r in records)
            return done(seen)

        wait_for(read, what=what, timeout_s=timeout_s)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            read()
        return seen
    finally:
        consumer.close()
