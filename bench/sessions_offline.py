"""Session candidates on DIGINETICA, in process, over a real Redis written by the real writer script.

    python -m bench.sessions_offline [--stride 10] [--limit 0] [--redis-url redis://…]

Why in process: it checks the families and their fusion (``streamrec/sessions/``, read by
``streamrec.sessions.candidates`` exactly as /recommend reads them) and times that read + fusion
with the full history in Redis, without the HTTP, index and ranking-head costs that
``bench/quality.py --recommend`` measures through the running stack.

Protocol (SR-GNN, as the colleague's offline study): sessions of ``train_sessions.jsonl`` in file
order, the first 90 % written as history (synthetic event times: one session every 70 s, one
click per second, so ~5 months like the original), then for every ``stride``-th session of the
last 10 % and every prefix ``i1..it``: ``it`` is written as that session's next event, the
families are read and scored against ``i(t+1)`` (HR@20, MRR@20). Every held-out session is
written as it goes (streaming state), evaluated or not.

The learned session fusion (``streamrec/sessions/learned.py``) runs test-then-train over the same
queries, as the learner runs it over logged /recommend pools: each query is scored by the fixed
weights, the learned ones and the learned order inside the fixed top 20 *before* the model learns
from its next item; the rows ``learned`` and ``rerank`` are those prequential scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from consumers.apply import Writer
from launcher.embedded import EmbeddedRedis
from streamrec.features import FeatureStore
from streamrec.ranking import FeatureAssembler
from streamrec.schemas import Event, encode
from streamrec.sessions import candidates, fusion
from streamrec.sessions.learned import MODES, FusionModel, features
from streamrec.settings import BotSettings, FeatureSettings, RecommendSettings, Settings
from streamrec.store import connect, connect_binary

T0 = 1_451_606_400_000  # 2016-01-01
SESSION_GAP_MS = 70_000
CLICK_GAP_MS = 1_000
BATCH = 2_000
VARIANTS = ("fused", "stan", "vsknn", "covis", "repeat", "popular")


class Stream:
    """Writes events through the consumers' writer script, as consecutive offsets of one partition."""

    def __init__(self, url: str, prefix: str, cfg: FeatureSettings):
        s = Settings(redis={"url": url, "prefix": prefix})
        bot_off = BotSettings(user_limit=0, item_limit=0, repeat_gap_ms=0)
        self.writer = Writer(connect_binary(s), prefix, "bench", cfg, bot_off)
        self.offset = self.writer.stored_offset("events", 0) or 0
        self.pending: list[Event] = []

    def add(self, e: Event) -> None:
        self.pending.append(e)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        recs = [(self.offset + i, m, encode(m), None) for i, m in enumerate(self.pending)]
        res = self.writer.apply("events", 0, recs, self.offset + len(recs))
        assert res.status == "ok", res
        self.offset += len(recs)
        self.pending = []


def click(sid: int, pos: int, item: int, tag: str = "") -> Event:
    return Event(
        event_id=f"d{tag}{sid}-{pos}",
        type="view",
        user_id=f"du{tag}{sid}",
        item_id=str(item),
        session_id=f"ds{tag}{sid}",
        ts=T0 + sid * SESSION_GAP_MS + pos * CLICK_GAP_MS,
    )


