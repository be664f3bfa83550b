"""The live item index: FAISS with stable string ids, atomic batches, tombstones and snapshots.

``LiveIndex`` maps item ids to fresh int64 FAISS ids on every upsert. A replaced or deleted
item's old FAISS id is removed where the index type allows it (Flat, IVF, PQ/SQ on CPU) and is
otherwise left as a *tombstone*: searches over-fetch by the tombstone count and drop every id
that no longer maps to a live item, so a stale vector is never returned (HNSW, GPU indexes).
Background compaction rebuilds the index from the live vectors once tombstones pile up, and IVF
or PQ factories train themselves the same way once enough vectors exist (exact search until then).
A readers–writer lock makes every ``apply`` batch atomic to searches; writers hold it only for
the FAISS add/remove of one batch, never for a rebuild.

``IndexReplica`` keeps a ``LiveIndex`` in step with the compacted vectors topic written by
index_updater (see :func:`encode_record` for the record format). It starts from the newest
snapshot (format described above :func:`write_snapshot`) and replays only the tail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from streamrec.bus import all_partitions, make_consumer
from streamrec.encoder import model_id_for
from streamrec.settings import Settings

log = logging.getLogger(__name__)

REPLICA_APPLIED = Counter("streamrec_index_replica_records_total",
                          "vector records applied by replicas", ["kind"])
REPLICA_BAD = Counter("streamrec_index_replica_bad_records_total",
                      "vector records a replica could not decode (logged and skipped)")
EVENT_TO_SEARCHABLE = Histogram(
    "streamrec_index_event_to_searchable_seconds",
    "catalog event appended → its vector searchable in a replica",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
REPLICA_SIZE = Gauge("streamrec_index_replica_items", "live items in the replica index")
REBUILDS = Counter("streamrec_index_rebuilds_total", "background index rebuilds", ["why"])


@dataclass(frozen=True)
class ItemMeta:
    """What serving shows next to a hit, carried with the vector so replicas need no catalog."""

    title: str
    category: str | None = None
    price: float | None = None
    description: str | None = None


# --- locking ----------------------------------------------------------------------------------

class RWLock:
    """Many concurrent searches or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def read(self) -> _Held:
        return _Held(self.acquire_read, self.release_read)

    def write(self) -> _Held:
        return _Held(self.acquire_write, self.release_write)


class _Held:
    def __init__(self, enter, leave):
        self._enter, self._leave = enter, leave

    def __enter__(self):
        self._enter()

    def __exit__(self, *exc):
        self._leave()


# --- FAISS helpers ----------------------------------------------------------------------------

def _metric(metric: str) -> int:
    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"index metric must be 'ip' or 'l2', not {metric!r}")


def want_gpu(use_gpu: str) -> bool:
    """GPU when asked for, or on 'auto' when this faiss build sees one."""
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "always" and n == 0:
        raise RuntimeError("index_use_gpu=always but faiss sees no GPU (is faiss-gpu installed?)")
    return use_gpu != "never" and n > 0


def _has_native_ids(index: faiss.Index) -> bool:
    """IVF indexes store arbitrary int64 ids themselves (and remove by them)."""
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def min_train_points(index: faiss.Index) -> int:
    """FAISS warns below 39 points per IVF list; PQ codebooks (256 centroids) and PCA need a few hundred."""
    floor = max(256, int(index.d))
    try:
        return max(39 * faiss.extract_index_ivf(index).nlist, floor)
    except RuntimeError:
        return floor


