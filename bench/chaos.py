"""Chaos replay: DIGINETICA events through the whole stack while services are killed with SIGKILL.

The stack is `streamrec up`'s (launcher.stack.LocalStack: embedded Tansu and Redis, the four
services as supervised processes). A small catalogue (``--catalog`` real DIGINETICA items that the
events touch, plus 200 that they do not) is indexed first; then ``--events`` records (the
consumers fault test's stream: derived session events merged with the real purchases and views,
280 malformed records, 150 producer retries, two bots) are produced straight to the events
topic. Meanwhile:

* a chaos thread SIGKILLs a random service (consumers, index-updater, learner, serving)
  ``--kills`` times, at random points of the consumers' progress (at least 2 s apart); the
  supervisor restarts it with its usual back-off;
* a catalog thread upserts a new item every 1.5 s (60 at most) and every third time deletes one
  of them and one of the untouched extras;
* a probe thread calls GET /search and /recommend (``impression=false``, so the topic holds only
  the replayed records) about 10 times a second and records every answer.

Afterwards it checks and prints: every Redis feature against the reference built from the file
(``bench/feature_reference.py``, shared with tests/test_consumers_fault.py), the DLQ and the
quarantine topic, the learner's checkpoint (``events_in_state`` per partition = the records in the
topic: every record in the learner's state exactly once), the index (the vectors topic's live ids
and serving's ``index_items`` = the catalogue after the changes), and serving's answers (longest
gap between two answers, errors outside serving's own restarts). Exit code 1 on any mismatch.

    python -m bench.chaos --events 1000000 --kills 20
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.feature_reference import (
    FEATURE_ENV,
    Reference,
    build_stream,
    feature_mismatches,
    read_all,
    rejection_mismatches,
)
from launcher.embedded import free_port
from launcher.stack import SERVICES, LocalStack
from learner.checkpoint import Checkpointer
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features import FeatureStore
from streamrec.schemas import CatalogOp, encode
from streamrec.settings import Settings
from streamrec.vector_index.records import decode_record

EXTRA_ITEMS = 200  # catalogue items no event touches: deleting them leaves every feature as is


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Probe:
    """GET /search and /recommend in a loop; every answer as (start, end, route, ok, status or error)."""

    base_url: str
    users: list[str]
    answers: list[tuple[float, float, str, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(3)
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            while not self.stop.is_set():
                route = rng.choice(("search", "recommend"))
                if route == "search":
                    path, params = "/search", {"q": f"product {rng.randint(1, 9)}", "impression": "false"}
                else:
                    path, params = "/recommend", {"user_id": rng.choice(self.users), "impression": "false"}
                t0 = time.monotonic()
                try:
                    resp = http.get(path, params=params)
                    what = str(resp.status_code) if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"
                except httpx.HTTPError as e:
                    what = type(e).__name__
                self.answers.append((t0, time.monotonic(), route, what == "200", what))
                self.stop.wait(0.1)


def applied(fs: FeatureStore, s: Settings) -> int:
    """Records the consumers have applied (their offsets in Redis, the commit point)."""
    return sum(
        int(fs.r.get(fs.keys.offset(s.consumers.group, s.topic.events, p)) or 0) for p in range(s.topic.partitions)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="event records to replay (before bad ones)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--services", default=",".join(SERVICES), help="services the chaos thread may kill")
    ap.add_argument("--catalog", type=int, default=2000, help="DIGINETICA items indexed (besides 200 extras)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep", action="store_true", help="keep the state folder (logs) afterwards")
    args = ap.parse_args()
    victims = args.services.split(",")
    assert set(victims) <= set(SERVICES), f"--services: some of {list(SERVICES)}"
    os.environ.update(FEATURE_ENV)  # the supervised children inherit it
    rng = random.Random(args.seed)
    t_start = time.monotonic()

    base = Settings()
    data_dir = base.require_data_dir()
    typed = len(diginetica.purchase_events(data_dir)) + len(diginetica.view_events(data_dir))
    stream = build_stream(data_dir, max(0, args.events - typed), rng)
    total = len(stream)
    in_stream = sorted({e.item_id for _k, _v, e in stream if e is not None and not e.item_id.startswith("sg")})
    chosen = set(rng.sample(in_stream, min(args.catalog, len(in_stream))))
    ops, extras = [], []
    for op in diginetica.catalog(data_dir):
        if op.item_id in chosen:
            ops.append(op)
        elif len(extras) < EXTRA_ITEMS and op.item_id not in in_stream:
            extras.append(op)
    ops += extras
    users = sorted({e.user_id for _k, _v, e in stream[: total // 10] if e is not None})[:5000]
    log(f"stream: {total:,} records ({args.events:,} events asked); catalogue {len(ops):,} items")

    tmp = Path(tempfile.mkdtemp(prefix="streamrec-chaos-"))
    s = base.replace(
        state_dir=tmp / "state",
        kafka={"bootstrap": "", "consumer_session_timeout_ms": 4000, "consumer_heartbeat_ms": 400},
        redis={"url": ""},
        http={"port": free_port()},
    )
    failures: list[str] = []
    with LocalStack(s, metrics_base_port=0) as stack:
        s = stack.settings
        assert stack.supervisor is not None
        fs = FeatureStore.from_settings(s)
        producer = bus.make_producer(s, linger_ms=20, batch_size=512 * 1024)
        for op in ops:
            producer.send(s.topic.catalog, key=op.item_id, value=encode(op))
        producer.flush()
        stack.wait_ready(timeout_s=600, min_items=len(ops))
        while sum(a is not None for a in fs.item_attributes([op.item_id for op in ops])) < len(ops):
            time.sleep(0.2)
        log(f"catalogue indexed and applied ({time.monotonic() - t_start:.0f}s since start); replaying")

        # --- the run: producer, catalog changes, probe, chaos ----------------------------------
        ends: dict[int, int] = {}
        t_run = time.monotonic()

        def produce() -> None:
            futures = [producer.send(s.topic.events, key=k, value=v) for k, v, _e in stream]
            producer.flush()
            for f in futures:
                md = f.get(timeout=120)
                ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
            log(f"all {total:,} records on the broker")

        live = {op.item_id for op in ops}
        changes = Counter[str]()
        done = threading.Event()

        def change_catalog() -> None:
            crng = random.Random(args.seed + 1)
            new: list[str] = []
            for i in range(60):
                if done.wait(1.5):
                    break
                now = int(time.time() * 1000)
                item = f"chaos-{i}"
                up = CatalogOp(op="upsert", item_id=item, ts=now, title=f"chaos product {i}", category="chaos")
                producer.send(s.topic.catalog, key=item, value=encode(up))
                new.append(item)
                live.add(item)
                changes["upsert"] += 1
                if i % 3 == 2:  # a delete of a new item and of an untouched extra
                    for gone in (new.pop(crng.randrange(len(new))), extras.pop(crng.randrange(len(extras))).item_id):
                        producer.send(
                            s.topic.catalog, key=gone, value=encode(CatalogOp(op="delete", item_id=gone, ts=now + 1))
                        )
                        live.discard(gone)
                        changes["delete"] += 1
            producer.flush()

        ckpt = Checkpointer(s.state_dir / "learner")

        def in_state() -> dict[int, int]:
            st = ckpt.load() or {}
            if "offsets" in st and "events_in_state" not in st:
                raise SystemExit("the learner's checkpoint has no events_in_state: is it this checkout's learner?")
            return {int(p): n for p, n in st.get("events_in_state", {}).items()}

        probe = Probe(stack.base_url, users)
        kills: list[tuple[float, str, int]] = []  # (when, service, records applied then)

        def chaos() -> None:
            # kill points spread over the work of the consumers and the (slower) learner together
            points = sorted(rng.uniform(0.03, 0.97) for _ in range(args.kills))
            last = 0.0
            for f in points:
                while (applied(fs, s) + sum(in_state().values())) < 2 * f * total or time.monotonic() - last < 2.0:
                    time.sleep(0.5)
                alive = {c["name"]: c["pid"] for c in stack.supervisor.status() if c["alive"]}  # type: ignore[union-attr]
                name = rng.choice(victims)
                if name not in alive:  # still being restarted: hit another one
                    name = rng.choice([v for v in victims if v in alive])
                n = applied(fs, s)
                os.kill(alive[name], signal.SIGKILL)
                last = time.monotonic()
                kills.append((last, name, n))
                learned = sum(in_state().values())
                log(f"kill -9 {name} (pid {alive[name]}) at {n:,}/{total:,} applied, learner {learned:,}")

        finished: dict[str, float] = {}  # when the consumers / the learner first had every record

        def watch() -> None:
            while len(finished) < 2:
                if "consumers" not in finished and ends and applied(fs, s) >= total:
                    finished["consumers"] = time.monotonic()
                if "learner" not in finished and sum(in_state().values()) >= total:
                    finished["learner"] = time.monotonic()
                time.sleep(0.5)

        threading.Thread(target=watch, daemon=True).start()
        threads = [threading.Thread(target=t, daemon=True) for t in (produce, change_catalog, probe.run, chaos)]
        for t in threads:
            t.start()
        ref = Reference.of(stream, categories={op.item_id: op.category for op in ops if op.category})
        log(f"reference built ({len(ref.recent):,} users, {len(ref.item_n):,} items)")

        def progress() -> str:
            ok = sum(a[3] for a in probe.answers)
            return (
                f"consumers {applied(fs, s):,}/{total:,} · learner {sum(in_state().values()):,} · "
                f"kills {len(kills)} · probes {ok:,} ok / {len(probe.answers) - ok:,} failed"
            )

        def wait(what: str, cond, timeout_s: float) -> bool:
            deadline, next_log = time.monotonic() + timeout_s, 0.0
            while not cond():
                if time.monotonic() > deadline:
                    failures.append(f"{what}: not within {timeout_s:.0f}s ({progress()})")
                    return False
                if time.monotonic() > next_log:
                    log(f"waiting for {what}: {progress()}")
                    next_log = time.monotonic() + 10
                time.sleep(0.5)
            return True

        wait("the chaos thread's kills", lambda: not threads[3].is_alive(), 3600)
        wait("the producer", lambda: not threads[0].is_alive(), 600)
        done.set()
        threads[1].join()
        t_chaos_end = time.monotonic()

        def consumers_done() -> bool:
            r = fs.r
            return all(
                int(r.get(fs.keys.offset(s.consumers.group, s.topic.events, p)) or 0) >= end for p, end in ends.items()
            ) and not any(r.llen(fs.keys.outbox(s.consumers.group, s.topic.events, p)) for p in ends)

        wait("the consumers to apply everything", consumers_done, 1800)
        t_applied = time.monotonic()
        wait("the learner to checkpoint everything", lambda: (ckpt.load() or {}).get("offsets") == ends, 1800)

        def index_done() -> bool:
            try:
                return httpx.get(f"{stack.base_url}/healthz", timeout=5).json()["index_items"] == len(live)
            except (httpx.HTTPError, KeyError, ValueError):
                return False

        wait("serving's index to hold the catalogue", index_done, 600)
        wait("every service up", lambda: all(c["alive"] for c in stack.supervisor.status()), 120)  # type: ignore[union-attr]
        probe.stop.set()
        threads[2].join()
        wall = time.monotonic() - t_run

        # --- checks ---------------------------------------------------------------------------
        log("checking")
        feats = feature_mismatches(fs, ref, s.redis.prefix)
        rejects = rejection_mismatches(s, fs, ref)
        learner = in_state()
        vectors: dict = {}
        for m in read_all(s, s.topic.vectors):
            rec = decode_record(m.value, m.key)
            vectors[rec.item_id] = rec
        indexed = {i for i, rec in vectors.items() if not rec.deleted}
        served = httpx.get(f"{stack.base_url}/healthz", timeout=5).json()["index_items"]

    # serving: a restart window runs from a serving kill to its first answer after it
    answers = sorted(probe.answers)
    windows = []
    for t, name, _n in kills:
        if name == "serving":
            after = [a[1] for a in answers if a[0] > t and a[3]]
            windows.append((t, after[0] if after else float("inf")))
    # a request cut off by the kill started before it: it belongs to the window it overlaps
    errors_outside = [a for a in answers if not a[3] and not any(a[1] >= w0 and a[0] <= w1 for w0, w1 in windows)]
    failed = Counter(a[4] for a in answers if not a[3])
    oks = [a[1] for a in answers if a[3]]
    gaps = [(b - a, a, b) for a, b in zip(oks, oks[1:], strict=False)]
    longest = max(gaps, default=(0.0, 0.0, 0.0))
    outside = [g for g in gaps if not any(w0 <= g[2] and g[1] <= w1 for w0, w1 in windows)]
    longest_outside = max(outside, default=(0.0, 0.0, 0.0))
    by_route = Counter((a[2], a[3]) for a in answers)

    print()
    everything = time.monotonic() - t_start
    print(f"chaos replay: {total:,} records, {len(kills)} kills in {wall:.0f}s (wall time, all {everything:.0f}s)")
    for name in ("consumers", "learner"):
        took = finished.get(name, t_applied) - t_run
        print(f"  {name}: every record in {took:.0f}s, {total / took:,.0f} records/s under chaos")
    print(f"  kills per service: {dict(Counter(k[1] for k in kills))}")
    print(f"  features vs reference: {feats.count} mismatches {list(feats)[:5]}")
    print(f"  dead letters and quarantine: {rejects.count} mismatches {list(rejects)[:5]}")
    learner_ok = learner == ends
    print(
        f"  learner checkpoint: events_in_state {sum(learner.values()):,} / {sum(ends.values()):,} records in topic "
        f"(per partition {learner} vs {ends}): {'exactly once' if learner_ok else 'MISMATCH'}"
    )
    index_ok = indexed == live and served == len(live)
    verdict = "equal" if index_ok else "MISMATCH"
    print(
        f"  index: vectors topic {len(indexed):,} live ids, serving {served:,} items, catalogue {len(live):,} "
        f"(after {changes['upsert']} upserts / {changes['delete']} deletes under chaos): {verdict} "
        f"(missing {sorted(live - indexed)[:5]}, extra {sorted(indexed - live)[:5]})"
    )
    print(
        f"  serving: {len(answers):,} probes ({by_route[('search', True)]:,} search + "
        f"{by_route[('recommend', True)]:,} recommend ok), {len(windows)} own restarts; longest gap "
        f"{longest[0]:.1f}s, longest outside its restarts {longest_outside[0]:.1f}s, "
        f"{len(errors_outside)} errors outside its restarts"
    )
    print(f"  serving's restarts (kill -9 to first answer): {[round(w1 - w0, 1) for w0, w1 in windows]} s")
    print(f"  failed probes by answer: {dict(failed.most_common(5))}")
    print(f"  chaos phase (the kills) {t_chaos_end - t_run:.0f}s")
    failures += [f"features: {feats}"] * bool(feats.count) + [f"rejections: {rejects}"] * bool(rejects.count)
    failures += ["learner"] * (not learner_ok) + ["index"] * (not index_ok)
    failures += [f"serving errors outside its restarts: {errors_outside[:5]}"] * bool(errors_outside)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"  state and logs kept in {tmp}")
    print("FAILED: " + "; ".join(failures) if failures else "OK: 0 mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
