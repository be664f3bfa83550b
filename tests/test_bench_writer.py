"""bench/writer.py in small: the partition batches it replays are the topic's, every record of a
stream is applied, and its counts say where Redis's work goes (a purchase-heavy stream adds the
bought-together pairs). Seconds are the bench's figures, never asserted here."""

from __future__ import annotations

import os

import redis

from bench.writer import partition_batches, purchase_heavy, run_stream
from streamrec.datasets import diginetica
from streamrec.schemas import Event


def test_batches_keep_each_partitions_order_and_offsets(data_dir: os.PathLike) -> None:
    events = list(diginetica.session_events(str(data_dir), limit=3000))
    batches = partition_batches(events, partitions=3, batch=200)
    seen: dict[int, list[int]] = {}
    for p, records, next_offset in batches:
        offsets = [off for off, *_ in records]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        assert next_offset == offsets[-1] + 1 and len(records) <= 200
        seen.setdefault(p, []).extend(offsets)
    assert sum(len(v) for v in seen.values()) == len(events)
    assert all(v == list(range(len(v))) for v in seen.values())
    # a user's events stay in one partition, and every partition gets some
    where: dict[str, set[int]] = {}
    for p, records, _ in batches:
        for _, m, _, _ in records:
            assert isinstance(m, Event)
            where.setdefault(m.user_id, set()).add(p)
    assert all(len(ps) == 1 for ps in where.values()) and set(seen) == {0, 1, 2}


def test_every_event_is_applied_and_the_commands_are_counted(redis_server, data_dir: os.PathLike) -> None:
    r = redis.Redis.from_url(redis_server.url)
    events = list(diginetica.session_events(str(data_dir), limit=2000))
    runs = {
        name: run_stream(r, stream, 3, 250)
        for name, stream in (("views", events), ("purchases", purchase_heavy(events)))
    }
    for run in runs.values():
        assert run["redis_cpu_us"] > 0 and run["lua_us"] > 0 and run["commands_us"] > 0
        assert run["calls"]["hgetall"] > 0 and run["calls"]["zincrby"] > 0
        assert r.keys(f"{run['prefix']}off:*")  # the partitions' offsets were stored
        for start in range(0, len(keys := r.keys(f"{run['prefix']}*")), 5000):
            r.delete(*keys[start : start + 5000])
    # every purchase-heavy interaction is a basket one: bought-together pairs on top of co-visitation
    assert runs["purchases"]["calls"]["zincrby"] > runs["views"]["calls"]["zincrby"]
    assert {e.type for e in purchase_heavy(events)} == {"add_to_cart", "purchase"}


def test_a_warm_keyspace_goes_on_from_the_warm_up_offsets(redis_server, data_dir: os.PathLike) -> None:
    """The same events measured cold and after a warm-up: every one applied in both (run_stream
    asserts it), on offsets that go on from the warm-up's, and fewer TTLs set when warm (the items'
    keys had today's refresh)."""
    r = redis.Redis.from_url(redis_server.url)
    events = list(diginetica.session_events(str(data_dir), limit=2000))
    cold = run_stream(r, events[1000:], 3, 250)
    warm = run_stream(r, events[1000:], 3, 250, warm_up=events[:1000])
    counts = [int(v) for v in r.mget(sorted(r.keys(f"{warm['prefix']}off:bench:t:*")))]
    assert sum(counts) == len(events)  # each partition's stored offset: its warm-up and measured events
    assert warm["calls"]["expire"] < cold["calls"]["expire"]
    for run in (cold, warm):
        for start in range(0, len(keys := r.keys(f"{run['prefix']}*")), 5000):
            r.delete(*keys[start : start + 5000])
