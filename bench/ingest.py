"""Ingestion throughput: end-to-end events/s through real ``python -m consumers`` processes.

For 1 and 2 consumer processes, on one broker and one Redis started here (or the ones in
``STREAMREC_KAFKA_BOOTSTRAP`` / ``STREAMREC_REDIS_URL``), with DIGINETICA session events:

* ``pipelined``: the clock starts at the first produce and stops when every record's effects
  and its partition offset are in Redis (the commit point; Kafka's commit follows it at once).
* ``drain``: the events are produced first; the clock runs from the moment the first consumer
  logs its partition assignment to the last applied batch, so process start and produce time are
  left out (with 2 processes the second one's join and the rebalance are inside the clock).

In the same run, the ceiling: a bare kafka-python consumer (assign + poll + ``json.loads``) on
the same broker and data, and the ratio to it. ``--profile`` adds where the time goes: CPU
seconds per event of the consumer, Redis and broker processes, and a cProfile of one in-process
consumer.

    python -m bench.ingest --events 50000 --repeats 3 --profile

``--cluster 1,2,3`` measures instead the drain on a local Redis Cluster of N masters
(``launcher/redis_cluster.py``) with N feature keyspaces (``redis.shards``, docs/REDIS-CLUSTER.md),
for 1, 2 and 3 consumer processes: events/s and CPU µs per event of each consumer, each Redis
master and the broker, the per-event costs the README's scale-out table is computed from.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from launcher.embedded import EmbeddedKafka, EmbeddedRedis, child_env
from launcher.redis_cluster import LocalRedisCluster
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features.layout import shard_of
from streamrec.schemas import encode
from streamrec.settings import REPO_ROOT, Settings
from streamrec.store import connect_binary, keyspaces


def cpu_s(pid: int) -> float:
    """utime + stime of a process (Linux /proc), to say which process spends the time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh(base: Settings) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = base.replace(
        redis={"prefix": f"b{tag}:"},
        topic={
            "events": f"b{tag}.events",
            "catalog": f"b{tag}.catalog",
            "dlq": f"b{tag}.dlq",
            "quarantine": f"b{tag}.quarantine",
        },
    )
    bus.ensure_topics(s)
    return s


def produce(s: Settings, topic: str, events: list[tuple[str, bytes]]) -> dict[int, int]:
    """Send everything; returns partition -> offset after its last record."""
    p = bus.make_producer(s, linger_ms=20, batch_size=512 * 1024)
    futures = [p.send(topic, key=k, value=v) for k, v in events]
    p.flush()
    ends: dict[int, int] = {}
    for f in futures:
        md = f.get(timeout=60)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    p.close()
    return ends


def group(s: Settings) -> str:
    """A consumer group per trial: a fresh group forms at once, whatever earlier trials left."""
    return f"streamrec-consumers-{s.redis.prefix.rstrip(':')}"


def applied(s: Settings, r, partitions: int) -> dict[int, int]:
    out = {}
    prefixes = keyspaces(s)
    for p in range(partitions):
        v = r.get(f"{prefixes[shard_of(p, len(prefixes))]}off:{group(s)}:{s.topic.events}:{p}")
        out[p] = int(v) if v is not None else 0
    return out


def raw_ceiling(s: Settings, events: list[tuple[str, bytes]]) -> float:
    """Events/s of a bare consumer: fetch + ``json.loads``, no validation, no Redis."""
    produce(s, s.topic.events, events)
    c = bus.make_consumer(s, group_id=None)
    try:
        tps = bus.all_partitions(c, s.topic.events)
        c.assign(tps)
        c.seek_to_beginning(*tps)
        n, started = 0, time.perf_counter()
        while n < len(events):
            for recs in c.poll(timeout_ms=500).values():
                for rec in recs:
                    json.loads(rec.value)
                n += len(recs)
        return n / (time.perf_counter() - started)
    finally:
        c.close()


def start_consumers(s: Settings, n: int, log_dir: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    # short group timeouts, as in the tests: a trial's group forms in seconds
    timeouts = {
        "consumer_session_timeout_ms": 6000,
        "consumer_heartbeat_ms": 500,
        "consumer_max_poll_interval_ms": 10_000,
    }
    env = child_env(s.replace(kafka=timeouts, consumers={"group": group(s)}).to_env()) | {"STREAMREC_LOG_LEVEL": "INFO"}
    procs, logs = [], []
    for i in range(n):
        logs.append(log_dir / f"{s.redis.prefix.rstrip(':')}-{i}.log")
        with open(logs[-1], "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "consumers"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
                )
            )
    return procs, logs


def wait_joined(
    procs: list[subprocess.Popen], logs: list[Path], timeout_s: float = 120.0, settle_s: float = 0.5
) -> None:
    """Wait until every consumer process logged a non-empty partition assignment (all joined)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all("partitions assigned: [(" in log.read_text(errors="replace") for log in logs):
            time.sleep(settle_s)
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a consumer exited; see {logs}")
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
    raise TimeoutError(f"{len(procs)} consumers did not join within {timeout_s}s:\n{tail}")


def wait_applied(s: Settings, r, ends: dict[int, int], timeout_s: float = 600.0) -> float:
    """Seconds until every partition's Redis offset reached ``ends``; returns the finish time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = applied(s, r, s.topic.partitions)
        if all(got[p] >= end for p, end in ends.items()):
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError("consumers did not apply every event")


