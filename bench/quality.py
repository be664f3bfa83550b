"""End-to-end quality on real held-out data, through the running embedded stack and the public API.

    python -m bench.quality --search      # Home Depot: nDCG@10 before/after click feedback, ablation
    python -m bench.quality --recommend   # DIGINETICA: HR@20 / MRR@20, SR-GNN protocol, ablation
    python -m bench.quality --recommend --dataset amazon-office   # users' histories, leave-one-out

Nothing reaches the engine except through ``POST /catalog``, ``POST /events`` and the ``GET``
routes a storefront calls; evaluation requests pass ``impression=false`` so that the engine does
not learn from the evaluation traffic itself (a storefront's QA traffic does the same). Every
stage's contribution is shown by the route's ``variant`` parameter, and the simplest strong
baseline (BM25 computed offline on the same catalogue; popularity / co-visitation through the
API) is printed from the same run.

The pytest versions (``tests/test_quality_*.py``) run the same functions on a slice.
"""

from __future__ import annotations

import argparse
import csv
import html
import math
import signal
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np

from launcher.embedded import free_port
from launcher.stack import LocalStack
from streamrec.datasets import amazon14, amazon18, diginetica, yoochoose
from streamrec.settings import Settings

SEARCH_VARIANTS = ("bm25", "dense", "rrf", "fused", "full")


# --- metrics ----------------------------------------------------------------------------------


