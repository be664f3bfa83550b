"""One catalog batch → vector records: validate, keep the last op per item, skip unchanged items,
embed the rest in encoder batches, publish, and wait for the broker to acknowledge everything.

The steps are separate (``prepare`` → ``embed`` → ``send`` → ``confirm``) so the service can embed
one chunk while the previous one is being acknowledged; ``process`` runs them in a row.

An item whose embedded text (content hash) is unchanged is not re-embedded: if only its metadata
changed (price, say) the current vector is republished with the new metadata, else nothing is sent.
A patch is first folded into the whole item it changes (``patches.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord

from index_updater import metrics, patches
from streamrec import bus
from streamrec.encoder import Encoder, check_template, content_hash, item_text, set_torch_threads
from streamrec.schemas import CatalogOp, DeadLetter, Rejected, decode_catalog, encode
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica, ItemMeta, VectorRecord, encode_record

log = logging.getLogger(__name__)


def meta_of(op: CatalogOp, created_ms: int | None) -> ItemMeta:
    return ItemMeta(
        title=op.title or "",
        category=op.category,
        price=op.price,
        description=op.description,
        brand=op.brand,
        in_stock=op.in_stock,
        stock=op.stock,
        attributes={k: v for k, v in (op.attributes or {}).items() if v is not None},
        created_ms=created_ms,
    )


def meta_fingerprint(meta: ItemMeta) -> str:
    return hashlib.blake2b(json.dumps(asdict(meta), sort_keys=True).encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class BatchResult:
    sent: int
    embedded: int
    unchanged: int
    dead_lettered: int


@dataclass(frozen=True)
class Latest:
    """An item's last op in the batch and when it happened (the record's timestamp)."""

    op: CatalogOp
    source_ms: int
    msg: ConsumerRecord  # the record of the item's last op: a patch that cannot apply is dead-lettered with it


@dataclass(frozen=True)
class Change:
    """An upsert whose vector must be (re)published: what the item's text and metadata now are."""

    op: CatalogOp
    source_ms: int
    content_hash: str
    meta: ItemMeta
    fingerprint: str  # of meta
    text: str

    def outgoing(self, vector: np.ndarray, model_id: str) -> ToPublish:
        record = VectorRecord(
            self.op.item_id,
            vector=vector,
            meta=self.meta,
            content_hash=self.content_hash,
            model_id=model_id,
            source_ms=self.source_ms,
        )
        return ToPublish(record, (self.content_hash, self.fingerprint))


@dataclass(frozen=True)
class ToPublish:
    """A vector record to publish and what to remember about the item once the broker has it:
    (content hash, meta fingerprint), or None for a delete."""

    record: VectorRecord
    state: tuple[str, str] | None


@dataclass
class Plan:
    """A batch's ops sorted: records ready to send, changes to embed first, how many were unchanged."""

    ready: list[ToPublish] = field(default_factory=list)
    to_embed: list[Change] = field(default_factory=list)
    unchanged: int = 0


@dataclass
class Job:
    """A prepared chunk: its dead letters and its plan; ``embed`` turns it into records to send."""

    msgs: list[ConsumerRecord]
    dead_letters: list[bus.Outgoing]
    plan: Plan
    started: float


@dataclass
class InFlight:
    """A chunk handed to the producer, waiting for the broker's acknowledgements."""

    job: Job
    outgoing: list[ToPublish]
    sending: bus.Sending


