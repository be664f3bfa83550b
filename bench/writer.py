"""Redis work per event of the feature writer alone: the script's calls, no Kafka, no consumer loop.

``bench/ingest.py`` measures the whole path; this isolates the part that caps it (one Redis core
runs every partition's writer script). DIGINETICA session events are split into partitions by
user, as the topic's key does, and applied in partition batches of ``--batch`` records through
``consumers.apply.Writer`` on a Redis started here. The catalog is applied first and not counted:
every item with one of 1,000 categories derived from its id (the session file's ids do not map
to the real category file), so the category affinity runs as in a shop.

Printed per stream: Redis CPU µs per event (``INFO cpu`` before and after); of the script's time
(``INFO commandstats``), how much the Redis commands it called took and how much was left to the
Lua interpreter; the commands per event, most frequent first; and the floor measured in the same
run, Redis CPU per event of one pipelined ``HINCRBY`` per event.

Each stream's second half is measured twice: ``cold``, on an empty keyspace (every user, item and
co-visitation key is new: each gets its TTL), and ``warm``, after the first half was applied (a
running shop: most items' keys exist and had their once-a-day TTL refresh already).

Streams: ``diginetica`` (the funnel the dataset module derives: mostly views),
``purchase-heavy`` (the same sessions with every interaction an add to cart or a purchase: the
bought-together pairs grow with the basket) and ``impressions`` (each event replaced by a page of 20
products shown to its user, every other one after a search: what serving logs per request).

``--compare REV`` runs the writer script of git revision REV too (it must take the same
arguments), interleaved with this checkout's, so a change's effect is measured in one run.

    python -m bench.writer --events 100000 --repeats 3 --compare HEAD~1
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

import redis

from consumers.apply import Record, Writer
from launcher.embedded import EmbeddedRedis
from streamrec.datasets import diginetica
from streamrec.schemas import CatalogOp, Event, encode
from streamrec.settings import REPO_ROOT, Settings


def purchase_heavy(events: Iterable[Event]) -> list[Event]:
    """Every interaction an add to cart or a purchase (alternating within a session)."""
    out = []
    for i, e in enumerate(events):
        out.append(e.model_copy(update={"type": "purchase" if i % 2 else "add_to_cart"}))
    return out


def impressions(events: list[Event], shown: int = 20) -> list[Event]:
    """One impression per event instead of it: the user's page of ``shown`` products (a window of
    the stream's items from a point its event picks), every other one after a search."""
    items = sorted({e.item_id for e in events if e.item_id})
    out = []
    for i, e in enumerate(events):
        start = zlib.crc32(e.event_id.encode()) % len(items)
        page = [items[(start + k) % len(items)] for k in range(shown)]
        query = f"product search {i % 500}" if i % 2 else None
        out.append(
            Event(
                event_id=f"imp-{e.event_id}",
                type="impression",
                user_id=e.user_id,
                ts=e.ts,
                request_id=f"r-{e.event_id}",
                item_ids=page,
                query=query,
            )
        )
    return out


def partition_batches(
    events: list[Event], partitions: int, batch: int, first: dict[int, int] | None = None
) -> list[tuple[int, list[Record], int]]:
    """(partition, records, next_offset) in arrival order, batches interleaved across partitions;
    ``first``: each partition's first offset (default 0), to go on after batches already applied."""
    first = first or {}
    per: list[list[Record]] = [[] for _ in range(partitions)]
    for e in events:
        p = zlib.crc32(e.user_id.encode()) % partitions
        per[p].append((first.get(p, 0) + len(per[p]), e, encode(e), e.user_id.encode()))
    out = []
    for start in range(0, max((len(x) for x in per), default=0), batch):
        for p, recs in enumerate(per):
            chunk = recs[start : start + batch]
            if chunk:
                out.append((p, chunk, chunk[-1][0] + 1))
    return out


def catalog_records(events: list[Event]) -> list[Record]:
    """One upsert per item of the stream, with a derived category (``cat{crc32 % 1000}``)."""
    items = sorted({e.item_id for e in events if e.item_id})
    ops = [
        CatalogOp(
            op="upsert",
            item_id=i,
            ts=diginetica.START_MS,
            title=f"product {i}",
            category=f"cat{zlib.crc32(i.encode()) % 1000}",
        )
        for i in items
    ]
    return [(n, op, encode(op), op.item_id.encode()) for n, op in enumerate(ops)]


def cpu_us(r: redis.Redis) -> float:
    info = r.info("cpu")
    return (info["used_cpu_user"] + info["used_cpu_sys"]) * 1e6


def command_stats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """Command -> (calls, µs) so far; calls made inside a script count as that command's."""
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in r.info("commandstats").items()}


