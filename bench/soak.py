"""Soak: the whole stack at a steady event rate with a rolling active set; does memory stay flat?

Every second, ``--rate`` events from a window of ``--users`` active users (sessions roll every
minute) on a window of ``--items`` active items; users retire and new ones appear
(``--user-churn`` per second), and the catalog changes (``--item-churn`` new items upserted and as
many retired items deleted per second). A few /recommend and /search calls per second make
serving store its served rows and the learner train. Every ``--sample-s`` seconds: the RSS of each
service process (the supervisor's pids and their children, psutil), Redis ``used_memory`` and a
key audit (``streamrec.memory``: keys and bytes per family). Retired users and items leave Redis
by TTL, so the run sets the feature TTLs to ``--ttl-s`` (production: 30 / 90 days): the active set
is then "seen within the TTL", which is what memory is proportional to in production too.

Prints the samples, the growth after warm-up (least-squares slope, % per 10 minutes, of Redis
memory and of every RSS), bytes per active user / item / session, and any key of no declared
family or without its TTL.

    python -m bench.soak                        # 30 minutes (a quiet machine)
    python -m bench.soak --minutes 6 --sample-s 20
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from launcher.embedded import free_port
from launcher.stack import LocalStack
from streamrec import memory
from streamrec.settings import Settings
from streamrec.store import connect

WORDS = "desk lamp chair paper pen stapler folder marker tape notebook cable mouse monitor stand tray".split()


@dataclass
class Sample:
    t_s: float
    events: int
    used_memory: int
    key_bytes: int
    families: dict[str, memory.FamilyUsage]
    rss: dict[str, int]


@dataclass
class Load:
    """The rolling population: users ``[u0, u0 + users)``, items ``[i0, i0 + items)``."""

    users: int
    items: int
    u0: float = 0.0
    i0: int = 0
    sent: int = 0
    failed: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def item_op(self, k: int) -> dict:
        words = " ".join(self.rng.sample(WORDS, 3))
        return {
            "op": "upsert",
            "item_id": f"soak-i{k}",
            "ts": int(time.time() * 1000),
            "title": f"{words} {k}",
            "category": f"c{k % 30}",
            "price": float(k % 97),
        }

    def events(self, n: int, now_s: float) -> list[dict]:
        out = []
        for _ in range(n):
            user = int(self.u0) + self.rng.randrange(self.users)
            item = self.i0 + min(self.items - 1, int(self.rng.expovariate(4.0 / self.items)))  # a popular head
            self.sent += 1
            out.append(
                {
                    "event_id": f"soak-{self.sent}",
                    "type": "click" if self.rng.random() < 0.1 else "view",
                    "user_id": f"soak-u{user}",
                    "session_id": f"soak-u{user}-{int(now_s // 60)}",
                    "item_id": f"soak-i{item}",
                    "ts": int(now_s * 1000),
                }
            )
        return out


def rss_by_service(stack: LocalStack) -> dict[str, int]:
    out = {}
    assert stack.supervisor is not None
    for child in stack.supervisor.status():
        try:
            p = psutil.Process(child["pid"])
            out[child["name"]] = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except (psutil.Error, TypeError):
            out[child["name"]] = 0
    return out


def growth_per_10min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), as % of their mean per 10 minutes."""
    if len(ts) < 3:
        return float("nan")
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var if var else 0.0
    return slope * 600 / my * 100 if my else float("nan")


