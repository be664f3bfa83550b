"""The index updater service: catalog topic → vectors topic, and index snapshots.

Guarantee: at-least-once. Catalog offsets are committed only after every vector record and
dead letter of the batch is acknowledged by the broker; a crash or a failed send replays the
batch, which is harmless because vector records are keyed by item and the last one wins.
This service owns dead-lettering of ``topic.catalog`` (the consumers service does not).

Snapshots come from the updater's own replica of the vectors topic, so each one records exactly
the vectors-topic offsets its index covers; serving replicas load it and replay only the tail.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kafka import ConsumerRebalanceListener, OffsetAndMetadata
from kafka.errors import KafkaError

from index_updater import metrics
from index_updater.backlog import Backlog
from index_updater.pipeline import CatalogPipeline, InFlight
from streamrec import bus
from streamrec.encoder import Encoder
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica

log = logging.getLogger(__name__)

CATCH_UP_TIMEOUT_S = 120.0
MIN_CHUNK = 16  # backlog records embedded between two polls at least (on a starved host: a few seconds)


class Snapshotter:
    """Writes a replica snapshot every ``period_s`` when the index changed, in its own thread so
    the catalog loop (and so freshness) never waits on disk."""

    def __init__(self, replica: IndexReplica, model_id: str, period_s: float):
        self.replica, self.model_id, self.period_s = replica, model_id, period_s
        self._written_version = replica.index.version  # nothing new yet: no snapshot
        self._written_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="index-snapshots", daemon=True)
        metrics.SNAPSHOT_AGE.set_function(lambda: time.time() - self._written_at)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and write a last snapshot of what was applied."""
        self._stop.set()
        self._thread.join()
        self.write()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.write()

    def write(self) -> None:
        version = self.replica.index.version
        if version == self._written_version:
            return
        started = time.monotonic()
        try:
            path = self.replica.snapshot(self.model_id)
        except OSError:
            log.exception("index snapshot failed; the next one is due in %.0fs", self.period_s)
            return
        self._written_version, self._written_at = version, time.time()
        metrics.SNAPSHOT_SECONDS.observe(time.monotonic() - started)
        log.info("index snapshot %s (%d items)", path, len(self.replica.index))


def run(s: Settings, stop: threading.Event, encoder: Encoder | None = None) -> None:
    """Until ``stop``; ``encoder`` lets tests share one loaded model. Metrics are exposed by the
    caller (``streamrec index`` or ``python -m index_updater``)."""
    bus.ensure_topics(s)
    encoder = encoder or Encoder.from_settings(s)
    replica = IndexReplica(s, encoder.dim)
    replica.start()
    if not replica.wait_caught_up(CATCH_UP_TIMEOUT_S):
        log.warning(
            "replica not caught up with %s after %.0fs; unchanged items may be re-embedded",
            s.topic.vectors,
            CATCH_UP_TIMEOUT_S,
        )
    producer = bus.make_producer(s)
    consumer = bus.make_consumer(s, s.index.updater_group, fetch_max_wait_ms=50)
    pipeline = CatalogPipeline(s, encoder, replica, producer)
    snapshots = Snapshotter(replica, encoder.model_id, s.index.snapshot_every_s)
    snapshots.start()
    log.info(
        "index updater: %s → %s with %s, index %r", s.topic.catalog, s.topic.vectors, encoder.model_id, s.index.factory
    )
    backlog = Backlog(s.index.live_max_batch, s.consumers.max_event_bytes, s.index.length_window, pipeline.token_counts)
    pace = ChunkPace(s.index.chunk_seconds, MIN_CHUNK, s.index.chunk_records)
    cores = os.cpu_count() or 1
    bulk_threads = BulkThreads(
        [s.index.bulk_threads] if s.index.bulk_threads else [max(s.cpu_threads, 1), cores], MIN_CHUNK
    )
    current_threads = 0
    consumer.subscribe([s.topic.catalog], listener=_Rebalance(pipeline, backlog))
    # One chunk is embedded (in this worker) while the previous one is acknowledged, committed and
    # more is polled here: the encoder does not idle during broker round trips.
    worker = ThreadPoolExecutor(1, thread_name_prefix="index-encoder")
    in_flight: tuple[InFlight, bool] | None = None  # sent, not acknowledged; from the live lane
    try:
        while not stop.is_set():
            _read_ahead(consumer, backlog, s, wait=in_flight is None)
            bulk = len(backlog) >= s.index.bulk_backlog
            threads = bulk_threads.pick() if bulk else s.cpu_threads
            if threads != current_threads and threads > 0:
                log.info("index updater: %d torch threads (backlog %d records)", threads, len(backlog))
                current_threads = threads
            metrics.BACKLOG.set(len(backlog))
            from_live_lane = bool(backlog.live)
            chunk = backlog.take(pace.records())
            embedding = None
            if chunk:
                job = pipeline.prepare(chunk)
                pipeline.last_embed = (0, 0.0)
                embedding = worker.submit(pipeline.embed, job, threads)
            if in_flight is not None:
                flight, flight_live = in_flight
                in_flight = None
                if not _confirm(consumer, pipeline, backlog, flight):
                    backlog.put_back(flight.job.msgs, flight_live)
                    if embedding is not None:  # planned against the failed sends: redone too
                        embedding.result()
                        backlog.put_back(chunk, from_live_lane)
                    time.sleep(1.0)
                    continue
            if embedding is None:
                continue
            try:
                in_flight = (pipeline.send(job, embedding.result()), from_live_lane)
            except KafkaError as e:
                log.error("publishing vectors failed (%s); retrying the batch", e)
                backlog.put_back(chunk, from_live_lane)
                time.sleep(1.0)
                continue
            if not from_live_lane:
                embedded, took = pipeline.last_embed  # the encoder alone: publish and commit are overhead
                pace.observe(embedded, took)
                if bulk:
                    bulk_threads.observe(threads, embedded, took)
            metrics.INDEX_ITEMS.set(len(replica.index))
        if in_flight is not None:
            _confirm(consumer, pipeline, backlog, in_flight[0])
    finally:
        worker.shutdown(wait=True)
        _final_commit(consumer, backlog)
        consumer.close()
        producer.close()
        replica.stop()
        snapshots.stop()