def ndcg_at(ranked: Sequence[str], labels: dict[str, float], k: int = 10) -> float:
    """nDCG@k with gain = relevance − 1 and unlabelled items at 0 (the Home Depot protocol)."""
    gains = sorted((g - 1.0 for g in labels.values()), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    if ideal <= 0:
        return 0.0
    dcg = sum((labels.get(item, 1.0) - 1.0) / math.log2(i + 2) for i, item in enumerate(ranked[:k]))
    return dcg / ideal


def reciprocal_rank(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    wanted = set(relevant)
    for i, item in enumerate(ranked[:k]):
        if item in wanted:
            return 1.0 / (i + 1)
    return 0.0


def percentile_ms(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q) * 1000.0) if xs else float("nan")


def latency_line(what: str, xs: Sequence[float]) -> str:
    return f"{what}: p50 {percentile_ms(xs, 50):.1f} ms, p99 {percentile_ms(xs, 99):.1f} ms over {len(xs):,} requests"


# --- the running stack --------------------------------------------------------------------------


def start_stack(base: Settings | None = None, **overrides) -> LocalStack:
    """A fresh embedded stack (own broker, Redis and state) — what `streamrec up` runs."""
    base = base or Settings()
    state = Path(tempfile.mkdtemp(prefix="streamrec-quality-"))
    embedded = {"kafka": {"bootstrap": ""}, "redis": {"url": ""}, "http": {"port": free_port()}}
    s = base.replace(**overrides).replace(state_dir=state, **embedded)
    return LocalStack(s, metrics_base_port=0).start()


def post_all(http: httpx.Client, path: str, objects: Sequence[dict], batch: int = 1000, label: str = "") -> None:
    """POST in batches of at most ``batch``; every object must be accepted."""
    started = time.monotonic()
    for i in range(0, len(objects), batch):
        chunk = objects[i : i + batch]
        for attempt in range(60):
            try:
                r = http.post(path, json=chunk)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 202:
                break
            time.sleep(min(5.0, 0.2 * (attempt + 1)))
        else:
            raise RuntimeError(f"POST {path} kept failing: {r.status_code if r else 'no answer'}")
        body = r.json()
        if body["rejected"]:
            raise RuntimeError(f"POST {path} rejected {body['rejected'][:3]}")
        done = i + len(chunk)
        if label and ((done // batch) % 50 == 0 or done == len(objects)):
            print(f"  {label}: posted {done:,}/{len(objects):,} ({time.monotonic() - started:.0f} s)", flush=True)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.5) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def wait_indexed(http: httpx.Client, n: int, timeout_s: float) -> None:
    """Until serving holds ``n`` items; prints the rate while the catalogue is embedded."""
    started = last_print = time.monotonic()

    def check() -> bool:
        nonlocal last_print
        try:
            items = int(http.get("/healthz").json().get("index_items", 0))
        except (httpx.HTTPError, ValueError):
            return False
        now = time.monotonic()
        if now - last_print > 15:
            rate = items / max(1e-9, now - started)
            print(f"  indexed {items:,}/{n:,} items ({rate:.0f} items/s)", flush=True)
            last_print = now
        return items >= n

    wait_for(check, timeout_s, f"{n} items indexed")


def search_ids(http: httpx.Client, q: str, k: int, variant: str, **params) -> tuple[list[str], float, dict]:
    started = time.perf_counter()
    r = http.get("/search", params={"q": q, "k": k, "variant": variant, **params})
    took = time.perf_counter() - started
    r.raise_for_status()
    body = r.json()
    return [it["item_id"] for it in body["items"]], took, body


def model_version(http: httpx.Client) -> int:
    return int(http.get("/healthz").json().get("model_version", 0))


def wait_model_settled(http: httpx.Client, after_s: float, quiet_s: float = 6.0, timeout_s: float = 600) -> int:
    """Wait ``after_s`` (the label window must close), then until the served model stops changing."""
    time.sleep(after_s)
    last, since = model_version(http), time.monotonic()

    def settled() -> bool:
        nonlocal last, since
        v = model_version(http)
        if v != last:
            last, since = v, time.monotonic()
        return time.monotonic() - since >= quiet_s

    wait_for(settled, timeout_s, "model version settled", every_s=1.0)
    return last


# --- search: Home Depot ------------------------------------------------------------------------


@dataclass
class SearchData:
    products: dict[str, str]  # product_uid → title
    feedback: dict[str, dict[str, float]]  # query → {product_uid: relevance}
    evaluation: dict[str, dict[str, float]]


def is_feedback_query(q: str) -> bool:
    """The stable split: crc32 of the lower-cased query, even = feedback half, odd = evaluation half."""
    return zlib.crc32(q.lower().encode()) % 2 == 0


def load_search_data(data_dir: Path, max_queries: int | None = None, max_products: int | None = None) -> SearchData:
    """Home Depot products and dev labels, split by query; optionally a slice (labelled products
    of the chosen queries first, then other products in file order up to ``max_products``)."""
    folder = data_dir / "homedepot"
    with open(folder / "products.csv", newline="", encoding="utf-8") as f:
        all_products = {
            r["product_uid"]: html.unescape(r["product_title"]).strip() for r in csv.DictReader(f) if r["product_title"]
        }
    labels: dict[str, dict[str, float]] = {}
    with open(folder / "labels_dev.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            q = " ".join(row["search_term"].split())
            if q and row["product_uid"] in all_products:
                labels.setdefault(q, {})[row["product_uid"]] = float(row["relevance"])
    feedback = {q: v for q, v in sorted(labels.items()) if is_feedback_query(q)}
    evaluation = {q: v for q, v in sorted(labels.items()) if not is_feedback_query(q)}
    if max_queries is not None:
        feedback = dict(list(feedback.items())[:max_queries])
        evaluation = dict(list(evaluation.items())[:max_queries])
    if max_products is None:
        return SearchData(all_products, feedback, evaluation)
    chosen: dict[str, str] = {}
    for lab in (*feedback.values(), *evaluation.values()):
        for pid in lab:
            chosen[pid] = all_products[pid]
    for pid, title in all_products.items():
        if len(chosen) >= max_products:
            break
        chosen.setdefault(pid, title)
    return SearchData(chosen, feedback, evaluation)


def offline_bm25_ndcg(data: SearchData) -> float:
    """The plain baseline of REFERENCES.md: bm25s with English stopwords on raw titles."""
    import bm25s

    ids = list(data.products)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([data.products[i] for i in ids], stopwords="en", show_progress=False), show_progress=False
    )
    queries = list(data.evaluation)
    tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
    docs, _scores = retriever.retrieve(tokens, k=10, show_progress=False, n_threads=1)
    return float(np.mean([ndcg_at([ids[int(d)] for d in docs[i]], data.evaluation[q]) for i, q in enumerate(queries)]))


@dataclass
class SearchScore:
    ndcg: float
    mrr: float
    recall100: float | None
    latency_s: list[float] = field(default_factory=list)
    per_query: list[float] = field(default_factory=list)  # nDCG@10 of each query, in order


def score_search(
    http: httpx.Client, queries: dict[str, dict[str, float]], variant: str, with_recall: bool = False
) -> SearchScore:
    ndcgs, rrs, recalls, took = [], [], [], []
    for q, lab in queries.items():
        ids, t, _ = search_ids(http, q, 100 if with_recall else 10, variant, impression="false")
        took.append(t)
        ndcgs.append(ndcg_at(ids, lab))
        good = [p for p, rel in lab.items() if rel >= 2.5]
        rrs.append(reciprocal_rank(ids, good, 10))
        if with_recall and good:
            recalls.append(len(set(ids[:100]) & set(good)) / len(good))
    recall = float(np.mean(recalls)) if recalls else None
    return SearchScore(float(np.mean(ndcgs)), float(np.mean(rrs)), recall, took, ndcgs)


def replay_search_feedback(http: httpx.Client, queries: dict[str, dict[str, float]], k: int = 10) -> dict[str, int]:
    """What a storefront produces: a logged search per feedback query, then impression-linked clicks
    on shown products with relevance ≥ 2.5 and a purchase for 3.0 — no label reaches the engine
    any other way."""
    counts = {"searches": 0, "clicks": 0, "purchases": 0}
    events: list[dict] = []
    for n, (q, lab) in enumerate(queries.items()):
        user = f"hd-shopper-{n}"
        ids, _t, body = search_ids(http, q, k, "full", user_id=user)
        counts["searches"] += 1
        now = int(time.time() * 1000)
        for pos, pid in enumerate(ids):
            rel = lab.get(pid, 0.0)
            if rel < 2.5:
                continue
            common = dict(user_id=user, item_id=pid, request_id=body["request_id"], position=pos, query=q)
            events.append(dict(event_id=f"{body['request_id']}-c{pos}", type="click", ts=now + 1, **common))
            counts["clicks"] += 1
            if rel >= 3.0:
                events.append(dict(event_id=f"{body['request_id']}-p{pos}", type="purchase", ts=now + 2, **common))
                counts["purchases"] += 1
        if len(events) >= 500:
            post_all(http, "/events", events)
            events = []
    if events:
        post_all(http, "/events", events)
    return counts


@dataclass
class SearchReport:
    products: int
    queries: int
    bm25_offline: float
    before: dict[str, SearchScore]
    after: dict[str, SearchScore]
    version_before: int
    version_after: int
    feedback: dict[str, int]
    index_s: float
    seen_before: SearchScore | None = None  # the feedback queries themselves (searched again), full path
    seen_after: SearchScore | None = None


def measure_search(data: SearchData, base: Settings, index_timeout_s: float = 3600.0, **overrides) -> SearchReport:
    """Catalogue in, evaluation half scored, feedback half replayed as events, evaluation re-scored."""
    t0 = time.monotonic()
    bm25_offline = offline_bm25_ndcg(data)
    print(
        f"  offline baseline bm25s (raw titles): nDCG@10 {bm25_offline:.4f} ({time.monotonic() - t0:.0f} s)", flush=True
    )
    stack = start_stack(base, **overrides)
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            wait_for(lambda: _up(http), 300, "API up")
            now = int(time.time() * 1000)
            catalog = [dict(op="upsert", item_id=pid, ts=now, title=title) for pid, title in data.products.items()]
            started = time.monotonic()
            post_all(http, "/catalog", catalog, label="catalog")
            wait_indexed(http, len(catalog), timeout_s=index_timeout_s)
            last_id, last_title = catalog[-1]["item_id"], catalog[-1]["title"]
            wait_for(
                lambda: last_id in search_ids(http, last_title, 10, "bm25", impression="false")[0],
                120,
                "lexical index caught up",
            )
            stack.wait_ready(timeout_s=120, min_items=len(catalog))
            index_s = time.monotonic() - started
            print(f"  catalogue searchable after {index_s:.0f} s ({len(catalog) / index_s:.0f} items/s)", flush=True)
            before = {
                v: score_search(http, data.evaluation, v, with_recall=v in ("fused", "full")) for v in SEARCH_VARIANTS
            }
            seen_before = score_search(http, data.feedback, "full")
            version_before = model_version(http)
            counts = replay_search_feedback(http, data.feedback)
            print(f"  feedback replayed: {counts}", flush=True)
            version_after = wait_model_settled(http, after_s=stack.settings.learner.label_window_s + 5)
            after = {v: score_search(http, data.evaluation, v) for v in SEARCH_VARIANTS}
            seen_after = score_search(http, data.feedback, "full")
    finally:
        stack.stop()
    return SearchReport(
        len(data.products),
        len(data.evaluation),
        bm25_offline,
        before,
        after,
        version_before,
        version_after,
        counts,
        index_s,
        seen_before,
        seen_after,
    )


def print_search(r: SearchReport) -> None:
    print()
    print(
        f"Home Depot search, {r.queries:,} unseen evaluation queries, nDCG@10 over {r.products:,} products "
        "(gain = relevance − 1), MRR@10 of relevance ≥ 2.5, R@100 of the candidate stage"
    )
    print(f"feedback: {r.feedback}; model version {r.version_before} → {r.version_after}")
    print(f"{'variant':38s} {'nDCG@10':>8s} {'MRR@10':>7s} {'R@100':>6s} {'after fb':>9s} {'lift':>7s}")
    print(f"{'baseline: bm25s, raw titles (offline)':38s} {r.bm25_offline:8.4f}")
    names = {
        "bm25": "lexical alone (normalised BM25)",
        "dense": "dense alone (MiniLM)",
        "rrf": "RRF of lexical + dense",
        "fused": "weighted fusion, no head",
        "full": "full path (fusion + head + diversity)",
    }
    for v in SEARCH_VARIANTS:
        b, a = r.before[v], r.after[v]
        rec = f"{b.recall100:6.3f}" if b.recall100 is not None else "     -"
        print(f"{names[v]:38s} {b.ndcg:8.4f} {b.mrr:7.4f} {rec} {a.ndcg:9.4f} {a.ndcg - b.ndcg:+7.4f}")
    if r.seen_before and r.seen_after:
        b, a = r.seen_before.ndcg, r.seen_after.ndcg
        name = "full path, the feedback queries (seen)"
        print(f"{name:38s} {b:8.4f} {r.seen_before.mrr:7.4f} {'':6s} {a:9.4f} {a - b:+7.4f}")
    best = max(r.before["bm25"].ndcg, r.before["rrf"].ndcg)
    print(f"full path before feedback vs the best of lexical / RRF in this run: {r.before['full'].ndcg - best:+.4f}")
    print(latency_line("GET /search (full, k=10, single client)", r.before["full"].latency_s))
    print(f"catalogue of {r.products:,} titles searchable after {r.index_s:.0f} s")


def run_search(args: argparse.Namespace) -> int:
    base = Settings()
    data = load_search_data(base.require_data_dir(), args.queries, args.products)
    print(
        f"search quality: {len(data.products):,} Home Depot products, {len(data.feedback):,} feedback / "
        f"{len(data.evaluation):,} evaluation queries (crc32 split)",
        flush=True,
    )
    print_search(measure_search(data, base, args.index_timeout))
    return 0


# --- recommend: DIGINETICA, SR-GNN protocol ---------------------------------------------------

RECOMMEND_VARIANTS = ("full", "fused", "stan", "vsknn", "covis", "repeat", "popular")


def diginetica_split(data_dir: Path) -> tuple[list[list[int]], list[list[int]], int]:
    """All sessions in file (time) order: the first 90 % replayed as history, the last 10 % held out."""
    sessions = list(diginetica.sessions(data_dir))
    cut = int(len(sessions) * 0.9)
    return sessions[:cut], sessions[cut:], cut


def yoochoose_split(data_dir: Path) -> tuple[list[list[int]], list[list[int]], int]:
    """session-rec's own split of the 100k sample: its training days as history, the next day held out."""
    train = list(yoochoose.sessions(data_dir, "train_full"))
    return train, list(yoochoose.sessions(data_dir, "test")), len(train)


@dataclass(frozen=True)
class SessionDataset:
    split: Callable[[Path], tuple[list[list[int]], list[list[int]], int]]
    protocol: str  # how the held-out pairs are made, printed above the table
    published: str  # figures published on this data, printed below it


RECOMMEND_DATASETS = {
    "diginetica": SessionDataset(
        diginetica_split,
        "DIGINETICA, SR-GNN protocol: the last 10 % of sessions held out; items already in the session allowed "
        "(about one target in five)",
        "published (their test week): SR-GNN 50.73 / 17.59, MSGIFSR 55.4 / 19.0; co-visitation ≈ 40 / 12",
    ),
    "yoochoose": SessionDataset(
        yoochoose_split,
        "YOOCHOOSE 100k sample (session-rec rsc15 split: the day after the history held out), every prefix → next "
        "click; a shop the session weights were not tuned on",
        "no published figures for this 100k sample (papers use rsc15 1/64 or 1/4; not comparable)",
    ),
}


# The replay's event times end in the recent past rather than in 2016: the logged /recommend
# calls of the live phase are impressions stamped with serving's clock, and a stream clock that
# jumped ten years would decay every time-decayed feature of the history (trending) to nothing.
DIGINETICA_SESSIONS_AT_MOST = 200_000  # the file has 186,670; the last one still starts in the past
REPLAY_SHIFT_MS = (
    int(time.time() * 1000) - diginetica.START_MS - DIGINETICA_SESSIONS_AT_MOST * diginetica.SESSION_GAP_MS
)


def session_event(s: int, pos: int, item: int, seen: dict[int, int]) -> dict:
    """The DIGINETICA adapter's event for item ``pos`` of session ``s`` (same ids and types; its
    times moved by :data:`REPLAY_SHIFT_MS`)."""
    seen[item] = seen.get(item, 0) + 1
    return dict(
        event_id=f"dgs{s}-{pos}",
        type=diginetica.FUNNEL[min(seen[item], 4) - 1],
        user_id=f"dgs{s}",
        item_id=f"sg{item}",
        session_id=f"dgs{s}",
        ts=REPLAY_SHIFT_MS + diginetica.START_MS + s * diginetica.SESSION_GAP_MS + pos * diginetica.STEP_MS,
    )


PROBE_ITEM = "quality-probe"  # a catalogue entry no real session contains
PROBE_USERS = 16  # keys enough to land on every partition (3 by default) with near certainty


def post_probes(http: httpx.Client, tag: str, ts: int) -> list[str]:
    """One single-click session per probe user, posted after a batch: a partition that shows its probe
    has applied everything published to it before (Kafka keeps order per partition)."""
    users = [f"probe-{tag}-{n}" for n in range(PROBE_USERS)]
    post_all(
        http,
        "/events",
        [dict(event_id=f"{u}-0", type="view", user_id=u, item_id=PROBE_ITEM, session_id=u, ts=ts) for u in users],
    )
    return users


def probes_visible(http: httpx.Client, users: list[str]) -> bool:
    return all(recommend_ids(http, u, 1, "repeat")[0][:1] == [PROBE_ITEM] for u in users)


def recommend_ids(
    http: httpx.Client, user: str, k: int, variant: str, impression: bool = False
) -> tuple[list[str], float]:
    started = time.perf_counter()
    params = {"user_id": user, "k": k, "variant": variant, "impression": str(impression).lower()}
    r = http.get("/recommend", params=params)
    took = time.perf_counter() - started
    r.raise_for_status()
    return [it["item_id"] for it in r.json()["items"]], took


@dataclass
class RankTally:
    k: int = 20  # the cut-off of every figure
    hits: int = 0
    rr: float = 0.0
    dcg: float = 0.0  # one relevant item per pair: NDCG@k = 1 / log2(rank + 1)
    n: int = 0

    def add(self, ranked: Sequence[str], target: str) -> None:
        self.n += 1
        if target in ranked[: self.k]:
            rank = ranked.index(target) + 1
            self.hits += 1
            self.rr += 1.0 / rank
            self.dcg += 1.0 / math.log2(rank + 1)

    def merge(self, other: RankTally) -> None:
        self.hits += other.hits
        self.rr += other.rr
        self.dcg += other.dcg
        self.n += other.n

    def line(self) -> str:
        n, k = max(1, self.n), self.k
        return (
            f"HR@{k} {100 * self.hits / n:6.2f}  MRR@{k} {100 * self.rr / n:6.2f}  NDCG@{k} {100 * self.dcg / n:6.2f}  "
            f"(pairs {self.n:,})"
        )


@dataclass
class RecommendReport:
    train_sessions: int
    eval_sessions: int
    tallies: dict[str, RankTally]
    latency_s: list[float]
    visible_s: list[float]
    redis_bytes: int
    live_sessions: int = 0
    live: RankTally = field(default_factory=RankTally)  # the live phase's own /recommend calls
    fusion: dict = field(default_factory=dict)  # the learned fusion as published (model meta)
    live_latency_s: list[float] = field(default_factory=list)  # the live phase's logged /recommend calls
    gc_full: tuple[float, float] = (0.0, 0.0)  # serving's full garbage collections: (count, seconds)


def measure_recommend(
    train: list[list[int]],
    evaluate: list[list[int]],
    first_eval: int,
    base: Settings,
    ablation_every: int = 1,
    index_timeout_s: float = 3600.0,
    live_sessions: int = 0,
    **overrides,
) -> RecommendReport:
    """History replayed through POST /events; then its last ``live_sessions`` sessions played as a
    storefront plays them — click by click, a logged ``GET /recommend`` after each click — so the
    learner fits the session fusion to what the next click picked; then each held-out session
    posted click by click, its next item predicted by GET /recommend after each click (the SR-GNN
    protocol, live; not logged, so the engine does not learn from the evaluation)."""
    first_train = first_eval - len(train)
    live = train[len(train) - live_sessions :] if live_sessions else []
    train = train[: len(train) - len(live)]
    items = sorted({i for sess in (*train, *live, *evaluate) for i in sess})
    stack = start_stack(base, **overrides)
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            wait_for(lambda: _up(http), 300, "API up")
            now = int(time.time() * 1000)
            catalog = [dict(op="upsert", item_id=f"sg{i}", ts=now, title=f"product sg{i}") for i in items]
            catalog.append(dict(op="upsert", item_id=PROBE_ITEM, ts=now, title="streamrec quality probe"))
            post_all(http, "/catalog", catalog, label="catalog")
            history: list[dict] = []
            for n, sess in enumerate(train):
                seen: dict[int, int] = {}
                history.extend(session_event(first_train + n, pos, item, seen) for pos, item in enumerate(sess))
            started = time.monotonic()
            post_all(http, "/events", history, label="history events")
            post_s = time.monotonic() - started
            wait_indexed(http, len(catalog), timeout_s=index_timeout_s)
            stack.wait_ready(timeout_s=300, min_items=len(catalog))
            last_ts = int(history[-1]["ts"]) if history else now
            probes = post_probes(http, "history", last_ts)
            wait_for(lambda: probes_visible(http, probes), index_timeout_s, "history applied", every_s=2.0)
            print(
                f"  history posted in {post_s:.0f} s ({len(history) / max(post_s, 1e-9):,.0f} events/s), "
                f"applied after {time.monotonic() - started:.0f} s",
                flush=True,
            )
            live_tally, fusion, live_latency = RankTally(), {}, []
            if live:
                started = time.monotonic()
                played, live_latency, _ = _score_sessions(
                    http,
                    live,
                    first_train + len(train),
                    1,
                    variants=("full",),
                    impression=True,
                    progress=partial(_fusion_progress, stack.settings),
                )
                live_tally = played["full"]
                wait_model_settled(http, after_s=2.0)
                fusion = _published_fusion(stack.settings)
                print(
                    f"  live phase: {len(live):,} sessions in {time.monotonic() - started:.0f} s; learned fusion "
                    f"{fusion.get('examples', 0):,} examples, serving mode {fusion.get('mode')}",
                    flush=True,
                )
            tallies, latency, visible = _score_sessions(http, evaluate, first_eval, ablation_every)
            redis_bytes = _redis_used_memory(stack.settings.redis.url)
            gc_full = _full_collections(http)
    finally:
        stack.stop()
    return RecommendReport(
        len(train),
        len(evaluate),
        tallies,
        latency,
        visible,
        redis_bytes,
        len(live),
        live_tally,
        fusion,
        live_latency,
        gc_full,
    )


def _full_collections(http: httpx.Client) -> tuple[float, float]:
    """Serving's full garbage collections so far, (count, seconds), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("generation") == "2":
                if sample.name == "streamrec_gc_pause_seconds_count":
                    count = sample.value
                elif sample.name == "streamrec_gc_pause_seconds_sum":
                    total = sample.value
    return count, total


def _published_fusion(s: Settings) -> dict:
    """Operator-side reading of the served model's meta: the learned fusion and its scorecard."""
    from streamrec.model_store import ModelStore
    from streamrec.sessions.learned import FEATURE_NAMES, FusionModel

    _v, _head, meta = ModelStore.from_settings(s).load()
    model = FusionModel.from_state(meta.get("session_fusion", {}))
    if model is None:
        return {}
    assert model.average is not None
    return {
        "examples": model.examples,
        "mode": model.mode,
        "card": {m: [round(100 * x, 2) for x in v] for m, v in model.card.items()},
        "weights": {n: round(float(w), 3) for n, w in zip(FEATURE_NAMES, model.average, strict=True)},
    }


def _fusion_progress(s: Settings) -> str:
    """The learned fusion's learning curve, one point: examples so far, its recent test-then-train
    scorecard against the fixed weights, and which one serves."""
    f = _published_fusion(s)
    if not f:
        return "learned fusion: not published yet"
    return f"learned fusion: {f['examples']:,} examples, [MRR@20, HR@20] {f['card']}, serving {f['mode']}"


def _score_sessions(
    http: httpx.Client,
    evaluate: list[list[int]],
    first_eval: int,
    ablation_every: int,
    variants: Sequence[str] = RECOMMEND_VARIANTS,
    impression: bool = False,
    progress: Callable[[], str] | None = None,
) -> tuple[dict[str, RankTally], list[float], list[float]]:
    """Round t posts click t of every session still running, waits until every partition has
    applied it (probe sessions posted after the batch), then asks for the next item; ablation variants
    on every ``ablation_every``-th session. ``impression``: log the full path's requests (a storefront's)."""
    tallies = {v: RankTally() for v in variants}
    latency: list[float] = []
    visible: list[float] = []
    seen_by_session: dict[int, dict[int, int]] = {}
    longest = max(len(x) for x in evaluate)
    for t in range(longest - 1):
        running = [(first_eval + j, sess) for j, sess in enumerate(evaluate) if len(sess) > t + 1]
        post_all(
            http, "/events", [session_event(s, t, sess[t], seen_by_session.setdefault(s, {})) for s, sess in running]
        )
        posted_at = time.perf_counter()
        probes = post_probes(http, f"round{t}", max(int(session_event(s, t, 0, {})["ts"]) for s, _ in running))
        wait_for(partial(probes_visible, http, probes), 120, f"click {t + 1} applied", every_s=0.05)
        visible.append(time.perf_counter() - posted_at)
        for s, sess in running:
            target = f"sg{sess[t + 1]}"
            for v in variants:
                if v != "full" and s % ablation_every:
                    continue
                ranked, took = recommend_ids(http, f"dgs{s}", 20, v, impression and v == "full")
                if v == "full":
                    latency.append(took)
                tallies[v].add(ranked, target)
        if t % 5 == 0 or t == longest - 2:
            print(
                f"  click {t + 1}/{longest - 1}: {len(running):,} sessions running; full path {tallies['full'].line()}"
                + (f"; {progress()}" if progress else ""),
                flush=True,
            )
    return tallies, latency, visible


def print_variants(tallies: dict[str, RankTally], repeat: str, fused: str) -> None:
    """One line per /recommend variant, the baselines first (``repeat`` and ``fused`` name those two
    for the protocol: a session's own items, or a user's whole history)."""
    names = {
        "popular": "baseline: popularity",
        "covis": "baseline: co-visitation alone",
        "repeat": repeat,
        "vsknn": "V-SKNN session-kNN",
        "stan": "STAN session-kNN",
        "fused": fused,
        "full": "full path",
    }
    for v, name in names.items():
        print(f"{name:32s} {tallies[v].line()}")


def print_recommend(r: RecommendReport, dataset: str = "diginetica") -> None:
    data = RECOMMEND_DATASETS[dataset]
    print()
    print(f"{data.protocol}; {r.train_sessions:,} history sessions, {r.eval_sessions:,} held-out sessions evaluated")
    print_variants(r.tallies, repeat="repeat (this session)", fused="fused candidates, no head")
    if r.live_sessions:
        f = r.fusion
        print(f"live phase ({r.live_sessions:,} sessions before the held-out ones, logged /recommend): {r.live.line()}")
        print(
            f"learned fusion: {f.get('examples', 0):,} next-click examples; recent test-then-train "
            f"[MRR@20, HR@20] by mode {f.get('card')}; served: {f.get('mode')}"
        )
        print(f"  learned weights: {f.get('weights')}")
    print(data.published)
    print(latency_line("GET /recommend (full, k=20, single client)", r.latency_s))
    if r.live_latency_s:
        print(latency_line("GET /recommend logged, as a storefront calls it (live phase)", r.live_latency_s))
    n_gc, gc_s = r.gc_full
    print(
        f"serving's full garbage collections over the run: {n_gc:.0f}, {1000 * gc_s / max(n_gc, 1):.1f} ms each "
        "on average (survivors frozen: streamrec/gcpause.py)"
    )
    print(
        f"click → visible in that session's /recommend: p50 {percentile_ms(r.visible_s, 50):.0f} ms, "
        f"p99 {percentile_ms(r.visible_s, 99):.0f} ms (a round's clicks as one batch, until every partition applied it)"
    )
    print(f"Redis used_memory after the run: {r.redis_bytes / 2**20:,.1f} MiB")


def run_recommend(args: argparse.Namespace) -> int:
    base = Settings()
    data_dir = base.require_data_dir()
    train, held_out, first_eval = RECOMMEND_DATASETS[args.dataset].split(data_dir)
    if args.train_sessions is not None:
        train = train[-args.train_sessions :]
    evaluate = held_out[: args.eval_sessions] if args.eval_sessions else held_out
    print(
        f"recommend quality: {len(train):,} {args.dataset} history sessions ({sum(map(len, train)):,} events), "
        f"{len(evaluate):,} held-out sessions ({sum(len(x) - 1 for x in evaluate):,} prefix → next pairs)",
        flush=True,
    )
    report = measure_recommend(
        train, evaluate, first_eval, base, args.ablation_every, args.index_timeout, args.live_sessions
    )
    print_recommend(report, args.dataset)
    if args.obd_seeds:
        from bench.learner import quality

        print()
        quality(data_dir, seeds=args.obd_seeds)
    return 0


# --- recommend: users' purchase histories, leave-one-out -------------------------------------


@dataclass(frozen=True)
class HistoryDataset:
    load: Callable[[Path], dict[str, list[str]]]  # user -> item ids, oldest first
    titles: Callable[[Path], dict[str, str]] | None  # the real catalogue's titles, where the data has them
    published: str


def _office_titles(data_dir: Path) -> dict[str, str]:
    return {op.item_id: op.title for op in amazon18.catalog(data_dir) if op.title}


HISTORY_DATASETS = {
    "amazon-office": HistoryDataset(
        amazon18.sequences, _office_titles, "no published figures for MiniOneRec's Office windows joined per user"
    ),
    "amazon-beauty": HistoryDataset(
        partial(amazon14.sequences, category="Beauty"),
        None,
        "published, same protocol (S3-Rec, full ranking, HR@10 / NDCG@10): PopRec 1.52 / 0.68, "
        "GRU4Rec 2.83 / 1.37, SASRec 6.05 / 3.18, S3-Rec 6.47 / 3.27",
    ),
    "amazon-toys": HistoryDataset(
        partial(amazon14.sequences, category="Toys_and_Games"),
        None,
        "S3-Rec's paper publishes figures for this split (not copied here: check them there)",
    ),
}
HISTORY_K = 10  # the published protocol's cut-off
HISTORY_CHUNK = 250  # live phase: users asked, then their next items posted, per round


def history_user(user: str) -> str:
    """The engine's user (and session) id of a dataset's user."""
    return f"am{user}"


def history_event(user: str, pos: int, item: str, ts: int) -> dict:
    """A history item as the shop's storefront reports it: a purchase (the data are purchase reviews)."""
    uid = history_user(user)
    return dict(event_id=f"{uid}-{pos}", type="purchase", user_id=uid, item_id=item, session_id=uid, ts=ts)


@dataclass
class HistoryReport:
    users: int
    history_events: int
    validation: RankTally  # the live phase: logged /recommend against each user's next item
    tallies: dict[str, RankTally]  # the test items, every variant
    curve: list[str]  # the learned fusion's learning curve, one line per live round
    fusion: dict
    latency_s: list[float]


def measure_histories(
    seqs: dict[str, list[str]],
    base: Settings,
    titles: dict[str, str] | None = None,
    ablation_every: int = 1,
    index_timeout_s: float = 3600.0,
    **overrides,
) -> HistoryReport:
    """Leave-one-out through the API: each user's items but the last two posted as history; then,
    as a storefront would, a logged ``GET /recommend`` for each user followed by the purchase of
    their next (validation) item, so the learner fits the session fusion to this shop; then the last
    item predicted by ``GET /recommend`` (not logged) with every variant."""
    users = [(u, s) for u, s in seqs.items() if len(s) >= 3]
    items = sorted({i for _, s in users for i in s})
    stack = start_stack(base, **overrides)
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            wait_for(lambda: _up(http), 300, "API up")
            now = int(time.time() * 1000)
            catalog = [
                dict(op="upsert", item_id=i, ts=now, title=(titles or {}).get(i) or f"product {i}") for i in items
            ]
            catalog.append(dict(op="upsert", item_id=PROBE_ITEM, ts=now, title="streamrec quality probe"))
            post_all(http, "/catalog", catalog, label="catalog")
            # one user a second, ending now: the history is recent, so trending has not decayed away
            start = now - 1000 * (len(users) + 1)
            history = [
                history_event(u, pos, item, start + 1000 * n + pos)
                for n, (u, s) in enumerate(users)
                for pos, item in enumerate(s[:-2])
            ]
            post_all(http, "/events", history, label="history events")
            wait_indexed(http, len(catalog), timeout_s=index_timeout_s)
            stack.wait_ready(timeout_s=300, min_items=len(catalog))
            probes = post_probes(http, "history", now)
            wait_for(lambda: probes_visible(http, probes), index_timeout_s, "history applied", every_s=2.0)
            validation, curve = RankTally(k=HISTORY_K), []
            for c in range(0, len(users), HISTORY_CHUNK):
                chunk, served = users[c : c + HISTORY_CHUNK], RankTally(k=HISTORY_K)
                for u, s in chunk:
                    served.add(recommend_ids(http, history_user(u), HISTORY_K, "full", impression=True)[0], s[-2])
                validation.merge(served)
                ts = int(time.time() * 1000)
                post_all(http, "/events", [history_event(u, len(s) - 2, s[-2], ts) for u, s in chunk])
                curve.append(
                    f"users {c + 1:,}-{c + len(chunk):,}: served {served.line()}; {_fusion_progress(stack.settings)}"
                )
                print("  " + curve[-1], flush=True)
            wait_model_settled(http, after_s=2.0)
            probes = post_probes(http, "validation", int(time.time() * 1000))
            wait_for(lambda: probes_visible(http, probes), 300, "validation items applied", every_s=1.0)
            fusion = _published_fusion(stack.settings)
            tallies = {v: RankTally(k=HISTORY_K) for v in RECOMMEND_VARIANTS}
            latency: list[float] = []
            for n, (u, s) in enumerate(users):
                for v in RECOMMEND_VARIANTS:
                    if v != "full" and n % ablation_every:
                        continue
                    ranked, took = recommend_ids(http, history_user(u), HISTORY_K, v)
                    tallies[v].add(ranked, s[-1])
                    if v == "full":
                        latency.append(took)
    finally:
        stack.stop()
    return HistoryReport(len(users), len(history), validation, tallies, curve, fusion, latency)


def print_histories(r: HistoryReport, dataset: str) -> None:
    print()
    print(
        f"{dataset}, leave-one-out (the last item of each user held out, the one before it their live next "
        f"purchase): {r.users:,} users, {r.history_events:,} history events"
    )
    print_variants(r.tallies, repeat="baseline: repeat (own history)", fused="fixed fusion")
    f = r.fusion
    print(f"live phase (a logged /recommend per user, then their next purchase): {r.validation.line()}")
    print("  learning curve (what each group of users was served, and the learned fusion then):")
    for line in r.curve:
        print(f"    {line}")
    print(
        f"learned fusion: {f.get('examples', 0):,} next-item examples; recent test-then-train "
        f"[MRR@20, HR@20] by mode {f.get('card')}; served: {f.get('mode')}"
    )
    print(f"  learned weights: {f.get('weights')}")
    print(HISTORY_DATASETS[dataset].published)
    print(latency_line(f"GET /recommend (full, k={HISTORY_K}, single client)", r.latency_s))


def run_histories(args: argparse.Namespace) -> int:
    data_dir = Settings().require_data_dir()
    data = HISTORY_DATASETS[args.dataset]
    seqs = data.load(data_dir)
    if args.eval_sessions:
        seqs = dict(list(seqs.items())[: args.eval_sessions])
    print(f"recommend quality: {args.dataset}, {len(seqs):,} users", flush=True)
    report = measure_histories(
        seqs, Settings(), data.titles(data_dir) if data.titles else None, args.ablation_every, args.index_timeout
    )
    print_histories(report, args.dataset)
    return 0


def _redis_used_memory(url: str) -> int:
    """Operator-side reading (not an input to the engine): how much memory the features take."""
    import redis

    return int(redis.Redis.from_url(url).info("memory")["used_memory"])


def _up(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--search", action="store_true", help="Home Depot search quality")
    mode.add_argument("--recommend", action="store_true", help="session recommendations (--dataset)")
    ap.add_argument(
        "--dataset",
        choices=(*RECOMMEND_DATASETS, *HISTORY_DATASETS),
        default="diginetica",
        help="recommend: sessions (SR-GNN protocol) or users' histories (amazon-*: leave-one-out)",
    )
    ap.add_argument("--queries", type=int, default=None, help="search: at most this many queries per half")
    ap.add_argument("--products", type=int, default=None, help="search: catalogue slice (labelled products first)")
    ap.add_argument("--index-timeout", type=float, default=3600.0)
    ap.add_argument(
        "--train-sessions", type=int, default=None, help="recommend: replay only the last N history sessions"
    )
    ap.add_argument(
        "--eval-sessions", type=int, default=None, help="recommend: evaluate the first N held-out sessions (or users)"
    )
    ap.add_argument("--ablation-every", type=int, default=1, help="recommend: ablation variants on every n-th session")
    ap.add_argument(
        "--live-sessions",
        type=int,
        default=2000,
        help="recommend: the last N history sessions played click by click with logged /recommend calls",
    )
    ap.add_argument("--obd-seeds", type=int, default=3, help="recommend: Open Bandit later-half table seeds (0 = skip)")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the embedded stack in a ``finally`` is stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.search:
        return run_search(args)
    if args.dataset in HISTORY_DATASETS:
        return run_histories(args)
    return run_recommend(args)


if __name__ == "__main__":
    sys.exit(main())
