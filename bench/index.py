"""Index benchmark on the real catalogues (Home Depot, Instacart) in STREAMREC_DATA_DIR.

Parts, each against a baseline measured in the same run, medians quoted:
  1. encoder throughput fp32 vs int8 (CPU) and what int8 costs: recall@10 of int8 neighbours
     against fp32 neighbours (Home Depot: real search terms; Instacart: item → similar items);
  2. catalog change → searchable latency through the real path (embedded Tansu broker,
     index_updater service, a serving-side IndexReplica), idle vs. a steady stream of updates
     and queries (target p99 ≤ 2 s on CPU);
  bulk: a Home Depot import through the index updater's bulk path (items/s vs the raw encoder on
     every core in the same run), single upserts during it (→ searchable p50/p99), and what the
     item-text cut (encoder.item_max_tokens) costs in neighbour recall on Amazon items;
  3. ANN recall@10 and single-query QPS of Flat / IVF / HNSW factories vs exact search,
     plus HNSW with 10 % of the items deleted (tombstones) to show none comes back.
Every line names its FAISS factory string (or encoder model id). Subsets keep it to a few minutes
on 2 cores:  python -m bench.index [--items 600] [--ann-items 4000] [--load-seconds 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from index_updater import metrics as updater_metrics  # noqa: E402
from index_updater import service  # noqa: E402
from launcher.embedded import EmbeddedKafka  # noqa: E402
from streamrec import bus  # noqa: E402
from streamrec.datasets import homedepot, instacart  # noqa: E402
from streamrec.encoder import Encoder, item_text  # noqa: E402
from streamrec.schemas import CatalogOp, encode  # noqa: E402
from streamrec.settings import Settings  # noqa: E402
from streamrec.vector_index import IndexReplica, ItemMeta, LiveIndex, VectorRecord, encode_record  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    scores = queries @ items.T
    if skip_self:
        np.fill_diagonal(scores[:, : len(queries)], -np.inf)
    return np.argsort(-scores, axis=1)[:, :k]


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


# --- 1. encoder ---------------------------------------------------------------------------------


def encoder_part(s: Settings, n_items: int, rounds: int) -> tuple[Encoder, dict]:
    """fp32 on CPU is the baseline; int8 on CPU always; fp32/fp16/bf16 on CUDA when torch sees it."""
    import torch

    encoders = [
        Encoder(s.encoder.model_dir, device="cpu", precision="fp32"),
        Encoder(s.encoder.model_dir, device="cpu", precision="int8"),
    ]
    if torch.cuda.is_available():
        encoders += [Encoder(s.encoder.model_dir, device="cuda", precision=p) for p in ("fp32", "fp16", "bf16")]
    names = [f"{e.model_id}@{e.device}" for e in encoders]
    template = s.encoder.item_text_template
    catalogs = {
        "homedepot": [item_text(op, template) for op in homedepot.catalog(s.data_dir, limit=n_items)],
        "instacart": [item_text(op, template) for op in instacart.catalog(s.data_dir, limit=n_items)],
    }
    terms = list(homedepot.relevance_labels(s.data_dir))[:300]
    say(
        f"[1/4] encoder: {n_items} items per catalogue, {rounds} interleaved rounds, torch threads "
        f"{torch.get_num_threads()}"
    )
    rates: dict[str, list[float]] = {n: [] for n in names}
    sample = catalogs["homedepot"][:96] + catalogs["instacart"][:96]
    for r in range(rounds):
        for name, enc in zip(names, encoders, strict=True):
            t0 = time.perf_counter()
            enc.encode(sample)
            rates[name].append(len(sample) / (time.perf_counter() - t0))
        say(f"      round {r + 1}: " + ", ".join(f"{m} {v[-1]:.0f} items/s" for m, v in rates.items()))
    base = statistics.median(rates[names[0]])
    for m, v in rates.items():
        say(
            f"encoder {m:<28} items/s median {statistics.median(v):7.1f}  "
            f"(×{statistics.median(v) / base:.2f} vs {names[0]} baseline)"
        )
    vectors = {
        (name, c): enc.encode(texts) for name, enc in zip(names, encoders, strict=True) for c, texts in catalogs.items()
    }
    queries = {name: enc.encode(terms) for name, enc in zip(names, encoders, strict=True)}
    for name in names[1:]:
        for c in catalogs:
            f_items, o_items = vectors[(names[0], c)], vectors[(name, c)]
            if c == "homedepot":
                f_q, o_q, what, skip = queries[names[0]], queries[name], f"{len(terms)} search terms", False
            else:
                f_q, o_q, what, skip = f_items[:300], o_items[:300], "300 items → similar items", True
            recall = overlap_at_k(exact_topk(f_items, f_q, 10, skip), exact_topk(o_items, o_q, 10, skip))
            cos = float(np.mean(np.sum(f_items * o_items, axis=1)))
            say(
                f"encoder {name:<28} factory=Flat {c:<9} recall@10 of its neighbours vs {names[0]} "
                f"{recall:.3f} ({what}); mean cos to baseline {cos:.3f}"
            )
    return encoders[0], {
        "hd_items": catalogs["homedepot"],
        "hd_vectors": vectors[(names[0], "homedepot")],
        "hd_int8": vectors[(names[1], "homedepot")],
        "int8": encoders[1],
        "terms": terms,
    }


# --- 2. freshness -----------------------------------------------------------------------------


class Watcher:
    """Polls the serving replica for pending changes; latency = first time the change is visible."""

    def __init__(self, replica: IndexReplica):
        self.replica = replica
        self.pending: dict[str, tuple[float, str | None]] = {}  # item → (sent at, new title | None = deleted)
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def expect(self, item_id: str, title: str | None, sent: float) -> None:
        with self.lock:
            self.pending[item_id] = (sent, title)

    def _visible(self, item_id: str, title: str | None) -> bool:
        if title is None:
            return item_id not in self.replica.index
        meta = self.replica.index.meta(item_id)
        return meta is not None and meta.title == title

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            with self.lock:
                done = [i for i, (_, t) in self.pending.items() if self._visible(i, t)]
                for i in done:
                    self.latencies.append(now - self.pending.pop(i)[0])
            time.sleep(0.005)

    def drain(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.pending)


def freshness_part(
    s0: Settings, fp32: Encoder, data: dict, load_s: float, update_rate: float, query_rate: float, factory: str
) -> None:
    say(f"[2/4] freshness: factory={factory}, embedded Tansu + index_updater + serving replica")
    items, vecs, terms = data["hd_items"], data["hd_vectors"], data["terms"]
    n_base = len(items) // 2
    pool = items[n_base:]  # unused titles: each update changes an item's text, so it is re-embedded
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedKafka(Path(tmp) / "tansu") as broker:
        bus.wait_for_broker(broker.bootstrap)
        tag = uuid.uuid4().hex[:6]
        s = s0.replace(
            state_dir=Path(tmp) / "state",
            kafka={"bootstrap": broker.bootstrap},
            index={"factory": factory, "snapshot_every_s": 10.0},
            topic={"catalog": f"b{tag}.catalog", "vectors": f"b{tag}.vectors", "dlq": f"b{tag}.dlq"},
            encoder={"precision": "fp32"},
        )
        bus.ensure_topics(s)
        producer = bus.make_producer(s)
        for n in range(n_base):  # an existing index: its vectors are already on the topic
            producer.send(
                s.topic.vectors,
                key=f"hd{n}",
                value=encode_record(
                    VectorRecord(f"hd{n}", vector=vecs[n], meta=ItemMeta(title=items[n]), model_id=fp32.model_id)
                ),
            )
        producer.flush()
        stop = threading.Event()
        updater = threading.Thread(target=service.run, args=(s, stop), kwargs={"encoder": fp32}, daemon=True)
        updater.start()
        replica = IndexReplica(s, fp32.dim, from_snapshot=False)
        replica.start()
        while len(replica.index) < n_base:
            time.sleep(0.1)
        watcher = Watcher(replica)
        queries = Encoder(s.encoder.model_dir, precision="fp32")  # serving's own encoder, as in production
        ids = [f"hd{n}" for n in range(n_base)]

        def change(n: int) -> None:
            item_id = rng.choice(ids)
            sent = time.time()
            if n % 10 == 9 and item_id in replica.index:
                op = CatalogOp(op="delete", item_id=item_id, ts=int(sent * 1000))
                title = None
            else:
                title = f"{pool[n % len(pool)]} #{n}"
                op = CatalogOp(op="upsert", item_id=item_id, ts=int(sent * 1000), title=title)
            watcher.expect(item_id, title, sent)
            producer.send(s.topic.catalog, key=item_id, value=encode(op))
            producer.flush()

        # warm-up (updater joins its group, loads its replica) and the idle baseline: one change at a time
        change(0)
        watcher.drain(60)
        watcher.latencies.clear()
        for n in range(1, 21):
            change(n)
            watcher.drain(30)
        idle = list(watcher.latencies)
        say(
            f"fresh  factory={factory:<14} idle baseline  changes {len(idle):4d}  catalog→searchable "
            f"p50 {pct(idle, 50) * 1000:6.0f} ms  p99 {pct(idle, 99) * 1000:6.0f} ms"
        )

        watcher.latencies.clear()
        query_ms: list[float] = []
        search_ms: list[float] = []
        done = threading.Event()

        def query_loop() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                vec = queries.encode([rng.choice(terms)])[0]
                t1 = time.perf_counter()
                replica.index.search(vec, 10)
                search_ms.append((time.perf_counter() - t1) * 1000)
                query_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(max(0.0, 1 / query_rate - (time.perf_counter() - t0)))

        qt = threading.Thread(target=query_loop, daemon=True)
        qt.start()
        t_end, n = time.monotonic() + load_s, 100
        last_report = time.monotonic()
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            change(n)
            n += 1
            if time.monotonic() - last_report > 10:
                say(f"      … {n - 100} changes sent, {len(watcher.latencies)} searchable, {len(query_ms)} queries")
                last_report = time.monotonic()
            time.sleep(max(0.0, 1 / update_rate - (time.monotonic() - t0)))
        left = watcher.drain(30)
        done.set()
        qt.join()
        loaded = watcher.latencies
        say(
            f"fresh  factory={factory:<14} under load      changes {len(loaded):4d} ({update_rate:.0f}/s, "
            f"{query_rate:.0f} queries/s)  catalog→searchable p50 {pct(loaded, 50) * 1000:6.0f} ms  "
            f"p99 {pct(loaded, 99) * 1000:6.0f} ms  (never visible: {left})"
        )
        say(
            f"fresh  factory={factory:<14} queries under writes: {len(query_ms)}; index search alone "
            f"p50 {pct(search_ms, 50):.2f} ms  p99 {pct(search_ms, 99):.2f} ms; with query encoding "
            f"p50 {pct(query_ms, 50):.1f} ms  p99 {pct(query_ms, 99):.1f} ms"
        )
        watcher.stop.set()
        replica.stop()
        stop.set()
        updater.join(30)
        producer.close()


# --- bulk: an import at the compute limit, and live changes during it ----------------------------


def truncation_part(s: Settings, fp32: Encoder, n_items: int) -> None:
    """What cutting item text at encoder.item_max_tokens costs: recall@10 of each item's neighbours
    vs the model's own limit, on Amazon office items (title + category + description)."""
    from streamrec.datasets import amazon18

    texts = [item_text(op, s.encoder.item_text_template) for op in amazon18.catalog(s.data_dir)][:n_items]
    lengths = [len(ids) for ids in fp32.tokenizer(texts)["input_ids"]]
    say(
        f"[bulk] truncation: {len(texts)} Amazon office items, tokens p50 {statistics.median(lengths):.0f} "
        f"max {max(lengths)} (model limit {fp32.max_length}); Home Depot titles are under 64 tokens: no cut"
    )
    t0 = time.perf_counter()
    full = fp32.encode(texts)
    full_rate = len(texts) / (time.perf_counter() - t0)
    truth = exact_topk(full, full, 10, skip_self=True)
    for cut in sorted({64, 128, s.encoder.item_max_tokens} - {0}):
        t0 = time.perf_counter()
        x = fp32.encode(texts, max_length=cut)
        rate = len(texts) / (time.perf_counter() - t0)
        say(
            f"bulk   truncation max_tokens={cut:<4} recall@10 of item→similar neighbours vs uncut "
            f"{overlap_at_k(truth, exact_topk(x, x, 10, skip_self=True)):.3f}  items/s {rate:6.1f} vs uncut "
            f"{full_rate:6.1f} (×{rate / full_rate:.2f})" + ("  ← default" if cut == s.encoder.item_max_tokens else "")
        )