def e2e(base: Settings, events, consumers: int, mode: str, log_dir: Path, servers: dict) -> dict:
    s = fresh(base)
    r = connect_binary(s)  # a cluster client on a cluster
    procs = []
    try:
        if mode == "pipelined":
            procs, logs = start_consumers(s, consumers, log_dir)
            wait_joined(procs, logs)
            cpu0 = {k: cpu_s(pid) for k, pid in servers.items()} | {
                f"consumer{i}": cpu_s(p.pid) for i, p in enumerate(procs)
            }
            started = time.perf_counter()
            ends = produce(s, s.topic.events, events)
            finished = wait_applied(s, r, ends)
        else:
            ends = produce(s, s.topic.events, events)
            procs, logs = start_consumers(s, consumers, log_dir)
            wait_joined(procs, logs[:1], settle_s=0.0)  # the clock starts when the first one owns partitions
            started = time.perf_counter()
            cpu0 = {k: cpu_s(pid) for k, pid in servers.items()} | {
                f"consumer{i}": cpu_s(p.pid) for i, p in enumerate(procs)
            }
            finished = wait_applied(s, r, ends)
        cpu1 = {k: cpu_s(pid) for k, pid in servers.items()} | {
            f"consumer{i}": cpu_s(p.pid) for i, p in enumerate(procs)
        }
        n = sum(ends.values())
        return {"rate": n / (finished - started), "cpu_us_per_event": {k: (cpu1[k] - cpu0[k]) / n * 1e6 for k in cpu1}}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        r.close()


def profile_in_process(base: Settings, events) -> str:
    """cProfile of one consumer draining a backlog in this process: the top functions by own time."""
    from consumers.service import Ingestor

    s = fresh(base)
    ends = produce(s, s.topic.events, events)
    r = connect_binary(s)
    stop = threading.Event()
    ingestor = Ingestor(s, group=group(s))

    def watch():
        wait_applied(s, r, ends)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    prof = cProfile.Profile()
    prof.enable()
    ingestor.run(stop)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def report(mode: str, consumers: int, runs: list[dict], ceiling: float | None) -> None:
    rate = statistics.median(run["rate"] for run in runs)
    cpu = {k: statistics.median(run["cpu_us_per_event"][k] for run in runs) for k in runs[0]["cpu_us_per_event"]}
    where = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    ratio = f"   ratio to ceiling {rate / ceiling:5.2f}" if ceiling else ""
    print(f"{mode:9s} {consumers} consumer process(es): {rate:10,.0f} events/s{ratio}   CPU µs/event: {where}")


def on_clusters(base: Settings, events, sizes: list[int], repeats: int, tmp_path: Path, servers: dict) -> None:
    """The drain on a local cluster of each size, with one feature keyspace per master."""
    for n in sizes:
        with LocalRedisCluster(tmp_path / f"cluster{n}", masters=n, replicas=0, persistent=False) as cluster:
            s = base.replace(redis={"url": cluster.url, "cluster": True, "shards": n})
            nodes = servers | {f"redis{i}": m.proc.pid for i, m in enumerate(cluster.masters)}
            print(f"# Redis Cluster of {n} master(s), {n} keyspace(s)")
            for consumers in range(1, min(3, s.topic.partitions) + 1):
                runs = [e2e(s, events, consumers, "drain", tmp_path, nodes) for _ in range(repeats)]
                report("drain", consumers, runs, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cluster", default="", help="comma-separated cluster sizes (masters), e.g. 1,2,3")
    args = ap.parse_args()

    base = Settings()
    data = base.require_data_dir()
    events = [(e.user_id, encode(e)) for e in diginetica.session_events(data, limit=args.events)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        embedded = []
        servers = {}
        if not base.kafka.bootstrap:
            kafka = EmbeddedKafka(tmp_path / "tansu").start()
            embedded.append(kafka)
            base = base.replace(kafka={"bootstrap": kafka.bootstrap})
            servers["broker"] = kafka.proc.pid
        try:
            bus.wait_for_broker(base.kafka.bootstrap)
            print(
                f"# {len(events)} DIGINETICA events, {base.topic.partitions} partitions, "
                f"{os.cpu_count()} CPUs, repeats={args.repeats} (medians)"
            )
            if args.cluster:
                sizes = [int(n) for n in args.cluster.split(",")]
                on_clusters(base, events, sizes, args.repeats, tmp_path, servers)
                return
            if not base.redis.url:
                redis_server = EmbeddedRedis(tmp_path / "redis").start()
                embedded.append(redis_server)
                base = base.replace(redis={"url": redis_server.url})
                servers["redis"] = redis_server.proc.pid
            ceiling = statistics.median(raw_ceiling(fresh(base), events) for _ in range(args.repeats))
            print(f"raw kafka-python consume+json.loads ceiling: {ceiling:10,.0f} events/s")
            for mode in ("drain", "pipelined"):
                for consumers in (1, 2):
                    runs = [e2e(base, events, consumers, mode, tmp_path, servers) for _ in range(args.repeats)]
                    report(mode, consumers, runs, ceiling)
            if args.profile:
                print("\n# one in-process consumer draining the backlog, top functions by own time")
                print(profile_in_process(base, events))
        finally:
            for server in embedded:
                server.stop()


if __name__ == "__main__":
    main()
