"""``LiveIndex``: FAISS with stable string ids, atomic batches, tombstones and background rebuilds.

Every upsert gets a fresh int64 FAISS id. A replaced or deleted item's old id is removed where the
index type allows it (Flat, IVF, PQ/SQ on CPU); otherwise (HNSW, any GPU index) it becomes a
*tombstone*: on CPU a FAISS ``IDSelector`` skips tombstones inside the search, on GPU the search
over-fetches by the tombstone count, and in every case hits are mapped back through the live id
table, so a deleted or replaced vector is never returned. A background rebuild compacts the index
once tombstones pile up, and trains IVF/PQ/SQ factories once enough vectors exist (exact search
until then). A readers–writer lock makes each ``apply`` batch atomic to searches; writers hold it
only for one batch's add/remove, never for a rebuild (batches applied meanwhile are replayed onto
the new index before the swap).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from streamrec.vector_index.metrics import REBUILDS, REPLICA_SIZE
from streamrec.vector_index.rwlock import RWLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemMeta:
    """What serving shows, filters and facets on next to a hit, carried with the vector so replicas
    need no catalog. ``created_ms``: the item's first upsert (the "newest" sort)."""

    title: str
    category: str | None = None
    price: float | None = None
    description: str | None = None
    brand: str | None = None
    in_stock: bool | None = None
    stock: int | None = None
    attributes: dict[str, str | float | list[str]] = field(default_factory=dict)
    created_ms: int | None = None

    @property
    def available(self) -> bool:
        """In stock unless the shop said otherwise (``in_stock`` false, or ``stock`` 0)."""
        if self.in_stock is not None:
            return self.in_stock
        return self.stock is None or self.stock > 0


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
        raise RuntimeError("STREAMREC_INDEX_USE_GPU=always but faiss sees no GPU (is faiss-gpu installed?)")
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
    ids: dict[str, int] = field(default_factory=dict)  # live item → FAISS id
    items: dict[int, str] = field(default_factory=dict)  # FAISS id → live item
    next_id: int = 0
    exact: bool = False  # an untrained factory, standing in with exact search
    removable: bool = True  # False: FAISS cannot remove, tombstones instead
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
    faiss_ids: np.ndarray  # int64 (n,)
    vectors: np.ndarray  # float32 (n, dim)
    metas: list[ItemMeta]
    index_bytes: np.ndarray | None  # faiss.serialize_index of the CPU index, None when exact stand-in
    next_id: int
    dead_ids: np.ndarray  # int64 tombstones inside index_bytes


ChangeListener = Callable[[dict[str, ItemMeta | None], bool], None]


