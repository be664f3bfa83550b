"""Turn one Kafka record into a valid model or a dead letter — never an exception.

Beyond the wire contract (``streamrec.schemas``), a record must be storable in the online
features: no text may hold a lone UTF-16 surrogate (not encodable as UTF-8) and no id may hold
U+001F, the field separator of the writer script and the recent-items list (nor may a
category). Such records are dead-lettered as
``invalid`` with the field named, instead of failing the batch forever.
"""

from __future__ import annotations

import traceback

from streamrec.features import SEP
from streamrec.schemas import CatalogOp, DeadLetter, Event, Rejected, decode_catalog, decode_event

_EVENT_IDS = ("event_id", "user_id", "item_id", "session_id", "request_id")


def _check_storable(m: Event | CatalogOp, raw: bytes) -> None:
    """What this refuses (U+001F, a lone surrogate) can only come from a JSON ``\\u`` escape: ``raw``
    is valid UTF-8 (no surrogate survives its decoding) and JSON refuses raw control characters in
    strings. So a record without an escape is storable as it is: most skip the walk over fields."""
    if b"\\u" not in raw:
        return
    if isinstance(m, Event):
        ids = {f: getattr(m, f) for f in _EVENT_IDS if getattr(m, f) is not None}
        ids.update({f"item_ids.{i}": v for i, v in enumerate(m.item_ids or ())})
        texts = {**ids, "query": m.query} if m.query is not None else ids
    else:
        ids = {"item_id": m.item_id, **({"category": m.category} if m.category else {})}
        texts = {**ids, **{f: getattr(m, f) for f in ("title", "description") if getattr(m, f)}}
    if SEP in "".join(ids.values()):  # rare: then name the field
        for name, value in ids.items():
            if SEP in value:
                raise Rejected("invalid", f"{name}: must not contain U+001F (reserved as a field separator)")
    try:
        "".join(texts.values()).encode("utf-8")
    except UnicodeEncodeError:
        for name, value in texts.items():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Rejected("invalid", f"{name}: contains a lone surrogate, not encodable as UTF-8") from None


def classify(
    raw: bytes | None,
    *,
    topic: str,
    is_catalog: bool,
    max_bytes: int,
    partition: int | None = None,
    offset: int | None = None,
    key: bytes | None = None,
    now_ms: int = 0,
) -> Event | CatalogOp | DeadLetter:
    """Accept or dead-letter ``raw``; a bug in validation itself is dead-lettered too (``invalid``)."""
    raw = raw if raw is not None else b""  # a null value (tombstone) is not an event
    try:
        m = decode_catalog(raw, max_bytes) if is_catalog else decode_event(raw, max_bytes)
        _check_storable(m, raw)
        return m
    except Rejected as rej:
        rejected = rej
    except Exception as e:  # noqa: BLE001 - nothing may escape: the record would be lost
        rejected = Rejected("invalid", f"validator failed: {traceback.format_exception_only(e)[-1].strip()}")
    return DeadLetter.of(rejected, raw, topic=topic, partition=partition, offset=offset, key=key, now_ms=now_ms)
