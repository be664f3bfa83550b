"""Serving under load: wrk against the running embedded stack with the Home Depot catalogue.

The stack (Tansu + Redis + the four services as processes, launcher.stack.LocalStack) indexes
Home Depot titles (``--products N`` for a slice), a set of shoppers gets a click history, then,
while events arrive at ``--events-rate``/s and catalog changes at ``--catalog-rate``/s, wrk offers
a mix of GET /search (real Home Depot search terms in random order), /recommend (users with
history) and /similar (indexed items) at each step of ``--steps`` QPS. Printed per step and route:
achieved QPS, p50/p90/p99, errors, CPU per process; first a single-client baseline (wrk, one
connection, unpaced) in the same run, and at the end the step where p99 crosses ``--target-ms``.

The budget: each route alone, one client, on the idle stack: serving's CPU milliseconds per request
(its processes' CPU seconds ÷ requests) split by stage (``streamrec_serving_stage_cpu_seconds_total``
on /metrics, ``serving/stages.py``; "outside the stages" = HTTP, routing, threads), beside each
stage's floor measured alone in this process in the same run (the query encoder serving uses, a
tantivy query, a FAISS top-100, one pipelined Redis round trip, the head over a page of rows, the
JSON of a page) and the ratio to the floors' sum.

wrk paces requests with a per-thread schedule in its Lua script (``delay()``: no request starts
before its slot; a connection that is still waiting for its answer delays the next one, so a
saturated server shows as achieved QPS below the offered rate). Latency per route is measured in
the script (LuaJIT ffi clock), one connection per wrk thread so request and response pair up.

    python -m bench.serving --products 5000 --steps 50,100,150,200,300 --duration 20 [--workers 2] [--profile]
"""

from __future__ import annotations

import argparse
import atexit
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil

from launcher.embedded import free_port
from launcher.redis_cluster import LocalRedisCluster
from launcher.stack import LocalStack
from streamrec.datasets import homedepot
from streamrec.settings import Settings
from streamrec.store import connect

