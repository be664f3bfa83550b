"""Turn one Kafka record into a valid model or a dead letter — never an exception."""

from __future__ import annotations

import traceback

from streamrec.schemas import CatalogOp, DeadLetter, Event, Rejected, decode_catalog, decode_event


def classify(raw: bytes | None, *, topic: str, is_catalog: bool, max_bytes: int, partition: int | None = None,
             offset: int | None = None, key: bytes | None = None,
             now_ms: int = 0) -> Event | CatalogOp | DeadLetter:
    """Accept or dead-letter ``raw``; a bug in validation itself is dead-lettered too (``invalid``)."""
    raw = raw if raw is not None else b""  # a null value (tombstone) is not an event
    try:
        return decode_catalog(raw, max_bytes) if is_catalog else decode_event(raw, max_bytes)
    except Rejected as rej:
        rejected = rej
    except Exception as e:  # noqa: BLE001 - nothing may escape: the record would be lost
        rejected = Rejected("invalid", f"validator failed: {traceback.format_exception_only(e)[-1].strip()}")
    return DeadLetter.of(rejected, raw, topic=topic, partition=partition, offset=offset, key=key, now_ms=now_ms)