def bulk_part(s0: Settings, fp32: Encoder, n_items: int, live_every_s: float, in_process: bool = False) -> None:
    """Home Depot titles posted as POST /catalog does (lists of 1,000 through publish_confirmed) to the
    real index updater; items/s until all are searchable in a replica vs the raw encoder on the same
    texts (every core, token-length-sorted batches) measured in the same run. Meanwhile one single
    upsert every ``live_every_s``: catalog → searchable while the bulk is running.

    The updater runs as its own process (``python -m index_updater``, as ``streamrec index`` and
    compose run it), so the serving replica and this bench's threads do not share its interpreter;
    ``in_process`` runs it as a thread of this process instead (the earlier, less fair setup)."""
    import psutil

    from streamrec.encoder import set_torch_threads

    ops = list(homedepot.catalog(s0.data_dir, limit=n_items))
    texts = [item_text(op, s0.encoder.item_text_template) for op in ops]
    cores = os.cpu_count() or 1
    cut = s0.encoder.item_max_tokens or None
    raw: dict[int, float] = {}
    before = set_torch_threads(cores)
    for threads in dict.fromkeys([1, cores]):
        set_torch_threads(threads)
        t0 = time.perf_counter()
        fp32.encode(texts, max_length=cut)
        raw[threads] = len(texts) / (time.perf_counter() - t0)
    set_torch_threads(before)
    say(
        f"[bulk] {len(texts)} Home Depot titles: raw encoder {fp32.model_id} sorted batches of "
        f"{fp32.batch_size}: {raw[cores]:.0f} items/s with {cores} threads, {raw[1]:.0f} with 1 "
        f"(×{raw[cores] / raw[1]:.2f})"
    )
    extra = homedepot.catalog(s0.data_dir, limit=n_items + 400)
    pool = [item_text(op, s0.encoder.item_text_template) for op in extra][n_items:]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedKafka(Path(tmp) / "tansu") as broker:
        bus.wait_for_broker(broker.bootstrap)
        tag = uuid.uuid4().hex[:6]
        s = s0.replace(
            state_dir=Path(tmp) / "state",
            kafka={"bootstrap": broker.bootstrap},
            topic={"catalog": f"k{tag}.catalog", "vectors": f"k{tag}.vectors", "dlq": f"k{tag}.dlq"},
            index={"snapshot_every_s": 60.0},
        )
        bus.ensure_topics(s)
        updater = BulkUpdater(s, fp32, Path(tmp), in_process)
        replica = IndexReplica(s, fp32.dim, from_snapshot=False)
        replica.start()
        producer = bus.make_producer(s)
        # warm-up: the updater joins its group before the clock starts
        warm = CatalogOp(op="upsert", item_id="warm", ts=int(time.time() * 1000), title="warm up")
        bus.publish_confirmed(producer, [(s.topic.catalog, "warm", encode(warm))], timeout_s=30)
        while "warm" not in replica.index:
            time.sleep(0.05)
        watcher = Watcher(replica)
        embed0 = updater.embed_counters()
        cpu0 = updater.cpu_by_thread()
        others = {"broker": psutil.Process(broker.proc.pid), "bench (serving replica, producer)": psutil.Process()}
        others_cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in others.items()}
        t_start = time.time()
        for start in range(0, len(ops), 1000):
            part = ops[start : start + 1000]
            bus.publish_confirmed(producer, [(s.topic.catalog, op.item_id, encode(op)) for op in part], timeout_s=60)
        posted = time.time() - t_start
        rng = random.Random(11)
        n = 0
        while len(replica.index) < len(ops) + 1 and time.time() - t_start < 3600:
            item_id = rng.choice(ops).item_id
            title = f"{pool[n % len(pool)]} #{n}"
            sent = time.time()
            watcher.expect(item_id, title, sent)
            op = CatalogOp(op="upsert", item_id=item_id, ts=int(sent * 1000), title=title)
            bus.publish_confirmed(producer, [(s.topic.catalog, item_id, encode(op))], timeout_s=30)
            n += 1
            time.sleep(live_every_s)
        elapsed = time.time() - t_start
        embedded, busy = (b - a for a, b in zip(embed0, updater.embed_counters(), strict=True))
        cpu1 = updater.cpu_by_thread()
        cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        others_cpu = {k: sum(p.cpu_times()[:2]) - others_cpu0[k] for k, p in others.items()}
        left = watcher.drain(30)
        live = watcher.latencies
        rate = len(ops) / elapsed
        best = max(raw.values())
        say(
            f"bulk   index updater bulk path: {len(ops)} items searchable in {elapsed:.1f}s (posted in {posted:.1f}s): "
            f"{rate:.0f} items/s vs raw encoder {best:.0f} items/s (its faster thread count here, "
            f"{max(raw, key=lambda k: raw[k])}) in the same run: ratio {rate / best:.2f} "
            f"(target ≥ 0.8, ≥ 300 items/s)"
        )
        say(
            f"bulk   where the ratio goes: the updater's encoder embedded {embedded:.0f} texts in {busy:.1f}s "
            f"({embedded / max(busy, 1e-9):.0f} items/s: ×{embedded / max(busy, 1e-9) / best:.2f} of raw) and was busy "
            f"{busy / elapsed:.0%} of the {elapsed:.1f}s; updater {updater.kind} CPU s by thread: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05)
            + ("; meanwhile " + ", ".join(f"{k} {v:.1f}" for k, v in others_cpu.items()) if not in_process else "")
            + f" CPU s on {cores} cores"
        )
        say(
            f"bulk   single upserts during the bulk: {len(live)} (one per {live_every_s:g}s)  catalog→searchable "
            f"p50 {pct(live, 50) * 1000:.0f} ms  p99 {pct(live, 99) * 1000:.0f} ms  "
            f"max {max(live, default=float('nan')) * 1000:.0f} ms"
            f"  (never visible: {left}; target p99 ≤ 2 s)"
        )
        watcher.stop.set()
        replica.stop()
        updater.stop()
        producer.close()
    # the host's load moves between the two measurements (other jobs): the raw encoder again, after
    best_threads = max(raw, key=lambda k: raw[k])
    before = set_torch_threads(best_threads)
    t0 = time.perf_counter()
    fp32.encode(texts, max_length=cut)
    after = len(texts) / (time.perf_counter() - t0)
    set_torch_threads(before)
    say(
        f"bulk   raw encoder again after the bulk ({best_threads} threads): {after:.0f} items/s; bulk ratio to the "
        f"mean of before and after ({(best + after) / 2:.0f}): {rate / ((best + after) / 2):.2f}"
    )