class LiveIndex:
    """Thread-safe FAISS index over string ids; a search never sees half a batch.

    Scores are "higher is better": the inner product for ``metric='ip'`` (cosine for unit
    vectors), the negated squared distance for ``'l2'``.
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        metric: str = "ip",
        use_gpu: str = "auto",
        *,
        nprobe: int = 16,
        ef_search: int = 64,
        compact_ratio: float = 0.2,
        compact_min: int = 1000,
        search_threads: int = 1,
    ):
        self.dim, self.factory, self.metric = int(dim), factory, metric
        self._metric = _metric(metric)
        self.nprobe, self.ef_search = nprobe, ef_search
        self.compact_ratio, self.compact_min = compact_ratio, compact_min
        self.search_threads = search_threads
        self.use_gpu = want_gpu(use_gpu)
        self._gpu_res: Any = None  # a faiss.StandardGpuResources once the GPU is used
        self._probe = self._new_cpu_index()  # fails early on a bad factory string
        self._lock = RWLock()
        self._vectors: dict[str, np.ndarray] = {}
        self._metas: dict[str, ItemMeta] = {}
        self._state = self._empty_state()
        self.version = 0
        # batches applied mid-rebuild
        self._rebuild_log: list[dict[str, tuple[np.ndarray, ItemMeta] | None]] | None = None
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_mutex = threading.Lock()
        self._listeners: list[ChangeListener] = []

    # --- construction ----------------------------------------------------------------------

    def _new_cpu_index(self) -> faiss.Index:
        try:
            index = faiss.index_factory(self.dim, self.factory, self._metric)
        except RuntimeError as e:
            raise ValueError(
                f"bad FAISS factory string {self.factory!r} for dim {self.dim}: {str(e).splitlines()[-1]}"
            ) from None
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
        return self._placed(
            cpu,
            ids={it: i for it, i in zip(items, ids.tolist(), strict=True)},
            items=dict(zip(ids.tolist(), items, strict=True)),
            next_id=len(items),
            exact=exact,
        )

    # --- reads ------------------------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener(changes, reset)`` after every batch, in order, under the write lock (so it
        must only queue the work): ``changes`` maps item id → new metadata, or None when deleted;
        ``reset`` means the whole contents were replaced. It is called once now with every item."""
        with self._lock.write():
            self._listeners.append(listener)
            listener(dict(self._metas), True)

    def _notify(self, changes: dict[str, ItemMeta | None], reset: bool) -> None:
        for listener in self._listeners:
            try:
                listener(changes, reset)
            except Exception:  # a listener's failure never fails the batch
                log.exception("index change listener failed")

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
                    # faiss's stubs omit SearchParameters' keyword fields
                    params = faiss.SearchParameters(sel=st.selector[1])  # type: ignore[call-arg]
                    dist, ids = self._faiss_search(st.index, q, fetch, params)
                except RuntimeError:
                    log.info("factory %r cannot filter by selector: over-fetching past tombstones", self.factory)
                    st.selector_ok, st.selector = False, None
            if ids is None:  # over-fetch past the tombstones; the id filter below drops them
                fetch = min(int(st.index.ntotal), k + st.tombstones + excluded)
                if fetch == 0:
                    return [[] for _ in range(len(q))]
                dist, ids = self._faiss_search(st.index, q, fetch)
            assert dist is not None  # set with ids
            items = st.items
        sign = -1.0 if self._metric == faiss.METRIC_L2 else 1.0
        out = []
        for drow, irow in zip(dist, ids, strict=True):
            hits: list[tuple[str, float]] = []
            for d, i in zip(drow.tolist(), irow.tolist(), strict=True):
                item = items.get(i)
                if item is None or item in exclude:
                    continue
                hits.append((item, sign * d))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def search_among(self, query: np.ndarray, k: int, item_ids: Collection[str]) -> list[tuple[str, float]]:
        """Top-``k`` of ``item_ids`` (live ones) for one query, exhaustively: exact whatever the
        factory, for a filter that admits few items (the index's own search would have to fetch
        past everything it does not admit)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        with self._lock.read():
            ids = [i for i in item_ids if i in self._vectors]
            if not ids or k <= 0:
                return []
            vectors = np.stack([self._vectors[i] for i in ids])
        if self._metric == faiss.METRIC_L2:
            scores = -((vectors - q) ** 2).sum(axis=1)
        else:
            scores = vectors @ q
        top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(ids[j], float(scores[j])) for j in top.tolist()]

    def _faiss_search(
        self, index: faiss.Index, q: np.ndarray, k: int, params: faiss.SearchParameters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
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
            self._notify({item_id: entry[1] if entry else None for item_id, entry in latest.items()}, reset=False)
            st = self._state
            needs = st.tombstones > max(self.compact_min, self.compact_ratio * len(st.ids)) or (
                st.exact and len(st.ids) >= min_train_points(self._probe)
            )
        REPLICA_SIZE.set(len(self))
        if needs:
            self.rebuild(wait=False, why="train" if st.exact else "compact")

    def _apply_locked(self, st: _State, latest: dict[str, tuple[np.ndarray, ItemMeta] | None]) -> None:
        stale = [st.ids.pop(item_id) for item_id in latest if item_id in st.ids]
        for fid in stale:
            del st.items[fid]
        if stale and st.removable:
            try:
                st.index.remove_ids(np.asarray(stale, dtype=np.int64))  # type: ignore[arg-type]  # faiss wraps arrays
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
            for (item_id, _), fid in zip(new, fids.tolist(), strict=True):
                st.ids[item_id] = fid
                st.items[fid] = item_id

    def rebuild(self, wait: bool = True, why: str = "manual") -> None:
        """Rebuild from the live vectors off the lock (compaction / training), then swap atomically.

        Batches applied meanwhile are logged and replayed onto the new index before the swap.
        """
        with self._rebuild_mutex:
            running = self._rebuild_thread is not None and self._rebuild_thread.is_alive()
            if not running:
                self._rebuild_thread = threading.Thread(
                    target=self._rebuild, args=(why,), name="index-rebuild", daemon=True
                )
                self._rebuild_thread.start()
            thread = self._rebuild_thread
        assert thread is not None  # started just above if none was running
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
            assert self._rebuild_log is not None  # only this thread clears it
            for latest in self._rebuild_log:
                self._apply_locked(new, latest)
            self._rebuild_log = None
            self._state = new
            self.version += 1
        REBUILDS.labels(why).inc()
        log.info("index %r rebuilt (%s): %d items in %.2fs", self.factory, why, len(items), time.monotonic() - started)

    def _stack(self, items: list[str]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([self._vectors[i] for i in items]))

    # --- snapshots --------------------------------------------------------------------------

    def dump(self) -> IndexDump:
        """A consistent copy (taken under the read lock, so never half a batch).

        Callers that also apply batches (``IndexReplica``) dump while holding their apply lock, so
        no writer queues behind the dump and searches keep running meanwhile.
        """
        with self._lock.read():
            st = self._state
            items = list(st.ids)
            raw = (
                None if st.exact else faiss.serialize_index(faiss.index_gpu_to_cpu(st.index) if st.on_gpu else st.index)
            )
            return IndexDump(
                dim=self.dim,
                factory=self.factory,
                metric=self.metric,
                version=self.version,
                item_ids=items,
                faiss_ids=np.fromiter((st.ids[i] for i in items), np.int64, len(items)),
                vectors=self._stack(items),
                metas=[self._metas[i] for i in items],
                index_bytes=raw,
                next_id=st.next_id,
                dead_ids=np.fromiter(st.dead, np.int64, len(st.dead)) if raw is not None else np.zeros(0, np.int64),
            )

    def load(self, d: IndexDump) -> None:
        """Replace the contents with a dump; the FAISS index is reused when built the same way."""
        if d.dim != self.dim:
            raise ValueError(f"snapshot has dim {d.dim}, index dim {self.dim}")
        if (d.factory, d.metric) == (self.factory, self.metric) and d.index_bytes is not None:
            cpu = faiss.deserialize_index(d.index_bytes)
            fids = d.faiss_ids.tolist()
            st = self._placed(
                cpu,
                ids=dict(zip(d.item_ids, fids, strict=True)),
                items=dict(zip(fids, d.item_ids, strict=True)),
                next_id=d.next_id,
                dead=set(d.dead_ids.tolist()),
            )
            if st.dead and st.removable:
                try:
                    st.index.remove_ids(d.dead_ids)  # type: ignore[arg-type]  # faiss wraps id arrays
                    st.dead = set()
                except RuntimeError:
                    st.removable = False
            st.refresh_selector()
        else:
            st = self._build_state(d.item_ids, d.vectors)
        vectors = {}
        for item_id, row in zip(d.item_ids, d.vectors, strict=True):
            row = np.array(row, dtype=np.float32)
            row.flags.writeable = False
            vectors[item_id] = row
        with self._lock.write():
            self._state = st
            self._vectors = vectors
            self._metas = dict(zip(d.item_ids, d.metas, strict=True))
            self.version = d.version
            self._notify(dict(self._metas), reset=True)
        REPLICA_SIZE.set(len(self))
