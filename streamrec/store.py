"""Redis connection: one place that knows how to reach the online store and name its keys."""

from __future__ import annotations

import redis

from streamrec.settings import Settings


def connect(s: Settings) -> redis.Redis:
    """A pooled client returning ``str`` (every value we store is text or a number)."""
    return redis.Redis.from_url(
        s.require_redis(),
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def connect_binary(s: Settings) -> redis.Redis:
    """A client returning ``bytes``, for packed vectors."""
    return redis.Redis.from_url(s.require_redis(), socket_timeout=10, socket_connect_timeout=5)