class BulkUpdater:
    """The index updater under test: a child process (``python -m index_updater``) or a thread here;
    its encoder counters (items, busy seconds) and CPU seconds per thread, however it runs."""

    def __init__(self, s: Settings, fp32: Encoder, tmp: Path, in_process: bool):
        import psutil

        self.kind = "thread" if in_process else "process"
        self._stop = threading.Event()
        if in_process:
            self._thread = threading.Thread(
                target=service.run, args=(s, self._stop), kwargs={"encoder": fp32}, daemon=True
            )
            self._thread.start()
            self.proc = psutil.Process()
            return
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        env |= s.to_env()
        env["STREAMREC_METRICS_PORT"] = str(self.port)
        self._log = open(tmp / "index-updater.log", "wb")  # noqa: SIM115 (closed in stop)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "index_updater"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.proc = psutil.Process(self._child.pid)

    def embed_counters(self) -> tuple[float, float]:
        """(texts embedded, seconds the encoder was busy) so far."""
        if self.kind == "thread":
            return updater_metrics.ITEMS_EMBEDDED._value.get(), updater_metrics.EMBED_SECONDS._value.get()
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        values = {
            line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")
        }
        return (
            values.get("streamrec_index_items_embedded_total", 0.0),
            values.get("streamrec_index_embed_seconds_total", 0.0),
        )

    def cpu_by_thread(self) -> dict[str, float]:
        """CPU seconds (user + system) per thread group of the updater's process (in-process: the
        whole bench process, named by Python thread; unnamed native threads are torch's OpenMP pool;
        as a process: all its threads together)."""
        if self.kind == "process":  # its threads carry no names outside it
            return {"all threads": sum(self.proc.cpu_times()[:2])}
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for th in self.proc.threads():
            name = names.get(th.id) or "torch OpenMP pool"
            name = name.split("-kafka-python")[0].rstrip("_0123456789")
            out[name] = out.get(name, 0.0) + th.user_time + th.system_time
        return out

    def stop(self) -> None:
        self._stop.set()
        if self.kind == "thread":
            self._thread.join(30)
            return
        self._child.terminate()
        try:
            self._child.wait(30)
        except Exception:
            self._child.kill()
        self._log.close()