def rank_of(ids: list[str], target: str) -> int | None:
    try:
        return ids.index(target) + 1
    except ValueError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Settings().data_dir / "diginetica" / "train_sessions.jsonl")
    ap.add_argument("--stride", type=int, default=10, help="evaluate every n-th held-out session")
    ap.add_argument("--limit", type=int, default=0, help="held-out sessions to run (0 = all)")
    ap.add_argument("--redis-url", default="", help="default: a throw-away embedded Redis")
    ap.add_argument("--prefix", default="", help="key prefix (default: a fresh one)")
    ap.add_argument("--skip-history", action="store_true", help="the history is already under --prefix")
    ap.add_argument("--tag", default="", help="held-out ids get this tag (rerun over a kept history)")
    ap.add_argument("--history-only", action="store_true", help="write the history, then stop")
    args = ap.parse_args()
    sessions = [json.loads(line) for line in args.data.open()]
    n_hist = int(0.9 * len(sessions))
    held = sessions[n_hist:][: args.limit or None]
    cfg = FeatureSettings()
    p = RecommendSettings()
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.redis_url else EmbeddedRedis(Path(tmp)).__enter__()
        url = args.redis_url or server.url
        prefix = args.prefix or f"bench{int(time.time())}:"
        stream = Stream(url, prefix, cfg)
        started = time.perf_counter()
        for sid, items in enumerate(sessions[:n_hist] if not args.skip_history else []):
            for pos, item in enumerate(items):
                stream.add(click(sid, pos, item))
        stream.flush()
        r = connect(Settings(redis={"url": url, "prefix": prefix}))
        print(
            f"history: {n_hist} sessions written in {time.perf_counter() - started:.0f} s; "
            f"Redis used_memory {r.info('memory')['used_memory'] / 2**20:.0f} MiB"
        )
        if args.history_only:
            return 0
        fs = FeatureStore(r, prefix, cfg)
        hits = {v: [0, 0.0] for v in (*VARIANTS, *MODES[1:])}
        model = FusionModel.from_settings(Settings())
        timings: list[float] = []
        cpu_timings: list[float] = []  # this process's CPU only: robust to a busy host, excludes Redis
        assemble_timings: list[float] = []
        assembler = FeatureAssembler(fs, lambda _: None)
        queries = 0
        for k, items in enumerate(held):
            sid = n_hist + k
            evaluate = k % args.stride == 0
            for pos, item in enumerate(items):
                stream.add(click(sid, pos, item, args.tag))
                if not evaluate or pos + 1 >= len(items):
                    continue
                stream.flush()
                target = str(items[pos + 1])
                t, cpu = time.perf_counter(), time.process_time()
                sc = candidates.read(fs, f"du{args.tag}{sid}", p)
                fused = fusion.rank(sc, "fused", p, keep=lambda _: True)
                timings.append(time.perf_counter() - t)
                cpu_timings.append(time.process_time() - cpu)
                t = time.perf_counter()
                ids = [c.item_id for c in fused[:20]]  # /recommend assembles the shown k rows (head weight 0)
                assembler.assemble(user_id=f"du{args.tag}{sid}", query_vec=None, item_ids=ids, retrieval_scores=None)
                assemble_timings.append(time.perf_counter() - t)
                queries += 1
                pool = [c.item_id for c in fused]
                F = features(pool, sc.families, sc.prefix, [0.0] * len(pool), p.family_top_n)
                for v in (*VARIANTS, *MODES[1:]):
                    if v in MODES:
                        ranked_ids = [pool[j] for j in model.order(F, v)[0][:20]]
                    else:
                        ranked = fused if v == "fused" else fusion.rank(sc, v, p, keep=lambda _: True)
                        ranked_ids = [c.item_id for c in ranked[:20]]
                    rk = rank_of(ranked_ids, target)
                    if rk is not None:
                        hits[v][0] += 1
                        hits[v][1] += 1.0 / rk
                if target in pool:  # test-then-train: scored above, learned from now
                    model.learn(F, pool.index(target))
            if k % 2000 == 0:
                print(f"  held-out {k}/{len(held)}, {queries} queries", flush=True)
        stream.flush()
        print(f"queries: {queries} (every {args.stride}th of {len(held)} held-out sessions)")
        for v in (*VARIANTS, *MODES[1:]):
            print(f"  {v:8s} HR@20 {100 * hits[v][0] / queries:5.1f}  MRR@20 {100 * hits[v][1] / queries:5.1f}")
        print(
            f"learned fusion after {model.examples:,} examples: serving mode {model.mode}; recent "
            f"[MRR@20, HR@20] { ({m: [round(100 * x, 2) for x in v] for m, v in model.card.items()}) }"
        )
        for what, xs in (
            ("read + fusion", timings),
            ("read + fusion, client CPU", cpu_timings),
            ("ranking rows of the top candidates", assemble_timings),
        ):
            ms = sorted(1000 * x for x in xs)
            print(
                f"{what} per request: p50 {statistics.median(ms):.1f} ms, "
                f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
            )
        print(f"Redis used_memory {r.info('memory')['used_memory'] / 2**20:.0f} MiB")
        if server is not None:
            server.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
