"""The vectors-topic record: one item's vector and metadata, or its deletion (key = item_id)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from streamrec.vector_index.live import ItemMeta


@dataclass(frozen=True)
class VectorRecord:
    """One item's state on the vectors topic (key = item_id); ``deleted`` records remove it."""

    item_id: str
    deleted: bool = False
    vector: np.ndarray | None = None
    meta: ItemMeta | None = None
    content_hash: str | None = None
    model_id: str | None = None
    source_ms: int | None = None  # when the catalog event was appended (freshness metric)


def encode_record(r: VectorRecord) -> bytes:
    """JSON with the vector as base64 little-endian float32: exact, and readable by any client.

    Deletes are explicit ``{"deleted": true}`` records rather than null-value tombstones, so a
    replica never depends on the broker's handling of nulls on compacted topics.
    """
    body: dict = {"item_id": r.item_id, "deleted": r.deleted, "source_ms": r.source_ms}
    if not r.deleted:
        if r.vector is None or r.meta is None:
            raise ValueError("an upsert vector record needs vector and meta")
        body.update(
            vector=base64.b64encode(np.asarray(r.vector, dtype="<f4").tobytes()).decode(),
            dim=int(np.asarray(r.vector).shape[-1]),
            meta=asdict(r.meta),
            content_hash=r.content_hash,
            model_id=r.model_id,
        )
    return json.dumps(body, separators=(",", ":")).encode()


def decode_record(raw: bytes | None, key: bytes | None = None) -> VectorRecord:
    """Inverse of :func:`encode_record`; a null value (broker tombstone) reads as a delete."""
    if raw is None:
        if key is None:
            raise ValueError("null vector record without a key")
        return VectorRecord(item_id=key.decode(), deleted=True)
    try:
        body = json.loads(raw)
        item_id = str(body["item_id"])
        if body.get("deleted"):
            return VectorRecord(item_id=item_id, deleted=True, source_ms=body.get("source_ms"))
        vec = np.frombuffer(base64.b64decode(body["vector"]), dtype="<f4").astype(np.float32)
        if vec.shape[0] != int(body["dim"]):
            raise ValueError(f"vector has {vec.shape[0]} floats, record says dim {body['dim']}")
        return VectorRecord(
            item_id=item_id,
            vector=vec,
            meta=ItemMeta(**body["meta"]),
            content_hash=body.get("content_hash"),
            model_id=body.get("model_id"),
            source_ms=body.get("source_ms"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad vector record: {e}") from None


def to_batch(records: Iterable[VectorRecord]) -> tuple[list[tuple[str, np.ndarray, ItemMeta]], list[str]]:
    """Records in topic order → one ``apply`` batch (the last record per item wins)."""
    last: dict[str, VectorRecord] = {}
    for r in records:
        last.pop(r.item_id, None)
        last[r.item_id] = r
    upserts: list[tuple[str, np.ndarray, ItemMeta]] = []
    for r in last.values():
        if not r.deleted:
            assert r.vector is not None and r.meta is not None  # decode_record: a live item has both
            upserts.append((r.item_id, r.vector, r.meta))
    deletes = [r.item_id for r in last.values() if r.deleted]
    return upserts, deletes