def run(
    minutes: float = 30.0,
    rate: float = 200.0,
    sample_s: float = 60.0,
    users: int = 2_000,
    items: int = 400,
    user_churn: float = 5.0,
    item_churn: float = 0.5,
    ttl_s: int = 60,
    warmup_s: float | None = None,
    state_dir: Path | None = None,
    quiet: bool = False,
) -> dict:
    """Run the soak; returns the samples and the figures it printed."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    for name in ("USER_TTL_S", "ITEM_TTL_S", "SESSION_TTL_S", "QUARANTINE_TTL_S", "TOMBSTONE_TTL_S"):
        os.environ[f"STREAMREC_FEATURE_{name}"] = str(ttl_s)  # the children read the same
    tmp = Path(state_dir or tempfile.mkdtemp(prefix="streamrec-soak-"))
    s = Settings(state_dir=tmp, http={"port": free_port()}, api={"rate_limit_per_s": 0}, cockpit={"sample_s": 5.0})
    warmup = warmup_s if warmup_s is not None else max(3 * ttl_s, minutes * 60 / 3)
    load = Load(users, items)
    samples: list[Sample] = []
    with LocalStack(s, metrics_base_port=0) as stack, httpx.Client(base_url=stack.base_url, timeout=15) as http:
        r = connect(stack.settings)
        started = time.monotonic()
        while True:  # the first catalog, once the API answers
            try:
                if http.post("/catalog", json=[load.item_op(k) for k in range(items)]).status_code == 202:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 300:
                raise TimeoutError("serving did not accept the catalog")
            time.sleep(0.5)
        stack.wait_ready(timeout_s=600, min_items=items // 2)
        say(
            f"stack ready in {time.monotonic() - started:.0f} s; soak {minutes} min at {rate:.0f} events/s, "
            f"{users} users / {items} items active, churn {user_churn}/s users {item_churn}/s items, TTL {ttl_s} s"
        )
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while True:
                fams = memory.audit(r, stack.settings.redis.prefix)
                samples.append(
                    Sample(
                        time.monotonic() - t0,
                        load.sent,
                        memory.used_memory(r),
                        sum(u.bytes for u in fams.values()),
                        fams,
                        rss_by_service(stack),
                    )
                )
                x = samples[-1]
                say(
                    f"  t={x.t_s / 60:5.1f} min events={x.events:8d} redis={x.used_memory / 2**20:6.1f} MiB "
                    f"users={_keys(fams, 'user'):6d} items={_keys(fams, 'item'):5d} "
                    f"sessions={_keys(fams, 'session'):6d} "
                    + " ".join(f"{k}={v / 2**20:.0f}M" for k, v in x.rss.items())
                )
                if stop.wait(sample_s):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_start, tick, next_item = time.monotonic(), 0.25, 0.0
        while (now := time.monotonic()) - t_start < minutes * 60:
            elapsed = now - t_start
            due = int(elapsed * rate) - (load.sent - 0)
            if due > 0:
                try:
                    if http.post("/events", json=load.events(min(due, 1000), time.time())).status_code != 202:
                        load.failed += 1
                except httpx.HTTPError:
                    load.failed += 1
            load.u0 = elapsed * user_churn
            while next_item <= elapsed * item_churn:  # one new item in, the oldest one out
                k = load.i0 + items
                ops = [load.item_op(k), {"op": "delete", "item_id": f"soak-i{load.i0}", "ts": int(time.time() * 1000)}]
                load.i0 += 1
                next_item += 1
                try:
                    http.post("/catalog", json=ops)
                except httpx.HTTPError:
                    load.failed += 1
            for _ in range(2):  # reads: served rows in Redis, impressions for the learner
                try:
                    user = f"soak-u{int(load.u0) + load.rng.randrange(users)}"
                    http.get("/recommend", params={"user_id": user, "k": 10})
                    http.get("/search", params={"q": load.rng.choice(WORDS), "k": 10, "user_id": user})
                except httpx.HTTPError:
                    pass
            time.sleep(max(0.0, tick - (time.monotonic() - now)))
        stop.set()
        sampler.join()
        final = memory.audit(r, stack.settings.redis.prefix)
    return report(samples, final, warmup, load, say)


def _keys(fams: dict[str, memory.FamilyUsage], name: str) -> int:
    return fams[name].keys if name in fams else 0


def report(samples: list[Sample], final: dict[str, memory.FamilyUsage], warmup: float, load: Load, say) -> dict:
    after = [x for x in samples if x.t_s >= warmup] or samples[-3:]
    ts = [x.t_s for x in after]
    growth = {"redis used_memory": growth_per_10min(ts, [x.used_memory for x in after])}
    growth["redis key bytes"] = growth_per_10min(ts, [x.key_bytes for x in after])
    for name in after[-1].rss:
        growth[f"rss {name}"] = growth_per_10min(ts, [x.rss.get(name, 0) for x in after])
    per = memory.per_entity(final)
    say(
        f"\nevents sent {load.sent}, failed posts {load.failed}; growth after warm-up ({warmup / 60:.1f} min, "
        f"{len(after)} samples), % per 10 min:"
    )
    for k, v in growth.items():
        say(f"  {k:28s} {v:+7.2f} %")
    say("bytes per active " + ", ".join(f"{k}: {v:,.0f} B" for k, v in per.items()))
    last = after[-1]
    users = _keys(final, "user")
    if users:
        say(f"redis used_memory per active user (all of Redis / users): {last.used_memory / users:,.0f} B")
    say("key families at the end (keys, bytes):")
    for name, use in sorted(final.items(), key=lambda kv: -kv[1].bytes):
        say(f"  {name:18s} {use.keys:8d} {use.bytes:12,d}")
    problems = memory.violations(final)
    say("unbounded keys: " + ("; ".join(problems) if problems else "none"))
    return {
        "samples": samples,
        "growth": growth,
        "per_entity": per,
        "violations": problems,
        "final": final,
        "sent": load.sent,
        "failed": load.failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="events per second")
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--users", type=int, default=2_000, help="active users at any time")
    ap.add_argument("--items", type=int, default=400, help="active catalog items at any time")
    ap.add_argument("--user-churn", type=float, default=5.0, help="users retired (and new ones) per second")
    ap.add_argument("--item-churn", type=float, default=0.5, help="items deleted (and new ones upserted) per second")
    ap.add_argument("--ttl-s", type=int, default=60, help="feature TTLs for the run (>= 60)")
    ap.add_argument("--warmup-min", type=float, default=None, help="default: max(3 x TTL, a third of the run)")
    a = ap.parse_args()
    run(
        a.minutes,
        a.rate,
        a.sample_s,
        a.users,
        a.items,
        a.user_churn,
        a.item_churn,
        a.ttl_s,
        a.warmup_min * 60 if a.warmup_min is not None else None,
    )


if __name__ == "__main__":
    main()
