"""Redis connection: one place that knows how to reach the online store and name its keys."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

import redis
import tenacity
from redis.cluster import RedisCluster

from streamrec.settings import Settings

log = logging.getLogger(__name__)


# RESP2: redis-py 8 speaks RESP3 by default and converts every sorted-set score back to the RESP2
# shape through bytes (format, then float); on RESP2 a 100-member ZREVRANGE WITHSCORES reads in
# 237 us instead of 355 us, and /recommend reads several such rows per request.
PROTOCOL = 2


def connect(s: Settings, timeout_s: float | None = None) -> redis.Redis:
    """A pooled client returning ``str`` (every value we store is text or a number).

    ``timeout_s`` bounds every call (default ``redis.timeout_s``): serving passes its short read
    timeout so a Redis that hangs turns into a degraded answer, not a hung request."""
    timeout = s.redis.timeout_s if timeout_s is None else timeout_s
    if s.redis.cluster:  # a cluster client offers the commands the readers use: see connect_binary
        return cast(
            redis.Redis,
            RedisCluster.from_url(
                s.require_redis(),
                protocol=PROTOCOL,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=min(timeout, 5),
            ),
        )
    return redis.Redis.from_url(
        s.require_redis(),
        protocol=PROTOCOL,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 5),
        health_check_interval=30,
    )


def connect_binary(s: Settings) -> redis.Redis:
    """A client returning ``bytes``, for packed vectors and the feature writer.

    With ``redis.cluster`` a cluster client, which sends each command (and each writer script call,
    whose keys share one keyspace's slot) to the master of its slot and follows a failover; it
    offers every command the feature writer and its outbox use, hence the cast."""
    if s.redis.cluster:
        return cast(
            redis.Redis,
            RedisCluster.from_url(
                s.require_redis(), protocol=PROTOCOL, socket_timeout=s.redis.timeout_s, socket_connect_timeout=5
            ),
        )
    return redis.Redis.from_url(
        s.require_redis(), protocol=PROTOCOL, socket_timeout=s.redis.timeout_s, socket_connect_timeout=5
    )


def offset_keys(s: Settings, group: str, topic: str, partition: int) -> list[str]:
    """Where each keyspace that applies ``partition`` of ``topic`` keeps its next offset: the owning
    keyspace's for an events partition, every keyspace's for a catalog partition (each applies the
    whole catalog, consumers/apply.py); the partition has been applied up to the smallest."""
    from streamrec.features.layout import Keys, shard_of

    prefixes = keyspaces(s)
    if topic != s.topic.catalog:
        prefixes = [prefixes[shard_of(partition, len(prefixes))]]
    return [Keys(prefix).offset(group, topic, partition) for prefix in prefixes]


def shared_prefix(s: Settings) -> str:
    """The prefix of the keys that belong to no keyspace but change together (the merchandising
    rules and their version): on a Redis Cluster the first keyspace's, whose hash tag puts them in
    one slot, so one MULTI still changes both."""
    return keyspaces(s)[0]


def keyspaces(s: Settings) -> list[str]:
    """The key prefix of each feature keyspace: ``redis.prefix`` on a single Redis, else one hash-tagged
    prefix per shard (:func:`streamrec.features.layout.shard_prefix`)."""
    from streamrec.features.layout import shard_prefix  # here: streamrec.features imports this module

    if not s.redis.cluster:
        return [s.redis.prefix]
    return [shard_prefix(s.redis.prefix, k, s.redis.shards) for k in range(s.redis.shards)]


T = TypeVar("T")


def retry_until_done(
    fn: Callable[[], T],
    stop: threading.Event | None = None,
    retry_on: tuple[type[BaseException], ...] = (redis.RedisError,),
    on_error: Callable[[BaseException], None] | None = None,
    max_delay_s: float = 5.0,
) -> T:
    """``fn()``, called again with exponential back-off (0.1 s doubling, at most ``max_delay_s``)
    while it raises ``retry_on``; ``on_error`` sees every such failure.

    How the writers ride out an outage of Redis (or the broker): the batch or event stalls until
    the store answers, instead of being skipped or crashing the process. ``fn`` must be safe to
    call again (it changes nothing before its store call succeeds). Once ``stop`` is set the error
    propagates as itself (not tenacity's RetryError), so a SIGTERM during an outage exits without
    committing what was not applied; the back-off waits on ``stop`` so that SIGTERM is not delayed.
    """

    def report(state: tenacity.RetryCallState) -> None:
        if on_error is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_error(error)

    def pause(seconds: float) -> None:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=tenacity.wait_exponential(multiplier=0.1, max=max_delay_s),
        stop=tenacity.stop_when_event_set(stop) if stop is not None else tenacity.stop_never,
        sleep=pause,
        after=report,
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    return retrying(fn)


class ClusterNotSupported(RuntimeError):
    """``redis.url`` is a Redis Cluster node but ``redis.cluster`` is not set."""


def check_cluster(r: redis.Redis, s: Settings) -> None:
    """Stop a service at start when ``redis.url`` is a Redis Cluster node and the settings do not say so.

    Why: the single-Redis layout names keys of every slot inside the writer script and in serving's
    pipelines, which a cluster refuses (CROSSSLOT / MOVED); the writers retry Redis errors until
    they pass, so without this check a service pointed at a cluster would stall with no clear error.
    A Redis that does not answer yet is left to the services' outage handling (it is checked again
    at their next start)."""
    if s.redis.cluster:
        return
    try:
        enabled = int(r.info("cluster").get("cluster_enabled", 0))
    except redis.RedisError as e:
        log.debug("cluster check skipped: Redis did not answer (%r)", e)
        return
    if enabled:
        raise ClusterNotSupported(
            "STREAMREC_REDIS_URL points at a Redis Cluster node: set STREAMREC_REDIS_CLUSTER=1 and "
            "STREAMREC_REDIS_SHARDS (see docs/REDIS-CLUSTER.md), or give streamrec a single Redis"
        )
