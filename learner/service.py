"""The learner service: events topic → joined examples → online ranking head → model snapshots.

Guarantee: the checkpoint (model, optimiser, pending joins, detectors, metrics) stores the event
offsets it was built from and is replaced atomically; a restart — even after ``kill -9`` — loads
it and seeks to those offsets, so no event is skipped and none is learned from twice relative to
the restored state. The checkpoint also counts the records taken into that state per partition
(``events_in_state``), so the claim is checkable: after a drain the count equals the records in
the topic, however often the process was killed (``bench/chaos.py``, the consumers fault test).
Kafka's committed offsets (group ``streamrec-learner``) are advanced only after a checkpoint, for
lag monitoring and as the fallback position when no checkpoint exists.

The loop is thin on purpose: joining lives in :mod:`learner.pipeline`, learning, drift and
champion/challenger in :mod:`learner.online`, rollback in :mod:`learner.guard`.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from kafka import ConsumerRebalanceListener, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from learner import metrics as M
from learner.checkpoint import Checkpointer
from learner.drift import ks_critical
from learner.estimator import OnlineRanker
from learner.examples import Batch, Example
from learner.guard import RollbackGuard
from learner.joiner import LabelJoiner, PendingImpression
from learner.negatives import NegativeSampler
from learner.next_item import NextItemJoiner
from learner.online import OnlineLearner
from learner.pipeline import ExampleBuilder, QuarantineVerdicts
from learner.position_bias import PositionBias
from learner.query_tuning import QueryTuner
from learner.search_card import SearchCard
from streamrec import bus
from streamrec.features import Keys
from streamrec.model_store import ModelStore
from streamrec.ops import add_learner_stats
from streamrec.query_versions import QueryVersions
from streamrec.ranking import FeatureAssembler, load_served
from streamrec.schemas import Event, Rejected, decode_event
from streamrec.sessions.learned import FusionModel, load_pool
from streamrec.settings import Settings
from streamrec.store import check_cluster, connect, keyspaces, retry_until_done

log = logging.getLogger(__name__)
LEARNER_REASONS = ("initial", "periodic", "promotion", "shutdown")  # what this service publishes with
STATS_EVERY_S = 1.0  # how often the cockpit's learner stats (streamrec/ops.py) are written to Redis


class _SeekToCheckpoint(ConsumerRebalanceListener):
    """On assignment, continue from the checkpoint's offsets (else the group's committed ones)."""

    def __init__(self, consumer, offsets: dict[int, int]):
        self.consumer = consumer
        self.offsets = offsets

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        for tp in assigned:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])


@dataclass
class _Loop:
    """Mutable state of one run of the service."""

    s: Settings
    core: OnlineLearner
    builder: ExampleBuilder
    store: ModelStore
    guard: RollbackGuard
    ckpt: Checkpointer
    producer: KafkaProducer
    offsets: dict[int, int]
    version: int
    fusion: FusionModel  # /recommend's session-family weights, published with each version
    next_items: NextItemJoiner
    # records taken into the state per partition (learned from, or skipped as invalid), saved with
    # ``offsets`` in one checkpoint: after a drain, its sum equals the records in the topic exactly
    # when no record was skipped or applied twice across restarts (bench/chaos.py checks it)
    events_in_state: dict[int, int] = field(default_factory=dict)
    # what joined search impressions say: the shop's position bias (from serving's random swaps) and
    # whether the head orders unseen queries' clicks better than the fused order (serving's gate)
    position_bias: PositionBias = field(default_factory=PositionBias)
    search_card: SearchCard | None = None
    query_tuner: QueryTuner | None = None  # the encoder's query side, trained in the background
    ready: list[Example] = field(default_factory=list)
    ready_since: float = 0.0
    read_times: list[float] = field(default_factory=list)  # wall times of labels learned, unpublished
    updates_since_publish: int = 0
    fusion_since_publish: int = 0
    last_publish: float = field(default_factory=time.monotonic)
    last_ckpt: float = field(default_factory=time.monotonic)
    dirty: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # events read since the last stats write
    last_stats: float = 0.0

    # --- learning -------------------------------------------------------------------------------

    def add(self, examples: list[Example]) -> None:
        if examples and not self.ready:
            self.ready_since = time.monotonic()
        self.ready.extend(examples)

    def train_ready(self, force: bool = False) -> None:
        bs = self.s.learner.batch_size
        due = (
            force
            or len(self.ready) >= bs
            or (self.ready and time.monotonic() - self.ready_since >= self.s.learner.max_batch_delay_s)
        )
        if not due:
            return
        first_ready = self.ready_since  # when the oldest of these examples became ready
        while self.ready:
            chunk, self.ready = self.ready[:bs], self.ready[bs:]
            self._step(chunk)
            self.read_times.append(first_ready)
        self.ready_since = time.monotonic()

    def _step(self, chunk: list[Example]) -> None:
        batch = Batch.of(chunk)
        rollback = self.guard.observe(batch)
        if rollback is not None:
            self._rollback(*rollback, by="guard")
        report = self.core.step(chunk)
        self.dirty = True
        self.updates_since_publish += 1
        M.UPDATES.inc()
        for e in chunk:
            M.EXAMPLES.labels("positive" if e.click == 1.0 else "negative" if e.click == 0.0 else "purchase_only").inc()
        for d in report.detections:
            M.DRIFT.labels(d.detector, d.what).inc()
            body = d.to_json() | {"model_version": self.version, "challenger_started": report.challenger_started}
            self.producer.send(self.s.topic.drift, key=d.detector, value=json.dumps(body).encode())
            log.warning("drift: %s on %s at example %d: %s", d.detector, d.what, d.at_example, d.evidence)
        if report.challenger_started:
            log.warning("challenger started from the drift point")
        if report.promoted:
            M.PROMOTIONS.inc()
            log.warning("challenger promoted to champion")
            self.publish("promotion")
        M.export(self.core.metrics())

    def learn_fusion(self, ev: Event) -> None:
        """The event completes at most one next-item example (``learner/next_item.py``): one step."""
        example = self.next_items.feed(ev)
        if example is None:
            return
        self.fusion.learn(example.F, example.target)
        self.fusion_since_publish += 1
        self.dirty = True

    def export_fusion(self) -> None:
        """The learned fusion's joins and scorecard as gauges (once per poll, not per event)."""
        for outcome, n in self.next_items.counts.items():
            M.FUSION_JOINS.labels(outcome).set(n)
        for mode, (rr, hit) in self.fusion.card.items():
            M.FUSION_RR.labels(mode).set(rr)
            M.FUSION_HIT.labels(mode).set(hit)

    def _rollback(self, version: int, model: OnlineRanker, by: str) -> None:
        log.warning("rolling back to version %d (%s): %s", version, by, self.guard.verdict())
        self.core.replace_champion(model)
        self.store.rollback(version)
        self.version = version
        self.updates_since_publish = 0
        self.last_publish = time.monotonic()
        M.ROLLBACKS.labels(by).inc()
        M.MODEL_VERSION.set(version)
        self.dirty = True

    # --- the cockpit's stats -----------------------------------------------------------------

    def count(self, ev) -> None:
        key = f"events:{ev.type}"
        self.counts[key] = self.counts.get(key, 0) + 1
        if ev.type == "impression" and ev.item_ids:
            self.counts["items_shown"] = self.counts.get("items_shown", 0) + len(ev.item_ids)
            M.ITEMS_SHOWN.inc(len(ev.item_ids))

    def write_stats(self, r, force: bool = False) -> None:
        """Event counts and per-feature drift distances for the cockpit (streamrec/ops.py), ~1/s."""
        if not force and time.monotonic() - self.last_stats < STATS_EVERY_S:
            return
        self.last_stats = time.monotonic()
        distances = self.core.monitor.feature_distances()
        for name, d in distances.items():
            if d is not None:
                M.FEATURE_DRIFT.labels(name).set(d)
        try:
            window = self.s.drift.feature_window
            add_learner_stats(r, self.s.redis.prefix, self.counts, distances, ks_critical(window, window))
            self.counts = {}
            if self.position_bias.swapped_pages():  # the consumers' click memory reads it; until then memory_eta
                for prefix in keyspaces(self.s):  # each keyspace's writer script reads its own copy
                    r.set(Keys(prefix).examination, repr(self.position_bias.eta()))
        except Exception as e:  # the stats are for the dashboard only; keep the counts for the next try
            log.warning("cockpit stats not written: %r", e)

    # --- publishing and checkpoints ---------------------------------------------------------

    def publish(self, reason: str) -> int:
        meta: dict[str, Any] = {
            "reason": reason,
            "parent": self.version,
            "updates": self.core.champion.updates,
            "examples": self.core.examples,
            "metrics": self.core.metrics(),
            "session_fusion": self.fusion.state(),
            "position_bias": self.position_bias.summary(),
        }
        if self.search_card is not None:
            meta["search_card"] = card = self.search_card.summary()
            M.SEARCH_HEAD_EARNED.set(1 if card["earned"] else 0)
            M.SEARCH_CARD_GAP.set(card.get("gap", 0.0))
        if self.query_tuner is not None:  # the fine-tuned query side: clicks gathered, the last verdict
            meta["query_tuning"] = self.query_tuner.summary()
        M.POSITION_BIAS_ETA.set(meta["position_bias"]["eta"])
        M.CLICKLESS_SEARCHES.set(self.builder.joiner.clickless_searches)
        v = self.store.publish(self.core.champion.head, meta)
        now = time.monotonic()
        for t in self.read_times:
            M.LABEL_TO_PUBLISH.observe(now - t)
        self.read_times.clear()
        self.guard.on_publish(v, self.core.champion)
        self.store.prune(self.s.learner.keep_versions, protect={self.guard.good[0]} if self.guard.good else set())
        self.version = v
        self.updates_since_publish = 0
        self.fusion_since_publish = 0
        self.last_publish = now
        self.dirty = True
        M.PUBLISHES.labels(reason).inc()
        M.MODEL_VERSION.set(v)
        return v

    def maybe_publish(self) -> None:
        if self.updates_since_publish == 0 and self.fusion_since_publish == 0:
            return
        if (
            self.updates_since_publish >= self.s.learner.publish_every_updates
            or time.monotonic() - self.last_publish >= self.s.learner.publish_every_s
        ):
            self.publish("periodic")

    def adopt_operator_rollback(self) -> None:
        """Someone ran ``streamrec model rollback``: continue learning from that version."""
        current = self.store.latest_version()
        if current and current != self.version:
            if current > self.version and self.store.meta(current).get("reason") in LEARNER_REASONS:
                # our own publish that the checkpoint missed (killed between publish and checkpoint):
                # the checkpointed core re-learns the events after its offsets; keep it, not the copy
                self.version = current
                return
            v, head, _meta = self.store.load(current)
            model = OnlineRanker(head, lr=self.s.learner.lr, seed=None)
            self.core.replace_champion(model)
            self.guard.reset(v, model)
            self.version = v
            self.updates_since_publish = 0
            M.ROLLBACKS.labels("operator").inc()
            M.MODEL_VERSION.set(v)
            self.dirty = True
            log.warning("adopted version %d set by an operator", v)

    def checkpoint(self, consumer, force: bool = False) -> None:
        if not self.dirty and not force:
            return
        if not force and time.monotonic() - self.last_ckpt < self.s.learner.checkpoint_every_s:
            return
        t0 = time.perf_counter()
        self.ckpt.save(
            {
                "core": self.core.state(),
                "joiner": self.builder.joiner.state(),
                "fusion": self.fusion.state(),
                "next_items": self.next_items.state(),
                "offsets": dict(self.offsets),
                "events_in_state": dict(self.events_in_state),
                "version": self.version,
                "guard_good": self.guard.good[0] if self.guard.good else None,
                "position_bias": self.position_bias.state(),
                "search_card": self.search_card.state() if self.search_card is not None else None,
                "query_tuner": self.query_tuner.state() if self.query_tuner is not None else None,
            }
        )
        M.CHECKPOINT_SECONDS.observe(time.perf_counter() - t0)
        self.last_ckpt = time.monotonic()
        self.dirty = False
        if self.offsets:
            try:
                consumer.commit(
                    {
                        TopicPartition(self.s.topic.events, p): OffsetAndMetadata(o, "", -1)
                        for p, o in self.offsets.items()
                    }
                )
            except Exception as e:  # the checkpoint is the source of truth; a failed commit only delays lag
                log.warning("offset commit failed (checkpoint kept): %r", e)


