"""What was shown, for the learner: served feature rows in Redis, then an impression event.

The rows go to Redis first (synchronously, with a TTL) so that by the time the learner reads the
impression from Kafka, the exact features it must train on are already there. The Kafka send is
asynchronous: a response never waits for the broker; failures are counted and logged.
"""

from __future__ import annotations

import logging

import numpy as np
import redis
from kafka import KafkaProducer

from serving import metrics
from streamrec.ranking import log_served
from streamrec.schemas import Event, encode
from streamrec.sessions.learned import Pool, log_pool
from streamrec.settings import Settings

log = logging.getLogger(__name__)

ANONYMOUS_USER = "anonymous"


class ImpressionLog:
    def __init__(self, s: Settings, producer: KafkaProducer, r: redis.Redis):
        self.s = s
        self.producer = producer
        self.redis = r
        self.ttl_s = s.learner.label_window_s * 4 + 60

    def record(
        self,
        *,
        request_id: str,
        user_id: str | None,
        query: str | None,
        item_ids: list[str],
        rows: np.ndarray | None,
        ts_ms: int,
        pool: Pool | None = None,
        swapped: int | None = None,
        position: int | None = None,
    ) -> None:
        """``rows`` None: no served features (the store was down); the learner recomputes them.
        ``pool``: /recommend's scored candidates and their fusion features, for the learned fusion.
        ``swapped``: the page position whose result traded places with the next at random.
        ``position``: where the list starts in the whole ranking (a later page of results)."""
        if not item_ids:
            return
        if pool is not None:
            try:
                log_pool(self.redis, self.s.redis.prefix, request_id, pool[0], pool[1], self.ttl_s)
            except redis.RedisError as e:  # one training example less; the impression still counts
                log.warning("could not store the fusion pool of %s: %r", request_id, e)
        if rows is not None:
            try:
                log_served(self.redis, self.s.redis.prefix, request_id, item_ids, rows, self.ttl_s)
            except redis.RedisError as e:
                # The learner can still recompute features; the impression itself must not be lost.
                log.warning("could not store served features for %s: %r", request_id, e)
        event = Event(
            event_id=f"imp-{request_id}",
            type="impression",
            user_id=user_id or ANONYMOUS_USER,
            ts=ts_ms,
            request_id=request_id,
            item_ids=item_ids,
            query=query[:512] if query else None,
            swapped=swapped,
            position=position or None,
        )
        future = self.producer.send(self.s.topic.events, key=event.user_id, value=encode(event))
        future.add_callback(lambda _md: metrics.IMPRESSIONS.labels("published").inc())
        future.add_errback(self._failed, request_id)

    @staticmethod
    def _failed(exc: Exception, request_id: str) -> None:
        metrics.IMPRESSIONS.labels("failed").inc()
        log.error("impression %s could not be published: %r", request_id, exc)