def run_stream(
    r: redis.Redis,
    events: list[Event],
    partitions: int,
    batch: int,
    lua: str | None = None,
    warm_up: list[Event] | None = None,
) -> dict:
    """``lua``: another writer script taking the same arguments (None: the consumer's own);
    ``warm_up``: events applied first, not measured (a shop's running state: its items' and
    returning users' keys exist and had their TTLs refreshed today)."""
    prefix = f"w{uuid.uuid4().hex[:8]}:"
    writer = Writer(r, prefix, "bench")
    if lua is not None:
        writer.script = r.register_script(lua)
    catalog = catalog_records((warm_up or []) + events)
    for start in range(0, len(catalog), batch):
        writer.apply("c", 0, catalog[start : start + batch], min(start + batch, len(catalog)))
    applied: dict[int, int] = {}
    for p, records, next_offset in partition_batches(warm_up or [], partitions, batch):
        writer.apply("t", p, records, next_offset)
        applied[p] = next_offset
    batches = partition_batches(events, partitions, batch, first=applied)
    stats0, cpu0, wall = command_stats(r), cpu_us(r), 0.0
    for p, records, next_offset in batches:
        started = time.perf_counter()
        res = writer.apply("t", p, records, next_offset)
        wall += time.perf_counter() - started
        assert res.status == "ok" and res.applied == len(records), res
    cpu1, stats1 = cpu_us(r), command_stats(r)
    n = len(events)
    diff = {k: (c - stats0.get(k, (0, 0))[0], u - stats0.get(k, (0, 0))[1]) for k, (c, u) in stats1.items()}
    script_us = diff.pop("evalsha")[1] / n
    inner = {k: v for k, v in diff.items() if v[0] > 0 and k not in ("info", "evalsha", "script|load")}
    commands_us = sum(u for _, u in inner.values()) / n
    return {
        "redis_cpu_us": (cpu1 - cpu0) / n,
        "wall_us": wall / n * 1e6,
        "commands_us": commands_us,
        "lua_us": script_us - commands_us,
        "calls": {k: c / n for k, (c, _) in inner.items()},
        "prefix": prefix,
    }


def floor_us(r: redis.Redis, n: int) -> float:
    """Redis CPU per event of one pipelined HINCRBY per event: the least a Redis write can cost."""
    key = f"floor{uuid.uuid4().hex[:8]}"
    pipe = r.pipeline(transaction=False)
    cpu0 = cpu_us(r)
    for i in range(n):
        pipe.hincrby(key, f"f{i % 1000}", 1)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    used = cpu_us(r) - cpu0
    r.delete(key)
    return used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500, help="records per partition batch (one script call)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", metavar="REV", help="also run the writer script of this git revision")
    ap.add_argument(
        "--state",
        type=lambda v: v.split(","),
        default=["cold", "warm"],
        help="cold: the stream's second half on an empty keyspace; warm: after its first half (comma-separated)",
    )
    args = ap.parse_args()

    scripts: dict[str, str | None] = {"this checkout": None}
    if args.compare:
        scripts[args.compare] = subprocess.run(
            ["git", "show", f"{args.compare}:streamrec/features/apply.lua"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    data = Settings().require_data_dir()
    base = list(diginetica.session_events(data, limit=args.events))
    streams = {"diginetica": base, "purchase-heavy": purchase_heavy(base), "impressions": impressions(base)}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            r = redis.Redis.from_url(server.url)
            print(
                f"# {len(base)} events per stream (its second half measured), {args.partitions} partitions, "
                f"batches of {args.batch}, repeats={args.repeats} (medians); Redis started here, nothing else on it"
            )
            floor = statistics.median(floor_us(r, len(base)) for _ in range(args.repeats))
            print(f"floor: pipelined HINCRBY, one per event: Redis CPU {floor:5.2f} µs/event")
            for (name, events), state in itertools.product(streams.items(), args.state):
                half = len(events) // 2  # the second half is measured; "warm" applies the first half before it
                runs: dict[str, list[dict]] = {label: [] for label in scripts}
                for _ in range(args.repeats):
                    for label, lua in scripts.items():
                        warm_up = events[:half] if state == "warm" else None
                        run = run_stream(r, events[half:], args.partitions, args.batch, lua, warm_up)
                        runs[label].append(run)
                        keys = r.keys(f"{run['prefix']}*")
                        for start in range(0, len(keys), 10_000):
                            r.delete(*keys[start : start + 10_000])
                for label, done in runs.items():
                    med = {
                        k: statistics.median(x[k] for x in done)
                        for k in ("redis_cpu_us", "wall_us", "commands_us", "lua_us")
                    }
                    calls = done[-1]["calls"]
                    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:8])
                    cpu = med["redis_cpu_us"]
                    print(
                        f"{name:15s} {state:5s} {label:14s} Redis CPU {cpu:5.1f} µs/event ({cpu / floor:4.0f}× floor): "
                        f"its commands {med['commands_us']:4.1f}, Lua {med['lua_us']:4.1f}; script wall "
                        f"{med['wall_us']:5.1f} µs/event\n{'':30s} commands/event {sum(calls.values()):5.2f}: {top}"
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