ROUTES = ("search", "recommend", "similar")

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } sr_ts; int clock_gettime(int, sr_ts *); ]]
local ts = ffi.new("sr_ts")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local paths = dofile("__PATHS__")
local interval = __INTERVAL__   -- seconds between two requests of this thread; 0 = unpaced
local threads = {}
lat = {}            -- per thread: "route ms status" strings
local route, started, next_slot
math.randomseed(__SEED__)
setup = function(thread) thread:set("id", #threads + 1); table.insert(threads, thread) end
init = function(args) math.randomseed(__SEED__ + (id or 0)); next_slot = now() + math.random() * interval end
delay = function()
  if interval <= 0 then return 0 end
  next_slot = next_slot + interval
  local wait = next_slot - now()
  if wait < 0 then next_slot = now(); return 0 end
  return wait * 1000
end
request = function()
  local p = paths[math.random(#paths)]
  route = p[1]
  started = now()
  return wrk.format("GET", p[2])
end
response = function(status, headers, body)
  lat[#lat + 1] = route .. " " .. string.format("%.3f", (now() - started) * 1000) .. " " .. status
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKSUM %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
  for _, t in ipairs(threads) do
    for _, line in ipairs(t:get("lat")) do io.write("LAT ", line, "\n") end
  end
end
"""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def request_paths(queries: list[str], users: list[str], items: list[str], mix: dict[str, float], n: int) -> list:
    rng = random.Random(5)
    out = []
    for _ in range(n):
        route = rng.choices(list(mix), weights=list(mix.values()))[0]
        if route == "search":
            path = "/search?" + urllib.parse.urlencode({"q": rng.choice(queries), "k": 10})
        elif route == "recommend":
            path = "/recommend?" + urllib.parse.urlencode({"user_id": rng.choice(users), "k": 10})
        else:
            path = f"/similar/{urllib.parse.quote(rng.choice(items))}?k=10"
        out.append((route, path))
    return out


def write_paths(path: Path, paths: list) -> None:
    def lua_str(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    path.write_text("return {\n" + ",\n".join(f"{{{lua_str(r)}, {lua_str(p)}}}" for r, p in paths) + "\n}\n")


def run_wrk(base_url: str, tmp: Path, paths_file: Path, qps: float, connections: int, duration_s: float) -> dict:
    """Offered ``qps`` (0 = unpaced) over ``connections`` connections, one per wrk thread."""
    interval = connections / qps if qps > 0 else 0.0
    script = tmp / f"load_{int(qps)}_{connections}.lua"
    script.write_text(
        LUA.replace("__PATHS__", str(paths_file))
        .replace("__INTERVAL__", repr(interval))
        .replace("__SEED__", str(int(qps) + connections))
    )
    cmd = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{max(1, int(duration_s))}s", "--timeout", "5s"]
    out = subprocess.run([*cmd, "-s", str(script), base_url], capture_output=True, text=True, check=True).stdout
    lat: dict[str, list[float]] = {r: [] for r in ROUTES}  # answered (2xx)
    shed: dict[str, list[float]] = {r: [] for r in ROUTES}  # 503 (shed at once, or not ready)
    bad: dict[str, int] = dict.fromkeys(ROUTES, 0)  # any other status
    summary = {}
    for line in out.splitlines():
        if line.startswith("LAT "):
            _, route, ms, status = line.split()
            if status.startswith("2"):
                lat[route].append(float(ms))
            elif status == "503":
                shed[route].append(float(ms))
            else:
                bad[route] += 1
        elif line.startswith("WRKSUM "):
            req, dur_us, *errs = (int(x) for x in line.split()[1:])
            connect, read, write, status, timeout = errs  # wrk counts a non-2xx/3xx answer as a "status" error
            summary = {"requests": req, "seconds": dur_us / 1e6, "socket_errors": connect + read + write + timeout}
    return {"lat": lat, "shed": shed, "bad": bad, **summary}


class Background:
    """Events at ``events_rate``/s (POST /events, lists of 100) and single catalog upserts at
    ``catalog_rate``/s (POST /catalog, one object each) while wrk runs."""

    def __init__(self, base_url: str, users: list[str], items: list[str], titles: list[str], ev: float, cat: float):
        self.base_url, self.users, self.items, self.titles = base_url, users, items, titles
        self.ev, self.cat = ev, cat
        self.stop = threading.Event()
        self.sent = {"events": 0, "catalog": 0, "errors": 0}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._events, self._catalog)]
        for t in self.threads:
            t.start()

    def _paced(self, rate: float, batch: int, send) -> None:
        rng = random.Random()
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            next_t = time.monotonic()
            while not self.stop.is_set() and rate > 0:
                try:
                    send(http, rng, batch)
                except httpx.HTTPError:
                    self.sent["errors"] += 1
                next_t += batch / rate
                time.sleep(max(0.0, next_t - time.monotonic()))

    def _events(self) -> None:
        def send(http, rng, n):
            now = int(time.time() * 1000)
            body = [
                {
                    "event_id": uuid.uuid4().hex,
                    "type": rng.choices(["view", "click", "add_to_cart"], weights=[6, 3, 1])[0],
                    "user_id": rng.choice(self.users),
                    "item_id": rng.choice(self.items),
                    "ts": now,
                }
                for _ in range(n)
            ]
            r = http.post("/events", json=body)
            self.sent["events" if r.status_code == 202 else "errors"] += n

        self._paced(self.ev, max(1, min(100, int(self.ev / 10) or 1)), send)

    def _catalog(self) -> None:
        def send(http, rng, n):
            item = rng.choice(self.items)
            op = {"op": "upsert", "item_id": item, "ts": int(time.time() * 1000), "title": rng.choice(self.titles)}
            r = http.post("/catalog", json=op)
            self.sent["catalog" if r.status_code == 202 else "errors"] += 1

        self._paced(self.cat, 1, send)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def processes(stack: LocalStack) -> dict[str, psutil.Process]:
    procs = {}
    for child in stack.supervisor._children if stack.supervisor else []:  # noqa: SLF001
        if child.proc is not None:
            procs[child.spec.name] = psutil.Process(child.proc.pid)
    for p in psutil.Process().children(recursive=True):
        name = p.name()
        if "tansu" in name:
            procs["tansu"] = p
        elif "redis" in name:  # one Redis, or the masters of a local cluster (--cluster)
            procs[f"redis-{sum(n.startswith('redis-') for n in procs)}"] = p
    return procs


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds per process; the serving workers also summed as "serving" when there are several."""
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    workers = [v for n, v in out.items() if n.startswith("serving-")]
    if workers:
        out["serving"] = sum(workers)
    out["redis"] = sum(v for n, v in out.items() if n.startswith("redis-"))
    return out


def rss_mib(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """Resident set size per process (each serving worker holds its own index, lexical index and encoder)."""
    out = {}
    for name, p in procs.items():
        try:
            out[name] = p.memory_info().rss / 2**20
        except psutil.Error:
            out[name] = float("nan")
    return out


STAGES = ("filter", "lexical", "encode", "dense", "fusion", "session", "memory", "features", "head", "diversity")
STAGES += ("respond", "log", "facets")  # serving/stages.py's names, in request order


def stage_cpu(urls: list[str]) -> dict[tuple[str, str], float]:
    """(route, stage) → CPU seconds so far, summed over the serving processes' /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for url in urls:
        text = httpx.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "streamrec_serving_stage_cpu_seconds_total":
                    key = (sample.labels["route"], sample.labels["stage"])
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def floors(s: Settings, ops: list, queries: list[str]) -> dict[str, float]:
    """Each stage's cost alone, p50 ms on one thread, measured here in the same run."""
    import torch

    from serving.lexical import LexicalIndex
    from streamrec.query_encoder import QueryEncoder
    from streamrec.ranking import N_FEATURES, RankingHead
    from streamrec.schemas import ResultItem, ResultList
    from streamrec.vector_index import LiveIndex
    from streamrec.vector_index.live import ItemMeta

    torch.set_num_threads(1)
    rng = random.Random(11)
    sample = rng.sample(queries, min(200, len(queries)))

    def p50(fn, args) -> float:
        times = []
        for a in args:
            t0 = time.perf_counter()
            fn(a)
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))

    out = {}
    encoder = QueryEncoder.from_settings(s.replace(encoder={"query_cache": 0}))
    encoder.encode_query("warm up")
    out["encode"] = p50(encoder.encode_query, sample)
    lexical = LexicalIndex()
    lexical.apply({op.item_id: ItemMeta(op.title, op.category, op.price, op.description) for op in ops})
    lexical.refresh()
    out["lexical"] = p50(lambda q: lexical.search(q, s.serving.candidates), sample)
    index = LiveIndex(encoder.dim, factory=s.index.factory, use_gpu="never")
    vecs = np.random.default_rng(0).standard_normal((len(ops), encoder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index.apply([(op.item_id, v, ItemMeta(op.title)) for op, v in zip(ops, vecs, strict=True)], [])
    out["dense"] = p50(lambda v: index.search(v[None, :], s.serving.candidates), vecs[:200])
    r = connect(s)  # on a cluster, the pipeline below is one round trip per master

    def round_trip(_):
        pipe = r.pipeline(transaction=False)
        for j in range(10):
            pipe.hgetall(f"bench-floor:{j}")
        pipe.execute()

    out["features"] = p50(round_trip, range(200))
    head = RankingHead()
    rows = np.random.default_rng(1).standard_normal((10, N_FEATURES)).astype(np.float32)
    out["head"] = p50(lambda _: (head.predict(rows), head.explain(rows)), range(200))
    page = ResultList(
        request_id="0" * 32,
        items=[
            ResultItem(item_id=op.item_id, score=0.5, title=op.title, reasons=["title matches 'a'", "ranker v1"])
            for op in ops[:10]
        ],
        model_version=1,
        index_version=1,
        variant="full",
    )
    out["respond"] = p50(lambda _: page.model_dump_json(), range(200))
    lexical.stop()
    return out


# the floors a route's request needs at least
ROUTE_FLOORS = {
    "search": ("encode", "lexical", "dense", "features", "head", "respond"),
    "recommend": ("features", "respond"),
    "similar": ("dense", "features", "head", "respond"),
}


def profile(pid: int, seconds: int, out: Path) -> list[tuple[str, float]]:
    """py-spy record (collapsed stacks) of the serving process; top frames by inclusive share."""
    spy = shutil.which("py-spy") or next((p for p in ("/tmp/pyspy/bin/py-spy",) if Path(p).exists()), None)
    if spy is None:
        return [("py-spy not installed", 0.0)]
    subprocess.run(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"],
        capture_output=True,
        check=False,
    )
    if not out.exists():
        return [("py-spy wrote nothing (ptrace not allowed?)", 0.0)]
    total, inclusive, self_time = 0, {}, {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
    top = sorted(inclusive.items(), key=lambda kv: -kv[1])
    interesting = [(f, n / total) for f, n in top if "(" in f and not f.startswith(("<module>", "run (", "_bootstrap"))]
    selfs = sorted(self_time.items(), key=lambda kv: -kv[1])[:12]
    return interesting[:25] + [("SELF " + f, n / total) for f, n in selfs]


BUDGET: dict[str, float] = {}  # route → serving CPU ms per request, from budget()


def fmt(ms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in ms.items())


def budget(stack, procs, metrics_urls: list[str], tmp: Path, queries, users, items, seconds: float) -> None:
    """Each route alone, one client, unpaced: serving CPU ms per request and its split by stage."""
    print(f"CPU budget per request (each route alone, 1 client, {seconds:g}s, idle stack):", flush=True)
    for route in ROUTES:
        paths = request_paths(queries, users, items, {route: 1.0}, 5000)
        paths_file = tmp / f"paths_{route}.lua"
        write_paths(paths_file, paths)
        # what serving spends with no request at all (followers, commits, merges), to subtract
        # (and Redis, which the other services keep busy too)
        idle_before, idle_wall = cpu_seconds(procs), time.monotonic()
        time.sleep(2.0)
        idle_after, idle_s = cpu_seconds(procs), time.monotonic() - idle_wall
        idle_cores = (idle_after["serving"] - idle_before["serving"]) / idle_s
        redis_idle_cores = (idle_after["redis"] - idle_before["redis"]) / idle_s
        before, stages_before, wall = cpu_seconds(procs), stage_cpu(metrics_urls), time.monotonic()
        r = run_wrk(stack.base_url, tmp, paths_file, 0, 1, seconds)
        used, stages, wall = cpu_seconds(procs), stage_cpu(metrics_urls), time.monotonic() - wall
        n = max(1, len(r["lat"][route]))
        background_ms = idle_cores * wall * 1000 / n
        serving_ms = (used["serving"] - before["serving"]) * 1000 / n - background_ms
        redis_us = ((used["redis"] - before["redis"]) - redis_idle_cores * wall) * 1e6 / n
        split = {
            st: (stages.get((route, st), 0.0) - stages_before.get((route, st), 0.0)) * 1000 / n
            for st in STAGES
            if (route, st) in stages
        }
        outside = serving_ms - sum(split.values())
        BUDGET[route] = serving_ms
        print(
            f"  {route:<9} {n} requests, p50 {pct(r['lat'][route], 50):.1f} ms: "
            f"serving CPU {serving_ms:.2f} ms/request = " + fmt(split) + f", outside the stages {outside:.2f}; "
            f"Redis CPU {redis_us:.0f} µs/request"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=54_667, help="Home Depot titles indexed (a slice for speed)")
    ap.add_argument("--steps", default="50,100,150,200,300", help="offered QPS per step")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (one thread each)")
    ap.add_argument("--events-rate", type=float, default=1000.0)
    ap.add_argument("--catalog-rate", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=300, help="shoppers given a click history first")
    ap.add_argument("--mix", default="search=0.6,recommend=0.25,similar=0.15")
    ap.add_argument("--target-ms", type=float, default=25.0)
    ap.add_argument("--profile", action="store_true", help="py-spy the serving process during the 100 QPS step")
    ap.add_argument("--workers", type=int, default=1, help="serving processes on the port (serving.workers)")
    ap.add_argument("--budget-seconds", type=float, default=8.0, help="seconds per route of the CPU budget phase")
    ap.add_argument("--cluster", type=int, default=0, help="N > 0: a local Redis Cluster of N masters, N keyspaces")
    args = ap.parse_args()

    base = Settings()
    data_dir = base.require_data_dir()
    tmp = Path(tempfile.mkdtemp(prefix="streamrec-serving-bench-"))
    s = base.replace(
        state_dir=tmp / "state",
        kafka={"bootstrap": ""},
        redis={"url": ""},
        http={"port": free_port()},
        serving={"workers": args.workers},
    )
    cluster = None
    if args.cluster:
        cluster = LocalRedisCluster(tmp / "cluster", masters=args.cluster, replicas=0, persistent=False).start()
        atexit.register(cluster.stop)  # also when the run fails
        s = s.replace(redis={"url": cluster.url, "cluster": True, "shards": args.cluster})
    mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    steps = [float(x) for x in args.steps.split(",")]
    ops = list(homedepot.catalog(data_dir, limit=args.products))
    extra = [op.title for op in homedepot.catalog(data_dir, limit=args.products + 2000)][args.products :]
    queries = list(homedepot.relevance_labels(data_dir))
    items = [op.item_id for op in ops]
    users = [f"shopper-{n}" for n in range(args.users)]
    print(
        f"serving bench: {len(ops)} Home Depot titles, {len(queries)} real queries, steps {steps} QPS × "
        f"{args.duration:g}s, {args.connections} wrk connections, events {args.events_rate:g}/s, catalog "
        f"{args.catalog_rate:g}/s, mix {mix}, {args.workers} serving worker(s), query encoder "
        f"{s.encoder.query_runtime}; Redis: {f'a cluster of {args.cluster} masters' if cluster else 'one'}; "
        f"load average before start {psutil.getloadavg()}",
        flush=True,
    )
    with (
        LocalStack(s, metrics_base_port=free_port()) as stack,
        httpx.Client(base_url=stack.base_url, timeout=30) as http,
    ):
        t0 = time.monotonic()
        for start in range(0, len(ops), 1000):
            body = [op.model_dump(exclude_none=True) for op in ops[start : start + 1000]]
            while True:
                try:
                    if http.post("/catalog", json=body).status_code == 202:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        stack.wait_ready(timeout_s=3600, min_items=len(ops))
        print(f"catalogue indexed in {time.monotonic() - t0:.0f}s ({len(ops) / (time.monotonic() - t0):.0f} items/s)")
        rng = random.Random(3)
        history = [
            {
                "event_id": uuid.uuid4().hex,
                "type": "click",
                "user_id": u,
                "item_id": rng.choice(items),
                "ts": int(time.time() * 1000),
            }
            for u in users
            for _ in range(5)
        ]
        for start in range(0, len(history), 1000):
            http.post("/events", json=history[start : start + 1000]).raise_for_status()
        time.sleep(3)
        paths = request_paths(queries, users, items, mix, 20_000)
        paths_file = tmp / "paths.lua"
        write_paths(paths_file, paths)
        procs = processes(stack)
        serving_pid = procs["serving" if "serving" in procs else "serving-0"].pid
        worker_ports = [p for n, p in stack.metrics_ports.items() if n.startswith("serving-")]
        metrics_urls = [f"http://127.0.0.1:{p}/metrics" for p in worker_ports] or [f"{stack.base_url}/metrics"]

        def step(label: str, qps: float, conns: int, prof: bool = False) -> dict:
            before, wall = cpu_seconds(procs), time.monotonic()
            prof_thread = None
            findings: list = []
            if prof:

                def _prof() -> None:
                    findings.extend(profile(serving_pid, int(args.duration * 0.8), tmp / "serving.pyspy"))

                prof_thread = threading.Thread(target=_prof, daemon=True)
                prof_thread.start()
            r = run_wrk(stack.base_url, tmp, paths_file, qps, conns, args.duration)
            if prof_thread:
                prof_thread.join()
            used = cpu_seconds(procs)
            wall = time.monotonic() - wall
            cpu = {n: (used[n] - before[n]) / wall for n in used}
            secs = r.get("seconds") or args.duration
            print(f"{label}: achieved {r.get('requests', 0) / secs:6.1f} QPS, socket errors {r.get('socket_errors')}")
            for route in ROUTES:
                xs, shed = r["lat"][route], r["shed"][route]
                print(
                    f"  {route:<9} answered {len(xs):5d} {len(xs) / secs:6.1f} QPS  p50 {pct(xs, 50):7.1f} ms  "
                    f"p90 {pct(xs, 90):7.1f} ms  p99 {pct(xs, 99):7.1f} ms · shed (503) {len(shed)}"
                    + (f" p99 {pct(shed, 99):.1f} ms" if shed else "")
                    + f" · other errors {r['bad'][route]}"
                )
            print(
                "  CPU (cores): "
                + ", ".join(f"{n} {c:.2f}" for n, c in cpu.items())
                + f"; load {psutil.getloadavg()[0]:.1f}"
            )
            print("  resident memory (MiB): " + ", ".join(f"{n} {m:.0f}" for n, m in rss_mib(procs).items()))
            if findings:
                print("  py-spy on serving (share of samples, inclusive; SELF = where the CPU is spent):")
                for f, share in findings:
                    print(f"    {share * 100:5.1f}%  {f[:150]}")
            return r

        print("baseline (idle stack: no events, no catalog changes): 1 client, unpaced", flush=True)
        step("single client", 0, 1)
        budget(stack, procs, metrics_urls, tmp, queries, users, items, args.budget_seconds)
        floor = floors(stack.settings, ops, queries)
        print("  stage floors, measured alone in this process (p50 ms, one thread): " + fmt(floor))
        for route, needs in ROUTE_FLOORS.items():
            total = sum(floor[n] for n in needs)
            spent = BUDGET.get(route)
            ratio = f", ×{spent / total:.2f} of the floors" if spent else ""
            measured = spent or float("nan")
            print(f"  {route:<9} floors {' + '.join(needs)} = {total:.2f} ms; measured CPU {measured:.2f} ms{ratio}")
        bg = Background(
            stack.base_url, users, items, extra or [op.title for op in ops], args.events_rate, args.catalog_rate
        )
        time.sleep(2)
        crossed: dict[str, float | None] = dict.fromkeys(ROUTES)
        try:
            print(f"with events {args.events_rate:g}/s and catalog changes {args.catalog_rate:g}/s:", flush=True)
            step("single client under writes", 0, 1)
            for qps in steps:
                r = step(f"offered {qps:g} QPS", qps, args.connections, prof=args.profile and qps == 100)
                for route in ROUTES:
                    if crossed[route] is None and pct(r["lat"][route], 99) > args.target_ms:
                        crossed[route] = qps
        finally:
            bg.close()
        print(f"background sent: {bg.sent}")
        for route in ROUTES:
            c = crossed[route]
            print(
                f"{route:<9} p99 > {args.target_ms:g} ms first at "
                + (f"{c:g} QPS offered" if c is not None else f"none of the steps (≤ {steps[-1]:g} QPS)")
            )
    print(json.dumps({"load_average_end": psutil.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
