"""Publish the dead letters and quarantine records that a batch left in its Redis outbox."""

from __future__ import annotations

import logging

import redis
from kafka import KafkaProducer
from pydantic import BaseModel

from streamrec.features import SEP
from streamrec.schemas import Event
from streamrec.settings import Settings

log = logging.getLogger(__name__)


class Quarantined(BaseModel):
    """What lands on ``settings.topic_quarantine``: the event as received and why it was held."""

    reason: str
    event: Event


def quarantine_bytes(reason: str, raw: bytes) -> bytes:
    return Quarantined(reason=reason, event=Event.model_validate_json(raw)).model_dump_json(
        exclude_none=True).encode()


class Outbox:
    """Moves outbox entries to Kafka, then removes them from Redis."""

    def __init__(self, settings: Settings, r: redis.Redis, producer: KafkaProducer):
        self.s = settings
        self.r = r
        self.producer = producer

    def relay(self, key: str) -> int:
        """Publish every entry under ``key``; returns how many were published."""
        entries = self.r.lrange(key, 0, -1)
        if not entries:
            return 0
        for entry in entries:
            raw_entry = entry.encode() if isinstance(entry, str) else entry
            kind, rest = raw_entry[:1], raw_entry[2:]
            if kind == b"d":
                msg_key, value = rest.split(SEP.encode(), 1)
                self.producer.send(self.s.topic_dlq, key=msg_key or None, value=value)
            else:
                reason, user, raw = rest.split(SEP.encode(), 2)
                self.producer.send(self.s.topic_quarantine, key=user, value=quarantine_bytes(reason.decode(), raw))
        self.producer.flush()
        self.r.ltrim(key, len(entries), -1)
        return len(entries)