@dataclass
class _State:
    """Everything that must switch together when a rebuild swaps in a new FAISS index."""

    index: faiss.Index
    ids: dict[str, int] = field(default_factory=dict)     # live item → FAISS id
    items: dict[int, str] = field(default_factory=dict)   # FAISS id → live item
    next_id: int = 0
    exact: bool = False          # an untrained factory, standing in with exact search
    removable: bool = True       # False: FAISS cannot remove, tombstones instead
    on_gpu: bool = False
    dead: set[int] = field(default_factory=set)  # tombstoned FAISS ids still in the index
    # CPU only: a selector excluding ``dead`` so filtered search need not over-fetch.
    selector: tuple | None = None
    selector_ok: bool = True

    @property
    def tombstones(self) -> int:
        return len(self.dead)

    def refresh_selector(self) -> None:
        if not self.dead or self.on_gpu or not self.selector_ok:
            self.selector = None
            return
        batch = faiss.IDSelectorBatch(np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
        self.selector = (batch, faiss.IDSelectorNot(batch))  # keep both alive


@dataclass
class IndexDump:
    """A consistent copy of a LiveIndex, what snapshots store."""

    dim: int
    factory: str
    metric: str
    version: int
    item_ids: list[str]
    faiss_ids: np.ndarray        # int64 (n,)
    vectors: np.ndarray          # float32 (n, dim)
    metas: list[ItemMeta]
    index_bytes: np.ndarray | None   # faiss.serialize_index of the CPU index, None when exact stand-in
    next_id: int
    dead_ids: np.ndarray         # int64 tombstones inside index_bytes


class LiveIndex:
    """Thread-safe FAISS index over string ids; a search never sees half a batch.

    Scores are "higher is better": the inner product for ``metric='ip'`` (cosine for unit
    vectors), the negated squared distance for ``'l2'``.
    """

    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip", use_gpu: str = "auto", *,
                 nprobe: int = 16, ef_search: int = 64, compact_ratio: float = 0.2,
                 compact_min: int = 1000, search_threads: int = 1):
        self.dim, self.factory, self.metric = int(dim), factory, metric
        self._metric = _metric(metric)
        self.nprobe, self.ef_search = nprobe, ef_search
        self.compact_ratio, self.compact_min = compact_ratio, compact_min
        self.search_threads = search_threads
        self.use_gpu = want_gpu(use_gpu)
        self._gpu_res = None
        self._probe = self._new_cpu_index()  # fails early on a bad factory string
        self._lock = RWLock()
        self._vectors: dict[str, np.ndarray] = {}
        self._metas: dict[str, ItemMeta] = {}
        self._state = self._empty_state()
        self.version = 0
        self._rebuild_log: list[tuple[list, list[str]]] | None = None  # batches applied mid-rebuild
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_mutex = threading.Lock()

    # --- construction ----------------------------------------------------------------------

    def _new_cpu_index(self) -> faiss.Index:
        try:
            index = faiss.index_factory(self.dim, self.factory, self._metric)
        except RuntimeError as e:
            raise ValueError(f"bad FAISS factory string {self.factory!r} for dim {self.dim}: "
                             f"{str(e).splitlines()[-1]}") from None
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) or _has_native_ids(index):
            return index
        # IDMap translates positions; only safe over indexes that shift positions on removal
        # (Flat, PQ, SQ) or cannot remove at all (HNSW) — never over IVF, which keeps its own ids.
        return faiss.IndexIDMap2(index)

    def _tune(self, index: faiss.Index, on_gpu: bool) -> None:
        space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search)):
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError:
                pass  # this index type has no such knob

    def _placed(self, cpu_index: faiss.Index, **fields) -> _State:
        """A state whose index lives on the GPU when wanted and possible (same answers as on CPU).

        GPU indexes cannot remove ids, so they take the tombstone path; a factory faiss cannot
        clone to the GPU (HNSW) stays on the CPU with a warning.
        """
        index, on_gpu = cpu_index, False
        if self.use_gpu:
            try:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                index, on_gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, cpu_index), True
            except (RuntimeError, AttributeError) as e:
                log.warning("factory %r cannot live on the GPU (%s); serving it from CPU", self.factory, e)
        self._tune(index, on_gpu)
        return _State(index=index, on_gpu=on_gpu, removable=not on_gpu, **fields)

    def _empty_state(self) -> _State:
        cpu = self._new_cpu_index()
        exact = not cpu.is_trained
        if exact:
            cpu = faiss.IndexIDMap2(faiss.IndexFlat(self.dim, self._metric))
        return self._placed(cpu, exact=exact)

    def _build_state(self, items: list[str], vectors: np.ndarray) -> _State:
        """A fresh index over ``items`` (trained when the factory needs it and there is enough data)."""
        cpu = self._new_cpu_index()
        exact = False
        if not cpu.is_trained:
            if len(items) >= min_train_points(cpu):
                cpu.train(vectors)
            else:
                cpu, exact = faiss.IndexIDMap2(faiss.IndexFlat(self.dim, self._metric)), True
        ids = np.arange(len(items), dtype=np.int64)
        if len(items):
            cpu.add_with_ids(vectors, ids)
        return self._placed(cpu, ids={it: i for it, i in zip(items, ids.tolist())},
                            items=dict(zip(ids.tolist(), items)), next_id=len(items), exact=exact)

    # --- reads ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._state.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state.ids

    def vector(self, item_id: str) -> np.ndarray | None:
        return self._vectors.get(item_id)

    def meta(self, item_id: str) -> ItemMeta | None:
        return self._metas.get(item_id)

    def item_ids(self) -> list[str]:
        with self._lock.read():
            return list(self._state.ids)

    @property
    def tombstones(self) -> int:
        return self._state.tombstones

    @property
    def device(self) -> str:
        return "gpu" if self._state.on_gpu else "cpu"

    @property
    def trained(self) -> bool:
        """False while an IVF/PQ factory still waits for enough vectors (exact search meanwhile)."""
        return not self._state.exact

    def search(self, queries: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
        """Top-``k`` live items per query row, best first, never an excluded or stale item."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        if k <= 0:
            return [[] for _ in range(len(q))]
        if not isinstance(exclude, (set, frozenset, dict)):
            exclude = set(exclude)
        with self._lock.read():
            st = self._state
            excluded = sum(1 for e in exclude if e in st.ids) if exclude else 0
            dist = ids = None
            if st.selector is not None:  # tombstones skipped inside FAISS (CPU HNSW etc.)
                fetch = min(len(st.items), k + excluded)
                if fetch == 0:
                    return [[] for _ in range(len(q))]
                try:
                    dist, ids = self._faiss_search(st.index, q, fetch, faiss.SearchParameters(sel=st.selector[1]))
                except RuntimeError:
                    log.info("factory %r cannot filter by selector: over-fetching past tombstones", self.factory)
                    st.selector_ok, st.selector = False, None
            if ids is None:  # over-fetch past the tombstones; the id filter below drops them
                fetch = min(int(st.index.ntotal), k + st.tombstones + excluded)
                if fetch == 0:
                    return [[] for _ in range(len(q))]
                dist, ids = self._faiss_search(st.index, q, fetch)
            items = st.items
        sign = -1.0 if self._metric == faiss.METRIC_L2 else 1.0
        out = []
        for drow, irow in zip(dist, ids):
            hits: list[tuple[str, float]] = []
            for d, i in zip(drow.tolist(), irow.tolist()):
                item = items.get(i)
                if item is None or item in exclude:
                    continue
                hits.append((item, sign * d))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def _faiss_search(self, index: faiss.Index, q: np.ndarray, k: int, params=None):
        """Search with ``search_threads`` OpenMP threads in this thread only (the setting is
        per-thread): a one-query search split over busy cores waits at OpenMP barriers — 10× slower
        on a loaded 2-core host — while concurrent requests already use the cores."""
        if not self.search_threads:
            return index.search(q, k, params=params)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.search_threads)
        try:
            return index.search(q, k, params=params)
        finally:
            faiss.omp_set_num_threads(before)

    # --- writes -----------------------------------------------------------------------------

    def apply(self, upserts: list[tuple[str, np.ndarray, ItemMeta]], deletes: list[str]) -> None:
        """One atomic batch: upserts (insert or replace) then deletes; duplicates: last one wins."""
        latest: dict[str, tuple[np.ndarray, ItemMeta] | None] = {}
        for item_id, vec, meta in upserts:
            v = np.asarray(vec, dtype=np.float32).reshape(-1)
            if v.shape[0] != self.dim:
                raise ValueError(f"vector for {item_id!r} has dim {v.shape[0]}, index dim {self.dim}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"vector for {item_id!r} has NaN or inf")
            v.flags.writeable = False
            latest[item_id] = (v, meta)
        for item_id in deletes:
            latest[item_id] = None
        if not latest:
            return
        with self._lock.write():
            self._apply_locked(self._state, latest)
            for item_id, entry in latest.items():
                if entry is None:
                    self._vectors.pop(item_id, None)
                    self._metas.pop(item_id, None)
                else:
                    self._vectors[item_id], self._metas[item_id] = entry
            if self._rebuild_log is not None:
                self._rebuild_log.append(latest)
            self.version += 1
            st = self._state
            needs = (st.tombstones > max(self.compact_min, self.compact_ratio * len(st.ids))
                     or (st.exact and len(st.ids) >= min_train_points(self._probe)))
        REPLICA_SIZE.set(len(self))
        if needs:
            self.rebuild(wait=False, why="train" if st.exact else "compact")

    def _apply_locked(self, st: _State, latest: dict) -> None:
        stale = [st.ids.pop(item_id) for item_id in latest if item_id in st.ids]
        for fid in stale:
            del st.items[fid]
        if stale and st.removable:
            try:
                st.index.remove_ids(np.asarray(stale, dtype=np.int64))
            except RuntimeError:
                log.info("factory %r cannot remove ids: tombstones + compaction instead", self.factory)
                st.removable = False
        if stale and not st.removable:
            st.dead.update(stale)
            st.refresh_selector()
        new = [(item_id, entry[0]) for item_id, entry in latest.items() if entry is not None]
        if new:
            fids = np.arange(st.next_id, st.next_id + len(new), dtype=np.int64)
            st.next_id += len(new)
            st.index.add_with_ids(np.stack([v for _, v in new]), fids)
            for (item_id, _), fid in zip(new, fids.tolist()):
                st.ids[item_id] = fid
                st.items[fid] = item_id

    def rebuild(self, wait: bool = True, why: str = "manual") -> None:
        """Rebuild from the live vectors off the lock (compaction / training), then swap atomically.

        Batches applied meanwhile are logged and replayed onto the new index before the swap.
        """
        with self._rebuild_mutex:
            running = self._rebuild_thread is not None and self._rebuild_thread.is_alive()
            if not running:
                self._rebuild_thread = threading.Thread(target=self._rebuild, args=(why,),
                                                        name="index-rebuild", daemon=True)
                self._rebuild_thread.start()
            thread = self._rebuild_thread
        if wait:
            thread.join()

    def _rebuild(self, why: str) -> None:
        started = time.monotonic()
        with self._lock.read():
            items = list(self._state.ids)
            vectors = self._stack(items)
            self._rebuild_log = []
        try:
            new = self._build_state(items, vectors)
        except Exception:
            log.exception("index rebuild (%s) failed; keeping the current index", why)
            with self._lock.write():
                self._rebuild_log = None
            return
        with self._lock.write():
            for latest in self._rebuild_log:
                self._apply_locked(new, latest)
            self._rebuild_log = None
            self._state = new
            self.version += 1
        REBUILDS.labels(why).inc()
        log.info("index %r rebuilt (%s): %d items in %.2fs", self.factory, why, len(items),
                 time.monotonic() - started)

    def _stack(self, items: list[str]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([self._vectors[i] for i in items]))

    # --- snapshots --------------------------------------------------------------------------

    def dump(self) -> IndexDump:
        """A consistent copy (taken under the read lock, so never half a batch)."""
        with self._lock.read():
            st = self._state
            items = list(st.ids)
            raw = None if st.exact else faiss.serialize_index(
                faiss.index_gpu_to_cpu(st.index) if st.on_gpu else st.index)
            return IndexDump(
                dim=self.dim, factory=self.factory, metric=self.metric, version=self.version,
                item_ids=items, faiss_ids=np.fromiter((st.ids[i] for i in items), np.int64, len(items)),
                vectors=self._stack(items), metas=[self._metas[i] for i in items],
                index_bytes=raw, next_id=st.next_id,
                dead_ids=np.fromiter(st.dead, np.int64, len(st.dead)) if raw is not None else np.zeros(0, np.int64),
            )

    def load(self, d: IndexDump) -> None:
        """Replace the contents with a dump; the FAISS index is reused when built the same way."""
        if d.dim != self.dim:
            raise ValueError(f"snapshot has dim {d.dim}, index dim {self.dim}")
        if (d.factory, d.metric) == (self.factory, self.metric) and d.index_bytes is not None:
            cpu = faiss.deserialize_index(d.index_bytes)
            fids = d.faiss_ids.tolist()
            st = self._placed(cpu, ids=dict(zip(d.item_ids, fids)), items=dict(zip(fids, d.item_ids)),
                              next_id=d.next_id, dead=set(d.dead_ids.tolist()))
            if st.dead and st.removable:
                try:
                    st.index.remove_ids(d.dead_ids)
                    st.dead = set()
                except RuntimeError:
                    st.removable = False
            st.refresh_selector()
        else:
            st = self._build_state(d.item_ids, d.vectors)
        vectors = {}
        for item_id, row in zip(d.item_ids, d.vectors):
            row = np.array(row, dtype=np.float32)
            row.flags.writeable = False
            vectors[item_id] = row
        with self._lock.write():
            self._state = st
            self._vectors = vectors
            self._metas = dict(zip(d.item_ids, d.metas))
            self.version = d.version
        REPLICA_SIZE.set(len(self))


# --- vector records (the streamrec.vectors topic) -----------------------------------------------

@dataclass(frozen=True)
class VectorRecord:
    """One item's state on the vectors topic (key = item_id); ``deleted`` records remove it."""

    item_id: str
    deleted: bool = False
    vector: np.ndarray | None = None
    meta: ItemMeta | None = None
    content_hash: str | None = None
    model_id: str | None = None
    source_ms: int | None = None   # when the catalog event was appended (freshness metric)


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
            dim=int(np.asarray(r.vector).shape[-1]), meta=asdict(r.meta),
            content_hash=r.content_hash, model_id=r.model_id,
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
        return VectorRecord(item_id=item_id, vector=vec, meta=ItemMeta(**body["meta"]),
                            content_hash=body.get("content_hash"), model_id=body.get("model_id"),
                            source_ms=body.get("source_ms"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad vector record: {e}") from None


def to_batch(records: Iterable[VectorRecord]) -> tuple[list[tuple[str, np.ndarray, ItemMeta]], list[str]]:
    """Records in topic order → one ``apply`` batch (the last record per item wins)."""
    last: dict[str, VectorRecord] = {}
    for r in records:
        last.pop(r.item_id, None)
        last[r.item_id] = r
    upserts = [(r.item_id, r.vector, r.meta) for r in last.values() if not r.deleted]
    deletes = [r.item_id for r in last.values() if r.deleted]
    return upserts, deletes


# --- snapshots on disk --------------------------------------------------------------------------
#
# <snapshot_dir>/index/<created_ms>-v<version>/
#   manifest.json   format, topic, dim, factory, metric, version, next_id, created_ms,
#                   offsets {partition: next offset to read}, model_id, sha256 of every file
#   items.jsonl     one line per live item: item_id, faiss_id, content_hash, meta
#   vectors.npy     float32 (n, dim), rows in items.jsonl order
#   dead.npy        int64 tombstoned FAISS ids still inside index.faiss
#   index.faiss     the CPU FAISS index (absent while an untrained factory searches exactly)
# A snapshot directory is written under a temporary name and renamed into place, so a reader
# sees a whole snapshot or none; checksums catch a file damaged afterwards.

SNAPSHOT_FORMAT = 1


class SnapshotError(Exception):
    """A snapshot that cannot be used; the replica logs it and rebuilds from the topic."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict
    dump: IndexDump
    hashes: dict[str, str]

    @property
    def offsets(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self.manifest["offsets"].items()}


def index_snapshot_dir(s: Settings) -> Path:
    return s.snapshot_dir / "index"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_snapshot(directory: Path, dump: IndexDump, *, topic: str, offsets: dict[int, int],
                   hashes: dict[str, str], model_id: str | None = None, keep: int = 2) -> Path:
    """Write atomically (temp dir + rename) and prune all but the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    created_ms = int(time.time() * 1000)
    final = directory / f"{created_ms:013d}-v{dump.version}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for item_id, fid, meta in zip(dump.item_ids, dump.faiss_ids.tolist(), dump.metas):
                f.write(json.dumps({"item_id": item_id, "faiss_id": fid, "content_hash": hashes.get(item_id),
                                    "meta": asdict(meta)}, separators=(",", ":")) + "\n")
        np.save(tmp / "vectors.npy", dump.vectors, allow_pickle=False)
        np.save(tmp / "dead.npy", dump.dead_ids, allow_pickle=False)
        files = ["items.jsonl", "vectors.npy", "dead.npy"]
        if dump.index_bytes is not None:
            dump.index_bytes.tofile(tmp / "index.faiss")
            files.append("index.faiss")
        manifest = {
            "format": SNAPSHOT_FORMAT, "topic": topic, "dim": dump.dim, "factory": dump.factory,
            "metric": dump.metric, "version": dump.version, "next_id": dump.next_id,
            "items": len(dump.item_ids), "created_ms": created_ms, "model_id": model_id,
            "offsets": {str(p): int(o) for p, o in sorted(offsets.items())},
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_snapshots(directory)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_snapshots(directory: Path) -> list[Path]:
    """Snapshot directories, newest first (temporary ones excluded)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name, reverse=True)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SnapshotError(f"snapshot {path}: unreadable manifest.json ({e})") from None
    if manifest.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot {path}: format {manifest.get('format')!r}, expected {SNAPSHOT_FORMAT}")
    return manifest


def read_snapshot(path: Path) -> Snapshot:
    """Load and verify one snapshot; any problem raises :class:`SnapshotError` naming the file."""
    manifest = read_manifest(path)
    for name, digest in manifest.get("sha256", {}).items():
        if not (path / name).is_file():
            raise SnapshotError(f"snapshot {path}: {name} is missing")
        if _sha256(path / name) != digest:
            raise SnapshotError(f"snapshot {path}: {name} does not match its checksum (damaged)")
    try:
        ids, fids, metas, hashes = [], [], [], {}
        with open(path / "items.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["item_id"])
                fids.append(int(row["faiss_id"]))
                metas.append(ItemMeta(**row["meta"]))
                if row.get("content_hash"):
                    hashes[row["item_id"]] = row["content_hash"]
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        dead = np.load(path / "dead.npy", allow_pickle=False).astype(np.int64)
        raw = np.fromfile(path / "index.faiss", dtype=np.uint8) if (path / "index.faiss").is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"snapshot {path}: {e}") from None
    if vectors.shape != (len(ids), manifest["dim"]):
        raise SnapshotError(f"snapshot {path}: vectors {vectors.shape} vs {len(ids)} items × dim {manifest['dim']}")
    dump = IndexDump(dim=manifest["dim"], factory=manifest["factory"], metric=manifest["metric"],
                     version=manifest["version"], item_ids=ids, faiss_ids=np.asarray(fids, dtype=np.int64),
                     vectors=vectors.astype(np.float32, copy=False), metas=metas, index_bytes=raw,
                     next_id=manifest["next_id"], dead_ids=dead)
    return Snapshot(path=path, manifest=manifest, dump=dump, hashes=hashes)


# --- replicas -------------------------------------------------------------------------------------

class IndexReplica:
    """Keeps ``index`` in step with the vectors topic: newest usable snapshot, then the tail.

    No consumer group: every replica reads every partition, so any number can run side by side.
    One poll becomes one ``apply`` batch. Offsets and content hashes move under the same lock as
    the batch, so :meth:`snapshot` always records exactly the offsets the index covers.
    """

    def __init__(self, s: Settings, dim: int, from_snapshot: bool = True):
        self.s = s
        self.index = LiveIndex(dim, s.index_factory, s.index_metric, s.index_use_gpu,
                               nprobe=s.index_nprobe, ef_search=s.index_ef_search,
                               compact_ratio=s.index_compact_ratio, search_threads=s.index_search_threads)
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
        return write_snapshot(index_snapshot_dir(self.s), dump, topic=self.s.topic_vectors,
                              offsets=offsets, hashes=hashes, model_id=model_id,
                              keep=self.s.index_snapshots_kept)

    def _load_snapshot(self) -> None:
        for path in list_snapshots(index_snapshot_dir(self.s)):
            try:
                snap = read_snapshot(path)
                if snap.manifest["topic"] != self.s.topic_vectors:
                    raise SnapshotError(f"snapshot {path} covers topic {snap.manifest['topic']}, "
                                        f"not {self.s.topic_vectors}")
                self.index.load(snap.dump)
            except (SnapshotError, ValueError, RuntimeError) as e:
                log.error("%s; trying an older snapshot, else rebuilding from the topic", e)
                continue
            with self._apply_lock:
                self._offsets = snap.offsets
                self.hashes = dict(snap.hashes)
            self.loaded_snapshot = path
            log.info("index replica loaded %s (%d items, offsets %s, %s)", path, len(self.index),
                     snap.offsets, self.index.device)
            return
        log.info("no usable index snapshot in %s: replaying %s from the start",
                 index_snapshot_dir(self.s), self.s.topic_vectors)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # keep serving the index we have; resume from the applied offsets
                log.exception("index replica lost %s; reconnecting in 2s", self.s.topic_vectors)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        consumer = make_consumer(self.s, None, fetch_max_wait_ms=50)
        try:
            tps = all_partitions(consumer, self.s.topic_vectors, timeout_s=30)
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
                    if not r.deleted and (r.vector.shape[0] != self.index.dim or not np.all(np.isfinite(r.vector))):
                        raise ValueError(f"vector dim {r.vector.shape[0]} (index dim {self.index.dim}) or non-finite")
                except ValueError as e:
                    REPLICA_BAD.inc()
                    log.error("skipping vector record %s[%d]@%d: %s", tp.topic, tp.partition, m.offset, e)
                    continue
                if r.model_id and r.model_id != self.expected_model and r.model_id not in self._foreign_models:
                    self._foreign_models.add(r.model_id)  # once per model: a migration is in progress
                    log.warning("vectors from %s while this replica encodes queries with %s; they "
                                "compare only once index_updater re-embeds with the same model",
                                r.model_id, self.expected_model)
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