def _final_commit(consumer, backlog: Backlog) -> None:
    """On the way out, wait for a commit of everything handled (the others were asynchronous)."""
    offsets = backlog.committable(everything=True)
    if not offsets:
        return
    try:
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    except KafkaError as e:  # a rebalance or a broker gone: those records are redone, idempotently
        log.warning("final catalog commit failed (%s)", e)


class BulkThreads:
    """The torch thread count that embeds a bulk backlog fastest here and now. Every core wins on a
    quiet host; on one whose cores are busy with other work, a parallel region waiting for threads
    that are not scheduled is slower than one thread (2 threads at 0.41x of 1 on a 2-core box at
    load 16). So each candidate is timed on a chunk, the fastest kept, and all re-timed every
    ``reprobe_s`` (the host's load changes)."""

    def __init__(self, candidates: list[int], smallest: int, reprobe_s: float = 60.0):
        self.candidates = sorted(set(candidates))
        self.smallest, self.reprobe_s = smallest, reprobe_s
        self.rates: dict[int, float] = {}
        self.probed_at = time.monotonic()

    def pick(self) -> int:
        if time.monotonic() - self.probed_at > self.reprobe_s:
            self.rates.clear()
            self.probed_at = time.monotonic()
        for c in self.candidates:
            if c not in self.rates:
                return c
        return max(self.rates, key=lambda c: self.rates[c])

    def observe(self, threads: int, n: int, seconds: float) -> None:
        if n < self.smallest or threads not in self.candidates:
            return
        rate = n / max(seconds, 1e-6)
        old = self.rates.get(threads)
        self.rates[threads] = rate if old is None else 0.7 * old + 0.3 * rate


def _read_ahead(consumer, backlog: Backlog, s: Settings, wait: bool = True) -> None:
    """Read what the broker has (up to ``index.read_ahead`` records waiting); wait up to 200 ms only
    when there is nothing to do (and ``wait``: nothing in flight either)."""
    for _ in range(20):
        room = s.index.read_ahead - len(backlog)
        if room <= 0:
            consumer.pause(*consumer.assignment())
            consumer.poll(timeout_ms=0)  # keeps the group membership alive; returns nothing while paused
            return
        if consumer.paused():
            consumer.resume(*consumer.paused())
        polled = consumer.poll(timeout_ms=200 if wait and not len(backlog) else 0, max_records=min(room, 5000))
        if not polled:
            return
        backlog.add(polled)


class ChunkPace:
    """How many backlog records to embed before polling again: about ``seconds`` of work at the
    recently measured rate, so a live change waits at most that long behind bulk work."""

    def __init__(self, seconds: float, smallest: int, largest: int):
        self.seconds, self.smallest, self.largest = seconds, min(smallest, largest), largest
        self.rate: float | None = None  # records/s, moving average

    def records(self) -> int:
        if self.rate is None:
            return self.smallest
        return int(min(self.largest, max(self.smallest, self.rate * self.seconds)))

    def observe(self, n: int, seconds: float) -> None:
        if n < self.smallest:  # a live chunk says little about bulk throughput
            return
        rate = n / max(seconds, 1e-6)
        self.rate = rate if self.rate is None else 0.7 * self.rate + 0.3 * rate


def _confirm(consumer, pipeline: CatalogPipeline, backlog: Backlog, flight: InFlight) -> bool:
    """Wait for the chunk's acknowledgements, then mark it done and commit what is safe."""
    try:
        result = pipeline.confirm(flight)
    except KafkaError as e:
        # Nothing is committed; the caller puts the chunk back and it is tried again after a pause.
        log.error("publishing vectors failed (%s); retrying the batch", e)
        return False
    backlog.done(flight.job.msgs)
    offsets = backlog.committable()
    if offsets:
        # Asynchronous: the vectors are acknowledged already; a commit lost in a rebalance or a crash
        # only means the new owner redoes those records, idempotently, and a later commit covers it.
        consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}, callback=_committed)
        backlog.committed(offsets)
    log.debug("batch: %s", result)
    return True


def _committed(offsets, result) -> None:
    if isinstance(result, Exception):
        log.warning("catalog commit failed (%s); a later commit covers these records", result)


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python rebalance listener: drop our publish memory when partitions move."""

    def __init__(self, pipeline: CatalogPipeline, backlog: Backlog):
        self.pipeline, self.backlog = pipeline, backlog

    def on_partitions_revoked(self, revoked) -> None:
        self.backlog.drop(revoked)
        self.pipeline.forget()

    def on_partitions_assigned(self, assigned) -> None:
        self.pipeline.forget()
