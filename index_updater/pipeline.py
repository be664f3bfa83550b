"""One catalog batch → vector records: validate, keep the last op per item, skip unchanged items,
embed the rest in encoder batches, publish, and wait for the broker to acknowledge everything.

An item whose embedded text (content hash) is unchanged is not re-embedded: if only its metadata
changed (price, say) the current vector is republished with the new metadata, else nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from index_updater import metrics
from streamrec import bus
from streamrec.encoder import Encoder, check_template, content_hash, item_text
from streamrec.schemas import CatalogOp, DeadLetter, Rejected, decode_catalog, encode
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica, ItemMeta, VectorRecord, encode_record

log = logging.getLogger(__name__)


def meta_of(op: CatalogOp) -> ItemMeta:
    return ItemMeta(title=op.title or "", category=op.category, price=op.price, description=op.description)


def meta_fingerprint(meta: ItemMeta) -> str:
    return hashlib.blake2b(json.dumps(asdict(meta), sort_keys=True).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class BatchResult:
    sent: int
    embedded: int
    unchanged: int
    dead_lettered: int


class CatalogPipeline:
    """Turns catalog records into acknowledged vector records; no offsets are touched here."""

    def __init__(self, s: Settings, encoder: Encoder, replica: IndexReplica, producer: KafkaProducer):
        check_template(s.item_text_template)
        self.s, self.encoder, self.replica, self.producer = s, encoder, replica, producer
        # What this process last published per item: (content hash, meta fingerprint), None = deleted.
        # It overrides the replica, which may not have read our latest sends yet.
        self._published: dict[str, tuple[str, str] | None] = {}

    def forget(self) -> None:
        """After a rebalance another instance may have published: trust the replica again."""
        self._published.clear()

    def _current(self, item_id: str) -> tuple[str, str] | None:
        if item_id in self._published:
            return self._published[item_id]
        h, meta = self.replica.hashes.get(item_id), self.replica.index.meta(item_id)
        return (h, meta_fingerprint(meta)) if h and meta else None

    def process(self, msgs: list[ConsumerRecord]) -> BatchResult:
        """Raises (KafkaError, …) if any send is not acknowledged: the caller must not commit."""
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        dead_letters: list[bus.Outgoing] = []
        latest: dict[str, tuple[CatalogOp, int]] = {}
        for m in msgs:
            raw = m.value if m.value is not None else b""
            try:
                op = decode_catalog(raw, self.s.max_event_bytes)
            except Rejected as r:
                letter = DeadLetter.of(r, raw, topic=m.topic, partition=m.partition, offset=m.offset,
                                       key=m.key, now_ms=now_ms)
                dead_letters.append((self.s.topic_dlq, m.key, encode(letter)))
                metrics.CATALOG_RECORDS.labels("dead_lettered").inc()
                log.warning("catalog record %s[%d]@%d dead-lettered: %s", m.topic, m.partition, m.offset, r)
                continue
            source_ms = m.timestamp if m.timestamp and m.timestamp > 0 else now_ms
            latest.pop(op.item_id, None)
            latest[op.item_id] = (op, source_ms)

        records: list[tuple[VectorRecord, tuple[str, str] | None]] = []
        to_embed: list[tuple[CatalogOp, int, str, ItemMeta, str]] = []
        unchanged = 0
        for op, source_ms in latest.values():
            if op.op == "delete":
                records.append((VectorRecord(op.item_id, deleted=True, source_ms=source_ms), None))
                continue
            text = item_text(op, self.s.item_text_template)
            h, meta = content_hash(text, self.encoder.model_id), meta_of(op)
            fp = meta_fingerprint(meta)
            current = self._current(op.item_id)
            if current is not None and current[0] == h:
                if current[1] == fp:
                    unchanged += 1
                    continue
                vec = self.replica.vector_if(op.item_id, h)  # embedded from this very text
                if vec is not None:
                    records.append((VectorRecord(op.item_id, vector=vec, meta=meta, content_hash=h,
                                                 model_id=self.encoder.model_id, source_ms=source_ms), (h, fp)))
                    metrics.CATALOG_RECORDS.labels("reused_vector").inc()
                    continue
            to_embed.append((op, source_ms, h, meta, text))

        if to_embed:
            t0 = time.monotonic()
            vectors = self.encoder.encode([t for *_, t in to_embed])
            metrics.EMBED_RATE.set(len(to_embed) / max(time.monotonic() - t0, 1e-9))
            metrics.ITEMS_EMBEDDED.inc(len(to_embed))
            for (op, source_ms, h, meta, _), vec in zip(to_embed, vectors):
                records.append((VectorRecord(op.item_id, vector=vec, meta=meta, content_hash=h,
                                             model_id=self.encoder.model_id, source_ms=source_ms),
                                (h, meta_fingerprint(meta))))

        vectors_out = [(self.s.topic_vectors, rec.item_id, encode_record(rec)) for rec, _ in records]
        bus.publish_confirmed(self.producer, dead_letters + vectors_out, timeout_s=30)
        for rec, state in records:
            self._published[rec.item_id] = state
        deleted = sum(1 for rec, _ in records if rec.deleted)
        metrics.CATALOG_RECORDS.labels("embedded").inc(len(to_embed))
        metrics.CATALOG_RECORDS.labels("deleted").inc(deleted)
        metrics.CATALOG_RECORDS.labels("unchanged").inc(unchanged)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        return BatchResult(sent=len(records), embedded=len(to_embed), unchanged=unchanged,
                           dead_lettered=len(dead_letters))
