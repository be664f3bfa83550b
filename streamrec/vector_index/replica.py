"""``IndexReplica``: a LiveIndex kept in step with the vectors topic, started from a snapshot."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from streamrec.bus import all_partitions, make_consumer
from streamrec.encoder import model_id_for
from streamrec.settings import Settings
from streamrec.vector_index.live import LiveIndex
from streamrec.vector_index.metrics import EVENT_TO_SEARCHABLE, REPLICA_APPLIED, REPLICA_BAD
from streamrec.vector_index.records import VectorRecord, decode_record, to_batch
from streamrec.vector_index.snapshots import (
    SnapshotError,
    index_snapshot_dir,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)

log = logging.getLogger(__name__)


class IndexReplica:
    """Keeps ``index`` in step with the vectors topic: newest usable snapshot, then the tail.

    No consumer group: every replica reads every partition, so any number can run side by side.
    One poll becomes one ``apply`` batch. Offsets and content hashes move under the same lock as
    the batch, so :meth:`snapshot` always records exactly the offsets the index covers.
    """

    def __init__(self, s: Settings, dim: int, from_snapshot: bool = True):
        self.s = s
        self.index = LiveIndex(
            dim,
            s.index.factory,
            s.index.metric,
            s.index.use_gpu,
            nprobe=s.index.nprobe,
            ef_search=s.index.ef_search,
            compact_ratio=s.index.compact_ratio,
            search_threads=s.index.search_threads,
        )
        self.from_snapshot = from_snapshot
        self.hashes: dict[str, str] = {}
        self.expected_model = model_id_for(s)
        self._foreign_models: set[str] = set()
        self.loaded_snapshot: Path | None = None
        self.caught_up = threading.Event()
        self._offsets: dict[int, int] = {}
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Load the newest usable snapshot now (so a replica never serves an empty index when one
        exists), then follow the topic's tail in a background thread."""
        if self._thread is not None:
            raise RuntimeError("replica already started")
        if self.from_snapshot:
            self._load_snapshot()
        self._thread = threading.Thread(target=self._run, name="index-replica", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the replica has read to the end of the topic as it was when checked."""
        return self.caught_up.wait(timeout_s)

    def vector_if(self, item_id: str, content_hash: str) -> np.ndarray | None:
        """The item's vector if it was embedded from the text with ``content_hash`` (read together,
        under the apply lock, so a vector is never paired with another text's hash)."""
        with self._apply_lock:
            return self.index.vector(item_id) if self.hashes.get(item_id) == content_hash else None

    @property
    def offsets(self) -> dict[int, int]:
        with self._apply_lock:
            return dict(self._offsets)

    def snapshot(self, model_id: str | None = None) -> Path:
        """Write the index and the offsets it covers (the updater calls this periodically)."""
        with self._apply_lock:
            dump = self.index.dump()
            offsets = dict(self._offsets)
            hashes = {i: self.hashes[i] for i in dump.item_ids if i in self.hashes}
        return write_snapshot(
            index_snapshot_dir(self.s),
            dump,
            topic=self.s.topic.vectors,
            offsets=offsets,
            hashes=hashes,
            model_id=model_id,
            keep=self.s.index.snapshots_kept,
        )

    def _load_snapshot(self) -> None:
        for path in list_snapshots(index_snapshot_dir(self.s)):
            try:
                snap = read_snapshot(path)
                if snap.manifest["topic"] != self.s.topic.vectors:
                    raise SnapshotError(
                        f"snapshot {path} covers topic {snap.manifest['topic']}, not {self.s.topic.vectors}"
                    )
                self.index.load(snap.dump)
            except (SnapshotError, ValueError, RuntimeError) as e:
                log.error("%s; trying an older snapshot, else rebuilding from the topic", e)
                continue
            with self._apply_lock:
                self._offsets = snap.offsets
                self.hashes = dict(snap.hashes)
            self.loaded_snapshot = path
            log.info(
                "index replica loaded %s (%d items, offsets %s, %s)",
                path,
                len(self.index),
                snap.offsets,
                self.index.device,
            )
            return
        log.info(
            "no usable index snapshot in %s: replaying %s from the start",
            index_snapshot_dir(self.s),
            self.s.topic.vectors,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # keep serving the index we have; resume from the applied offsets
                log.exception("index replica lost %s; reconnecting in 2s", self.s.topic.vectors)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = make_consumer(self.s, None, fetch_max_wait_ms=50)
        try:
            tps = all_partitions(consumer, self.s.topic.vectors, timeout_s=30)
            consumer.assign(tps)
            for tp in tps:
                offset = self._offsets.get(tp.partition)
                if offset is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=200, max_records=5000)
                if polled:
                    self._apply(polled)
                elif not self.caught_up.is_set():
                    ends = consumer.end_offsets(tps)
                    # Tansu reports the last batch's base offset as the end: ≥ is right for both.
                    if all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps):
                        self.caught_up.set()
        finally:
            consumer.close()

    def _apply(self, polled: dict) -> None:
        records: list[VectorRecord] = []
        last_offsets: dict[int, int] = {}
        for tp, msgs in polled.items():
            for m in msgs:
                last_offsets[tp.partition] = m.offset + 1
                try:
                    r = decode_record(m.value, m.key)
                    v = r.vector
                    if not r.deleted and (v is None or v.shape[0] != self.index.dim or not np.all(np.isfinite(v))):
                        dim = None if v is None else v.shape[0]
                        raise ValueError(f"vector dim {dim} (index dim {self.index.dim}) or non-finite")
                except ValueError as e:
                    REPLICA_BAD.inc()
                    log.error("skipping vector record %s[%d]@%d: %s", tp.topic, tp.partition, m.offset, e)
                    continue
                if r.model_id and r.model_id != self.expected_model and r.model_id not in self._foreign_models:
                    self._foreign_models.add(r.model_id)  # once per model: a migration is in progress
                    log.warning(
                        "vectors from %s while this replica encodes queries with %s; they "
                        "compare only once index_updater re-embeds with the same model",
                        r.model_id,
                        self.expected_model,
                    )
                records.append(r)
        upserts, deletes = to_batch(records)
        with self._apply_lock:
            self.index.apply(upserts, deletes)
            for r in records:
                if r.deleted:
                    self.hashes.pop(r.item_id, None)
                elif r.content_hash:
                    self.hashes[r.item_id] = r.content_hash
            self._offsets.update(last_offsets)
        now_ms = time.time() * 1000
        for r in records:
            if r.source_ms:
                EVENT_TO_SEARCHABLE.observe(max(0.0, now_ms - r.source_ms) / 1000)
        REPLICA_APPLIED.labels("upsert").inc(len(upserts))
        REPLICA_APPLIED.labels("delete").inc(len(deletes))