def _vector_dim(s: Settings) -> int:
    """The item vector size: configured, else the encoder's, read from its config (no model load)."""
    if s.learner.vector_dim:
        return s.learner.vector_dim
    from streamrec.encoder import bundled_model_dir

    config = (s.encoder.model_dir or bundled_model_dir()) / "config.json"
    try:
        return int(json.loads(config.read_text())["hidden_size"])
    except (OSError, KeyError, ValueError) as e:
        raise RuntimeError(
            f"cannot read the encoder's vector size from {config} ({e}); set STREAMREC_LEARNER_VECTOR_DIM"
        ) from None


def _vectors(s: Settings):
    """Item vectors and metadata from an IndexReplica following the vectors topic (or none)."""
    if not s.learner.follow_vectors:
        return None, (lambda _i: None), None
    from streamrec.vector_index import IndexReplica

    replica = IndexReplica(s, _vector_dim(s), from_snapshot=True)
    replica.start()
    if not replica.wait_caught_up(60):  # featurising before the vectors load would train on holes
        log.warning("item vectors not caught up after 60 s; starting anyway (rows without vectors degrade)")
    return replica, replica.index.vector, replica.index.meta


def _query_tuner(s: Settings, replica, position_bias: PositionBias) -> QueryTuner:
    from streamrec.encoder import bundled_model_dir

    return QueryTuner(
        s.query_tuning,
        QueryVersions(s.query_encoders_dir),
        s.encoder.model_dir or bundled_model_dir(),
        replica.index.vector,
        position_bias.eta,
    )