# --- 3. ANN ------------------------------------------------------------------------------------


def ann_part(
    s: Settings, data: dict, n_items: int, n_queries: int, rounds: int, factories: list[str]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    enc: Encoder = data["int8"]  # the fastest way to get many real vectors on CPU
    texts = [item_text(op, s.encoder.item_text_template) for op in homedepot.catalog(s.data_dir, limit=n_items)]
    have = data["hd_int8"][: len(texts)]
    say(f"[3/4] ANN: {len(texts)} Home Depot titles with {enc.model_id}; embedding {len(texts) - len(have)} more …")
    t0 = time.perf_counter()
    x = np.concatenate([have, enc.encode(texts[len(have) :])])
    say(f"      embedded in {time.perf_counter() - t0:.0f}s")
    q = enc.encode(list(homedepot.relevance_labels(s.data_dir))[:n_queries])
    truth = exact_topk(x, q, 10)
    ids = [f"hd{n}" for n in range(len(x))]
    baseline_qps = None
    for factory in factories:
        index = LiveIndex(
            enc.dim, factory, nprobe=s.index.nprobe, ef_search=s.index.ef_search, search_threads=s.index.search_threads
        )
        t0 = time.perf_counter()
        for start in range(0, len(x), 1000):
            index.apply([(ids[n], x[n], ItemMeta(texts[n])) for n in range(start, min(start + 1000, len(x)))], [])
        index.rebuild()  # trains IVF now that all vectors are in; a no-op result for Flat/HNSW
        build_s = time.perf_counter() - t0
        qps = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            results = [index.search(row, 10)[0] for row in q]
            qps.append(len(q) / (time.perf_counter() - t0))
        got = np.array([[int(i[2:]) for i, _ in hits] + [-1] * (10 - len(hits)) for hits in results])
        recall = overlap_at_k(truth, got)
        med = statistics.median(qps)
        baseline_qps = baseline_qps or med
        params = (
            f"nprobe={s.index.nprobe}"
            if "IVF" in factory
            else (f"efSearch={s.index.ef_search}" if "HNSW" in factory else "exact")
        )
        if not index.trained:
            params = "UNTRAINED→exact"  # too few vectors to train this factory: said, not hidden
        say(
            f"ann    factory={factory:<14} {params:<12} n={len(x)}  recall@10 {recall:.3f}  QPS median "
            f"{med:7.0f} (×{med / baseline_qps:.1f} vs Flat baseline)  build {build_s:.1f}s"
        )
        if factory == factories[0] and s.index.search_threads:
            index.search_threads = 0  # what a search costs with faiss' default OpenMP threads
            qps0 = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for row in q:
                    index.search(row, 10)
                qps0.append(len(q) / (time.perf_counter() - t0))
            say(
                f"ann    factory={factory:<14} {params:<12} n={len(x)}  same, faiss default OpenMP threads "
                f"instead of index_search_threads={s.index.search_threads}: QPS median {statistics.median(qps0):7.0f}"
            )
        if "HNSW" in factory:
            gone = set(ids[::10])
            index.apply([], sorted(gone))
            alive = np.array([n for n in range(len(x)) if ids[n] not in gone])
            truth2 = alive[exact_topk(x[alive], q, 10)]
            results = [index.search(row, 10)[0] for row in q]
            leaked = sum(1 for hits in results for i, _ in hits if i in gone)
            got = np.array([[int(i[2:]) for i, _ in hits] for hits in results])
            say(
                f"ann    factory={factory:<14} {params:<12} after deleting 10%: tombstones {index.tombstones}, "
                f"recall@10 {overlap_at_k(truth2, got):.3f}, deleted items returned {leaked}"
            )
    return x, texts, q


# --- 4. restart -------------------------------------------------------------------------------


def restart_part(s0: Settings, x: np.ndarray, texts: list[str], q: np.ndarray, rounds: int, factory: str) -> None:
    """A replica from the newest snapshot + the tail vs. one replaying the whole vectors topic."""
    n, tail = len(x), max(1, len(x) // 20)
    say(f"[4/4] restart: factory={factory}, {n} vectors on the topic, snapshot, then {tail} more changes")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedKafka(Path(tmp) / "tansu") as broker:
        bus.wait_for_broker(broker.bootstrap)
        tag = uuid.uuid4().hex[:6]
        s = s0.replace(
            state_dir=Path(tmp) / "state",
            kafka={"bootstrap": broker.bootstrap},
            index={"factory": factory},
            topic={"vectors": f"r{tag}.vectors"},
        )
        bus.ensure_topics(s)
        producer = bus.make_producer(s)

        def send(item: int, vector: np.ndarray, title: str) -> None:
            producer.send(
                s.topic.vectors,
                key=f"hd{item}",
                value=encode_record(VectorRecord(f"hd{item}", vector=vector, meta=ItemMeta(title=title))),
            )

        for i in range(n):
            send(i, x[i], texts[i])
        producer.flush()
        writer = IndexReplica(s, x.shape[1], from_snapshot=False)
        writer.start()
        while len(writer.index) < n:
            time.sleep(0.05)
        writer.snapshot()
        writer.stop()
        for j in range(tail):  # the tail: items move (to the opposite of another item's vector: no ties)
            send(j, -x[n - 1 - j], f"moved {j}")
        producer.flush()
        producer.close()
        last = f"moved {tail - 1}"
        times: dict[bool, list[float]] = {True: [], False: []}
        answers: dict[bool, list] = {}
        for _ in range(rounds):
            for from_snapshot in (True, False):
                t0 = time.perf_counter()
                r = IndexReplica(s, x.shape[1], from_snapshot=from_snapshot)
                r.start()
                while not (r.caught_up.is_set() and r.index.meta(f"hd{tail - 1}").title == last):
                    time.sleep(0.01)
                times[from_snapshot].append(time.perf_counter() - t0)
                answers[from_snapshot] = [[i for i, _ in hits] for hits in r.index.search(q[:100], 10)]
                r.stop()
        snap, scratch = statistics.median(times[True]), statistics.median(times[False])
        same = overlap_at_k(np.array(answers[True]), np.array(answers[False]))
        say(
            f"restart factory={factory:<14} n={n}  ready from snapshot + tail {snap:.2f}s  vs full replay "
            f"baseline {scratch:.2f}s (×{scratch / snap:.1f})  top-10 overlap of the two on 100 queries {same:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=600, help="items per catalogue for the encoder part")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds; medians are quoted")
    ap.add_argument("--load-seconds", type=float, default=30.0)
    ap.add_argument("--update-rate", type=float, default=10.0, help="catalog changes per second under load")
    ap.add_argument("--query-rate", type=float, default=20.0, help="queries per second under load")
    ap.add_argument("--fresh-factory", default="HNSW32")
    ap.add_argument("--ann-items", type=int, default=4000, help="Home Depot items in the ANN part")
    ap.add_argument("--ann-queries", type=int, default=500)
    ap.add_argument(
        "--factories",
        default="Flat;IVF64,Flat;IVF64,SQ8;HNSW32",
        help="';'-separated FAISS factory strings; the first is the baseline",
    )
    ap.add_argument("--bulk-items", type=int, default=3000, help="Home Depot titles in the bulk import part")
    ap.add_argument("--live-every", type=float, default=1.0, help="seconds between single upserts during the bulk")
    ap.add_argument(
        "--bulk-in-process", action="store_true", help="run the bulk part's index updater as a thread of the bench"
    )
    ap.add_argument("--trunc-items", type=int, default=300, help="Amazon items in the truncation part")
    ap.add_argument("--skip", default="", help="parts to skip: trunc,bulk,fresh,ann,restart (restart needs ann)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = Settings()
    s.require_data_dir()
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    started = time.perf_counter()
    fp32, data = encoder_part(s, args.items, args.rounds)
    if "trunc" not in args.skip:
        truncation_part(s, fp32, args.trunc_items)
    if "bulk" not in args.skip:
        bulk_part(s, fp32, args.bulk_items, args.live_every, args.bulk_in_process)
    if "fresh" not in args.skip:
        freshness_part(s, fp32, data, args.load_seconds, args.update_rate, args.query_rate, args.fresh_factory)
    if "ann" not in args.skip:
        x, texts, q = ann_part(s, data, args.ann_items, args.ann_queries, args.rounds, factories)
        if "restart" not in args.skip:
            for factory in dict.fromkeys(["Flat", args.fresh_factory]):
                restart_part(s, x, texts, q, args.rounds, factory)
    say(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
