"""The serving process: builds the engine from published state and runs the HTTP API.

It reads only what other services publish (vectors topic, Redis features, model snapshots) and
writes impressions to the events topic, so any number of replicas can run side by side. Several
workers on one host (``serving.workers``, started by the launcher) each bind the same port with
SO_REUSEPORT: the kernel hands each connection to one of them, so every request, and the
impression it logs, is handled once.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading

import uvicorn
from kafka import KafkaProducer

from serving.app import create_app
from serving.cockpit import Sampler
from serving.engine import Engine
from serving.expansions import ExpansionFollower
from serving.impressions import ImpressionLog
from serving.lexical import LexicalIndex
from serving.merchandising import RuleFollower, RuleStore
from serving.models import ModelWatcher
from serving.query_versions import QueryVersionFollower
from serving.suggest import SuggestFollower
from streamrec import bus
from streamrec.features import open_features
from streamrec.gcpause import GcKeeper
from streamrec.model_store import ModelStore
from streamrec.query_encoder import QueryEncoder
from streamrec.query_versions import QueryVersions
from streamrec.settings import Settings
from streamrec.store import check_cluster, connect, shared_prefix
from streamrec.vector_index import IndexReplica

log = logging.getLogger(__name__)


def build_engine(s: Settings) -> tuple[Engine, KafkaProducer]:
    """The engine plus its producer; starts the replica, model watcher and lexical index writer."""
    encoder = QueryEncoder.from_settings(s)
    replica = IndexReplica(s, encoder.dim)
    replica.start()
    r = connect(s, s.serving.redis_timeout_s)  # a hung Redis degrades answers, never hangs them
    check_cluster(r, s)
    models = ModelWatcher(ModelStore.from_settings(s), s.serving.model_poll_s)
    models.start()

    lexical = LexicalIndex(expansion_boost=s.search.expansion_boost)
    replica.index.subscribe(lexical.apply)  # every vector-topic change, O(change); seeded with the snapshot
    lexical.start()
    features = open_features(s, s.serving.redis_timeout_s, trending_cache_s=s.serving.trending_cache_s)
    expansions = None  # clicked searches' terms, indexed only where they are searched (boost > 0)
    if s.search.expansion_boost > 0:
        expansions = ExpansionFollower(features, lexical, s.search.expansion_poll_s)
        expansions.start()
    # send() blocks while the producer's buffer is full: no longer than a write may wait for the broker
    producer = bus.make_producer(s, max_block_ms=int(s.serving.publish_timeout_s * 1000))
    suggestions = None  # autocomplete: the searches shoppers chose results of, read from Redis
    if s.search.suggest_size > 0 and s.features.suggest_cap > 0:
        suggestions = SuggestFollower(features, s.search.suggest_size, s.search.suggest_poll_s)
        suggestions.start()
    rules = RuleFollower(RuleStore(r, shared_prefix(s)), s.search.rules_poll_s)  # merchandising
    rules.start()
    query_versions = None  # the learner's fine-tuned query side, once one beat the pretrained encoder
    if s.query_tuning.enabled:
        query_versions = QueryVersionFollower(s, encoder, QueryVersions(s.query_encoders_dir))
        try:  # a worker starting later starts with the version the others serve
            query_versions.poll()
        except (OSError, ValueError) as e:
            log.warning("could not load the published query encoder (serving the pretrained one): %r", e)
        query_versions.start()
    impressions = ImpressionLog(s, producer, r)
    engine = Engine(
        s, encoder, replica, features, models, lexical, impressions, expansions, suggestions, rules, query_versions
    )
    return engine, producer


# How long a thread may hold the interpreter lock while others wait for it (Python's default: 5 ms).
# The event loop, which accepts connections and sheds excess reads, competes with the request threads
# for it; at 5 ms a shed 503 waited behind several of them.
SWITCH_INTERVAL_S = 0.001


def run(s: Settings, stop: threading.Event) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    engine, producer = build_engine(s)
    app = create_app(s, engine, producer)
    sampler = None  # the cockpit's bounded history (serving/cockpit.py): one writer, not one per worker
    if not s.serving.worker:
        sampler = Sampler(s, engine.status, follower=lambda: engine.replica.offsets)
        sampler.start()
    keeper = GcKeeper(thaw_s=s.serving.gc_thaw_s).start(freeze_now=True) if s.serving.gc_thaw_s > 0 else None
    config = uvicorn.Config(app, host=s.http.host, port=s.http.port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    # In the main thread uvicorn captures SIGTERM itself and re-raises it after shutdown (which
    # sets `stop`); in a test thread it installs nothing and `stop` drives the exit.
    def watch() -> None:
        stop.wait()
        server.should_exit = True

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    log.info("serving on http://%s:%d (worker %s)", s.http.host, s.http.port, s.serving.worker)
    try:
        server.run(sockets=[shared_socket(s)] if s.serving.worker is not None else None)
    finally:
        if keeper is not None:
            keeper.stop()
        if sampler is not None:
            sampler.stop()
        producer.flush(timeout=10)  # impressions already handed to the producer are delivered
        producer.close(timeout=10)
        engine.models.stop()
        if engine.expansions is not None:
            engine.expansions.stop()
        if engine.suggestions is not None:
            engine.suggestions.stop()
        engine.rules.stop()
        if engine.query_versions is not None:
            engine.query_versions.stop()
        engine.lexical.stop()
        engine.replica.stop()


def shared_socket(s: Settings) -> socket.socket:
    """The HTTP port, bound with SO_REUSEPORT so that every worker can listen on it at once."""
    family = socket.AF_INET6 if ":" in s.http.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((s.http.host, s.http.port))
    sock.listen(2048)
    return sock