def _decoded(value: bytes | None, max_bytes: int) -> Event | None:
    """The event, or None for a record the consumers dead-letter (the learner only skips it)."""
    try:
        return decode_event(value if value is not None else b"", max_bytes)
    except Rejected:
        return None


def _redis_error(e: BaseException) -> None:
    M.REDIS_ERRORS.inc()


def run(settings: Settings, stop: threading.Event) -> None:
    """Consume, learn, publish until ``stop`` is set; then train what is ready, publish, checkpoint."""
    s = settings
    torch.set_num_threads(1)  # micro-batches of ~64 × 31 floats: more threads only add contention
    bus.ensure_topics(s)
    from streamrec.features import open_features

    store = ModelStore.from_settings(s)
    r = connect(s)
    check_cluster(r, s)
    features = open_features(s)
    replica, vector_of, meta_of = _vectors(s)
    assembler = FeatureAssembler(features, vector_of, meta_of)
    joiner = LabelJoiner(s.learner.label_window_s, skip_clickless_searches=s.learner.skip_clickless_searches)
    sampler = NegativeSampler(s.learner.negatives_per_positive) if s.learner.negative_sampling != "off" else None
    verdicts = QuarantineVerdicts(features.quarantined_many)
    builder = ExampleBuilder(
        joiner, assembler, lambda rid: load_served(r, s.redis.prefix, rid), sampler, quarantined=verdicts
    )
    ckpt = Checkpointer(s.state_dir / "learner")

    next_items = NextItemJoiner(lambda rid: load_pool(r, s.redis.prefix, rid), s.learner.label_window_s)
    fusion = FusionModel.from_settings(s)
    state = ckpt.load()
    if state is not None:
        core = OnlineLearner.from_state(state["core"], s.learner, s.drift)
        joiner.load_state(state["joiner"])
        if "fusion" in state:  # a checkpoint from before the learned fusion starts it afresh
            fusion = FusionModel.from_state(state["fusion"]) or fusion
            next_items.load_state(state["next_items"])
        offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        events_in_state = {int(p): int(n) for p, n in state.get("events_in_state", {}).items()}
        version = int(state["version"])
        log.info("resumed from checkpoint: version %d, %d examples, offsets %s", version, core.examples, offsets)
    elif store.latest_version() > 0:  # models but no checkpoint: warm-start from what is served
        version, head, meta = store.load()
        core = OnlineLearner(OnlineRanker(head, lr=s.learner.lr, seed=None), s.learner, s.drift)
        fusion = FusionModel.from_state(meta.get("session_fusion", {})) or fusion
        offsets, events_in_state = {}, {}
        log.info("no checkpoint; warm-starting from published version %d", version)
    else:
        core = OnlineLearner(OnlineRanker(lr=s.learner.lr, seed=0), s.learner, s.drift)
        offsets, events_in_state = {}, {}
        version = 0

    producer = bus.make_producer(s)
    consumer = bus.make_consumer(s, s.learner.group)
    consumer.subscribe([s.topic.events], listener=_SeekToCheckpoint(consumer, offsets))
    guard = RollbackGuard(s.learner.rollback_threshold, s.learner.rollback_min_examples)
    loop = _Loop(s, core, builder, store, guard, ckpt, producer, offsets, version, fusion, next_items, events_in_state)
    loop.search_card = SearchCard(s.search.head_weight)
    if state is not None and state.get("search_card") is not None:
        loop.position_bias.load_state(state["position_bias"])
        loop.search_card.load_state(state["search_card"])
    card = loop.search_card
    joiner.on_first_click = lambda p, k: card.observe_first_click(
        p, k, loop.core.champion.head, loop.position_bias.eta()
    )
    joiner.on_close = loop.position_bias.observe
    if s.query_tuning.enabled and replica is not None:
        loop.query_tuner = tuner = _query_tuner(s, replica, loop.position_bias)
        if state is not None and state.get("query_tuner") is not None:
            tuner.load_state(state["query_tuner"])
        bias = loop.position_bias

        def closed(p: PendingImpression) -> None:
            bias.observe(p)
            tuner.observe(p)

        joiner.on_close = closed
    if version == 0:
        loop.version = loop.publish("initial")  # serving can become ready before any label
        log.info("published initial version %d", loop.version)
    guard.reset(loop.version, core.champion)
    M.MODEL_VERSION.set(loop.version)
    loop.checkpoint(consumer, force=True)
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=100, max_records=s.kafka.consumer_max_poll_records)
            for tp, msgs in polled.items():
                events = [_decoded(m.value, s.consumers.max_event_bytes) for m in msgs]
                asked = [e.event_id for e in events if e is not None and e.type != "impression"]
                retry_until_done(functools.partial(verdicts.prefetch, asked), stop, on_error=_redis_error)
                for m, ev in zip(msgs, events, strict=True):
                    if ev is None:
                        M.EVENTS.labels("rejected").inc()  # consumers/ dead-letters it; we only skip
                    else:
                        M.EVENTS.labels(ev.type).inc()
                        # Redis down: the event waits (feed reads before it changes anything), and
                        # its offset only advances once it is in the learner's state.
                        loop.add(retry_until_done(functools.partial(builder.feed, ev), stop, on_error=_redis_error))
                        retry_until_done(functools.partial(loop.learn_fusion, ev), stop, on_error=_redis_error)
                        loop.count(ev)
                    loop.offsets[tp.partition] = m.offset + 1
                    loop.events_in_state[tp.partition] = loop.events_in_state.get(tp.partition, 0) + 1
                    loop.dirty = True
            loop.add(builder.expire())
            M.PENDING.set(len(joiner))
            M.UNJOINABLE.set(joiner.unjoinable)
            M.FEATURE_ROWS.labels("served").set(builder.rows_served)
            M.FEATURE_ROWS.labels("recomputed").set(builder.rows_recomputed)
            loop.export_fusion()
            loop.train_ready()
            loop.adopt_operator_rollback()
            loop.maybe_publish()
            if loop.query_tuner is not None:
                loop.query_tuner.maybe_start()
            loop.checkpoint(consumer)
            loop.write_stats(r)
        loop.train_ready(force=True)
        if loop.updates_since_publish or loop.fusion_since_publish:
            loop.publish("shutdown")
        loop.checkpoint(consumer, force=True)
        loop.write_stats(r, force=True)
    finally:
        if loop.query_tuner is not None:
            loop.query_tuner.stop()
        consumer.close()
        producer.flush(10)
        producer.close(10)
        if replica is not None:
            replica.stop()