class CatalogPipeline:
    """Turns catalog records into acknowledged vector records; no offsets are touched here."""

    def __init__(self, s: Settings, encoder: Encoder, replica: IndexReplica, producer: KafkaProducer):
        check_template(s.encoder.item_text_template)
        self.s, self.encoder, self.replica, self.producer = s, encoder, replica, producer
        # What this process last published per item: (content hash, meta fingerprint), None = deleted,
        # and the metadata (what a patch applies to). It overrides the replica, which may not have
        # read our latest sends yet.
        self._published: dict[str, tuple[str, str] | None] = {}
        self._published_meta: dict[str, ItemMeta] = {}
        self.last_embed: tuple[int, float] = (0, 0.0)  # (texts, seconds) of the last encoder call

    def forget(self) -> None:
        """After a rebalance another instance may have published: trust the replica again."""
        self._published.clear()
        self._published_meta.clear()

    def _current_meta(self, item_id: str) -> ItemMeta | None:
        if item_id in self._published:
            return self._published_meta.get(item_id)
        return self.replica.index.meta(item_id)

    def _current(self, item_id: str) -> tuple[str, str] | None:
        if item_id in self._published:
            return self._published[item_id]
        h, meta = self.replica.hashes.get(item_id), self.replica.index.meta(item_id)
        return (h, meta_fingerprint(meta)) if h and meta else None

    def process(self, msgs: list[ConsumerRecord]) -> BatchResult:
        """Raises (KafkaError, …) if any send is not acknowledged: the caller must not commit."""
        job = self.prepare(msgs)
        return self.confirm(self.send(job, self.embed(job)))

    def prepare(self, msgs: list[ConsumerRecord]) -> Job:
        """Validate and plan (cheap). Plans against what was sent, acknowledged or not, so a chunk
        prepared while the previous one is in flight sees its items' new state."""
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        latest, dead_letters = self._decode(msgs, now_ms)
        dead_letters += self._resolve_patches(latest, now_ms)
        return Job(msgs, dead_letters, self._plan(latest), started)

    def embed(self, job: Job, threads: int = 0) -> list[ToPublish]:
        """The encoder's part, in whichever thread calls it; ``threads`` > 0 sets that thread's torch
        threads first (the count is per calling thread under OpenMP)."""
        set_torch_threads(threads)
        return job.plan.ready + self._embed(job.plan.to_embed)

    def send(self, job: Job, outgoing: list[ToPublish]) -> InFlight:
        """Hand the chunk's records to the producer without waiting for the broker."""
        vectors: list[bus.Outgoing] = [
            (self.s.topic.vectors, o.record.item_id, encode_record(o.record)) for o in outgoing
        ]
        try:
            sending = bus.send_all(self.producer, job.dead_letters + vectors, timeout_s=30)
        except Exception:
            self.forget()
            raise
        for o in outgoing:  # before the ack, so the next chunk's plan sees it; forgotten if the ack fails
            self._published[o.record.item_id] = o.state
            if o.record.meta is not None:
                self._published_meta[o.record.item_id] = o.record.meta
            else:
                self._published_meta.pop(o.record.item_id, None)
        return InFlight(job, outgoing, sending)

    def confirm(self, flight: InFlight) -> BatchResult:
        """Wait for the broker; raises (KafkaError) if a record is not acknowledged, after which
        the caller redoes the chunk and nothing sent is trusted over the replica."""
        try:
            bus.confirm(self.producer, flight.sending)
        except Exception:
            self.forget()
            raise
        plan, outgoing = flight.job.plan, flight.outgoing
        metrics.CATALOG_RECORDS.labels("embedded").inc(len(plan.to_embed))
        metrics.CATALOG_RECORDS.labels("deleted").inc(sum(1 for o in outgoing if o.record.deleted))
        metrics.CATALOG_RECORDS.labels("unchanged").inc(plan.unchanged)
        metrics.BATCH_SECONDS.observe(time.monotonic() - flight.job.started)
        return BatchResult(
            sent=len(outgoing),
            embedded=len(plan.to_embed),
            unchanged=plan.unchanged,
            dead_lettered=len(flight.job.dead_letters),
        )

    def token_counts(self, msgs: list[ConsumerRecord]) -> list[int]:
        """Tokens each record's item text embeds as (0 for invalid records and deletes): the
        backlog picks bulk chunks of similar length by it."""
        texts = []
        for m in msgs:
            try:
                op = decode_catalog(m.value if m.value is not None else b"", self.s.consumers.max_event_bytes)
            except Rejected:
                op = None
            texts.append(
                item_text(op, self.s.encoder.item_text_template) if op is not None and op.op == "upsert" else ""
            )
        counts = self.encoder.token_counts(texts, max_length=self.s.encoder.item_max_tokens or None)
        return [c if text else 0 for c, text in zip(counts, texts, strict=True)]

    def _decode(self, msgs: list[ConsumerRecord], now_ms: int) -> tuple[dict[str, Latest], list[bus.Outgoing]]:
        """Each item's ops in the batch folded into one (in order of each item's last op; a patch
        merges into what came before it) and dead letters for the invalid."""
        dead_letters: list[bus.Outgoing] = []
        latest: dict[str, Latest] = {}
        for m in msgs:
            raw = m.value if m.value is not None else b""
            try:
                op = decode_catalog(raw, self.s.consumers.max_event_bytes)
                before = latest.pop(op.item_id, None)  # re-inserted at the end: a later op of an item goes out later
                if op.op == "patch" and before is not None:
                    if before.op.op == "delete":
                        latest[op.item_id] = before
                        raise Rejected("unknown_item", f"patch of item {op.item_id!r}, deleted earlier in the batch")
                    op = patches.merge(before.op, op)
            except Rejected as r:
                dead_letters.append(self._dead_letter(r, m, now_ms))
                continue
            latest[op.item_id] = Latest(op, m.timestamp if m.timestamp and m.timestamp > 0 else now_ms, m)
        return latest, dead_letters

    def _dead_letter(self, r: Rejected, m: ConsumerRecord, now_ms: int) -> bus.Outgoing:
        raw = m.value if m.value is not None else b""
        letter = DeadLetter.of(r, raw, topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, now_ms=now_ms)
        metrics.CATALOG_RECORDS.labels("dead_lettered").inc()
        log.warning("catalog record %s[%d]@%d dead-lettered: %s", m.topic, m.partition, m.offset, r)
        return (self.s.topic.dlq, m.key, encode(letter))

    def _resolve_patches(self, latest: dict[str, Latest], now_ms: int) -> list[bus.Outgoing]:
        """Each remaining patch applied to the item as last published (it becomes an upsert); a patch
        of an item the index does not have is dead-lettered (``unknown_item``) and dropped from the plan."""
        dead_letters = []
        for item_id, item in list(latest.items()):
            if item.op.op != "patch":
                continue
            current = self._current_meta(item_id)
            if current is None:
                del latest[item_id]
                why = f"patch of item {item_id!r}, which the index does not have: send an upsert first"
                dead_letters.append(self._dead_letter(Rejected("unknown_item", why), item.msg, now_ms))
                continue
            try:
                merged = patches.merge(patches.as_upsert(item_id, current, item.op.ts), item.op)
            except Rejected as r:
                del latest[item_id]
                dead_letters.append(self._dead_letter(r, item.msg, now_ms))
                continue
            latest[item_id] = Latest(merged, item.source_ms, item.msg)
        return dead_letters

    def _plan(self, latest: dict[str, Latest]) -> Plan:
        """Sort each item's op: a delete, unchanged (nothing to send), same text with new metadata
        (the current vector republished), or new text (to embed)."""
        plan = Plan()
        for item in latest.values():
            op, source_ms = item.op, item.source_ms
            if op.op == "delete":
                plan.ready.append(ToPublish(VectorRecord(op.item_id, deleted=True, source_ms=source_ms), None))
                continue
            text = item_text(op, self.s.encoder.item_text_template)
            known = self._current_meta(op.item_id)
            meta = meta_of(op, created_ms=known.created_ms if known is not None else op.ts)
            h = content_hash(text, self.encoder.model_id, self.s.encoder.item_max_tokens)
            change = Change(op, source_ms, h, meta, meta_fingerprint(meta), text)
            current = self._current(op.item_id)
            if current is not None and current[0] == change.content_hash:
                if current[1] == change.fingerprint:
                    plan.unchanged += 1
                    continue
                vec = self.replica.vector_if(op.item_id, change.content_hash)  # embedded from this very text
                if vec is not None:
                    plan.ready.append(change.outgoing(vec, self.encoder.model_id))
                    metrics.CATALOG_RECORDS.labels("reused_vector").inc()
                    continue
            plan.to_embed.append(change)
        return plan

    def _embed(self, changes: list[Change]) -> list[ToPublish]:
        """One encoder call for the batch's new texts."""
        if not changes:
            return []
        t0 = time.monotonic()
        vectors = self.encoder.encode([c.text for c in changes], max_length=self.s.encoder.item_max_tokens or None)
        self.last_embed = (len(changes), time.monotonic() - t0)
        metrics.EMBED_SECONDS.inc(self.last_embed[1])
        metrics.EMBED_RATE.set(len(changes) / max(time.monotonic() - t0, 1e-9))
        metrics.ITEMS_EMBEDDED.inc(len(changes))
        return [c.outgoing(vec, self.encoder.model_id) for c, vec in zip(changes, vectors, strict=True)]
