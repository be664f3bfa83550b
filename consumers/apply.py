"""Apply one partition batch to Redis atomically: features, bot decisions, outbox and offset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

from consumers.botfilter import BotConfig
from streamrec.features import APPLY_LUA, SEP, FeatureConfig, Keys, expansion_terms, script_config
from streamrec.schemas import CatalogOp, DeadLetter, Event, encode

Record = tuple[int, Event | CatalogOp | DeadLetter, bytes, bytes | None]  # offset, model, raw, key


@dataclass(frozen=True)
class BatchResult:
    status: str  # "ok" or "gap" (the batch starts after the stored offset: seek back to it)
    stored_before: int  # next offset to apply before this call (-1: never applied)
    applied: int = 0
    skipped: int = 0  # already applied by an earlier attempt
    outbox_len: int = 0
    quarantined: list[str] = field(default_factory=list)


_S = SEP.encode()


def _record(offset: int, m: Event | CatalogOp | DeadLetter, raw: bytes, key: bytes | None, cfg: FeatureConfig) -> bytes:
    """One record as the writer script reads it (fields joined by U+001F, format in streamrec/features/writer.py)."""
    if isinstance(m, Event):
        # the query's analysed terms: only where the script can use them (a search shown, an outcome)
        outcome = m.type == "impression" or cfg.expansion_weight(m.type) > 0
        terms = " ".join(expansion_terms(m.query, cfg.expansion_query_terms)) if outcome else ""
        rid = m.request_id or ""
        if m.type == "impression":
            f = [str(offset), "i", m.event_id, m.user_id, str(m.ts), json.dumps(m.item_ids), rid, terms]
        else:
            assert m.item_id is not None  # every other event names its item (Event's validator)
            f = [str(offset), "e", m.event_id, m.type, m.user_id, m.item_id, str(m.ts), m.session_id or "", rid, terms]
        return SEP.join(f).encode() + _S + raw
    if isinstance(m, CatalogOp):
        if m.op == "upsert":
            assert m.title is not None  # an upsert has one (CatalogOp's validator)
            price = repr(m.price) if m.price is not None else ""
            return SEP.join([str(offset), "u", m.item_id, str(m.ts), m.category or "", price, m.title]).encode()
        return SEP.join([str(offset), "x", m.item_id, str(m.ts)]).encode()
    return SEP.join([str(offset), "r", m.reason]).encode() + _S + encode(m) + _S + (key or b"")


class Writer:
    """Calls the writer script (``streamrec.features.APPLY_LUA``) for one partition batch."""

    def __init__(
        self,
        r: redis.Redis,
        prefix: str,
        group: str,
        features: FeatureConfig | None = None,
        bot: BotConfig | None = None,
    ):
        self.r = r
        self.keys = Keys(prefix)
        self.group = group
        self.prefix = prefix
        self.features = features or FeatureConfig()
        self.config_json = script_config(self.features, (bot or BotConfig()).script_fields(), self.keys)
        self.script = r.register_script(APPLY_LUA)

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
        """Apply ``records`` (offsets ``first_offset`` … ``next_offset - 1``, some may be left out)."""
        if first_offset is None:
            first_offset = records[0][0] if records else next_offset
        args: list = [self.prefix, self.config_json, next_offset, first_offset]
        args.extend(_record(*rec, self.features) for rec in records)
        reply = self.script(keys=[self.offset_key(topic, partition), self.outbox_key(topic, partition)], args=args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "gap":
            return BatchResult("gap", int(reply[1]))
        reasons = [x.decode() if isinstance(x, bytes) else x for x in reply[5:]]
        return BatchResult("ok", int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), reasons)
