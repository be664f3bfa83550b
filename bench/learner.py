"""How fast and how well does the learner learn? Prints

(1) training examples/s: the full path (join → features → prequential predict → drift →
    learn) and the micro-batch step alone, on the 60,000 real Open Bandit impressions;
(2) freshness, p50/p99: (a) ModelStore.publish → a poller in *another process* polling
    latest_version() every --poll-ms (serving's default 200 ms) has load()ed it; (b) a click
    sent to Kafka → that poller has loaded a version trained on it (learner service running
    on embedded Tansu + Redis, learner.publish_every_s=--publish-s);
(3) quality: prequential click AUC, online vs popularity on the whole stream (paired bootstrap
    interval of the difference) and online vs the champion frozen at the half vs popularity on
    the later half, each difference with its paired interval — on the stationary stream, on
    shuffled (stationary by construction) replays and with the injected shift of
    learner/experiments.py (each detector's first firing after the shift, and how many clicks
    the 500 events after it hold), and on the raw stream with and without sampled negatives.

  python -m bench.learner --trials 40
  python -m bench.learner --skip throughput publish event raw --seeds 1   # quick quality look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from learner import experiments as E
from learner.estimator import OnlineRanker
from learner.examples import Batch, Example
from learner.online import OnlineLearner
from learner.replay import replay
from streamrec.datasets import open_bandit as ob
from streamrec.features import ReplayFeatures
from streamrec.model_store import ModelStore
from streamrec.ranking import N_FEATURES, RankingHead
from streamrec.settings import Settings

POLLER = """
import json, sys, time
from streamrec.model_store import ModelStore
store, every, until = ModelStore(sys.argv[1]), float(sys.argv[2]), time.time() + float(sys.argv[3])
last = None
while time.time() < until:
    v = store.latest_version()
    if v and v != last:
        version, head, meta = store.load(v)
        print(json.dumps({"t": time.time(), "v": version, "examples": meta.get("examples")}), flush=True)
        last = v
    time.sleep(every)
"""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def latency_line(name: str, xs: list[float]) -> str:
    return f"{name:52s} n={len(xs):4d}  p50={pct(xs, 50) * 1000:7.1f} ms  p99={pct(xs, 99) * 1000:7.1f} ms"


def poller(root: Path, every_s: float, duration_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", POLLER, str(root), str(every_s), str(duration_s)], stdout=subprocess.PIPE, text=True
    )


def seen_times(proc: subprocess.Popen) -> list[dict]:
    out, _ = proc.communicate(timeout=120)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def throughput(data_dir: Path) -> None:
    vectors, attrs = E.item_tables(data_dir)
    events = list(ob.events(data_dir))
    core = OnlineLearner(OnlineRanker(seed=0), E.LEARNER, E.DRIFT)
    t0 = time.perf_counter()
    log = replay(events, core, ReplayFeatures(attrs), vectors.get, batch_size=64)
    dt = time.perf_counter() - t0
    n = len(log.p_click)
    full = n / dt
    print(f"full path (join+features+step), batch 64     {full:10.0f} examples/s  ({n} examples, {dt:.1f} s)")
    rng = np.random.default_rng(0)
    ex = [
        Example(
            "r", str(i), "u", 0, rng.normal(size=N_FEATURES).astype(np.float32), i % 3, float(rng.random() < 0.05), 0.0
        )
        for i in range(64 * 200)
    ]
    chunks = [ex[k : k + 64] for k in range(0, len(ex), 64)]
    t0 = time.perf_counter()
    for c in chunks:
        core.step(c)
    dt = time.perf_counter() - t0
    print(f"micro-batch step alone (predict+drift+learn), 64 {len(ex) / dt:10.0f} examples/s")
    t0 = time.perf_counter()
    for c in chunks:
        core.champion.learn(Batch.of(c))
    dt = time.perf_counter() - t0
    print(f"torch update alone, batch 64                  {len(ex) / dt:10.0f} examples/s")
    print(f"full path / torch update alone (same run)      {full / (len(ex) / dt):10.2f}")


def publish_to_visible(trials: int, every_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        store.publish(RankingHead(), {"reason": "warm"})
        proc = poller(Path(tmp), every_s, trials * 0.35 + 5)
        time.sleep(2.0)  # the poller is up and has seen the warm version
        published: dict[int, float] = {}
        for _ in range(trials):
            t = time.time()
            v = store.publish(RankingHead(), {"reason": "bench"})
            published[v] = t
            time.sleep(0.3 + np.random.default_rng(v).random() * 0.05)
        seen = {s["v"]: s["t"] for s in seen_times(proc)}
    lat = [seen[v] - t for v, t in published.items() if v in seen]
    print(latency_line(f"publish -> loaded by poller (poll {every_s * 1000:.0f} ms)", lat))
    if len(lat) < len(published):
        print(f"  ({len(published) - len(lat)} versions superseded before the poller saw them)")


def event_to_visible(trials: int, every_s: float, publish_s: float) -> None:
    from launcher.embedded import EmbeddedKafka, EmbeddedRedis
    from learner.service import run
    from streamrec import bus
    from streamrec.schemas import Event, encode

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedKafka(Path(tmp) / "k") as kafka,
        EmbeddedRedis(Path(tmp) / "r") as redis_srv,
    ):
        bus.wait_for_broker(kafka.bootstrap)
        tag = uuid.uuid4().hex[:6]
        s = Settings(
            state_dir=Path(tmp) / "state",
            kafka={"bootstrap": kafka.bootstrap},
            redis={"url": redis_srv.url, "prefix": f"b{tag}:"},
            learner={
                "label_window_s": 600,
                "publish_every_s": publish_s,
                "publish_every_updates": 1_000_000,
                "max_batch_delay_s": 0.02,
                "follow_vectors": False,
            },
        )
        bus.ensure_topics(s)
        stop = threading.Event()
        th = threading.Thread(target=run, args=(s, stop), daemon=True)
        th.start()
        store = ModelStore.from_settings(s)
        while store.latest_version() < 1:
            time.sleep(0.05)
        proc = poller(s.models_dir, every_s, trials * 0.8 + 10)
        producer = bus.make_producer(s, linger_ms=0)
        sent: list[float] = []
        now = int(time.time() * 1000)

        def click(k: int) -> None:
            producer.send(
                s.topic.events,
                key="u",
                value=encode(
                    Event(event_id=f"c{k}", type="click", user_id="u", ts=now + 1, request_id=f"r{k}", item_id="a")
                ),
            )
            producer.flush()

        for k in range(trials + 1):  # impressions first: each click then becomes one example at once
            producer.send(
                s.topic.events,
                key="u",
                value=encode(
                    Event(
                        event_id=f"i{k}",
                        type="impression",
                        user_id="u",
                        ts=now,
                        request_id=f"r{k}",
                        item_ids=["a", "b"],
                    )
                ),
            )
        producer.flush()
        click(0)  # warm-up: the consumer group has joined once this one is in a published version
        while (store.meta(store.latest_version()).get("examples") or 0) < 1:
            time.sleep(0.05)
        for k in range(1, trials + 1):
            sent.append(time.time())
            click(k)
            time.sleep(0.6 + np.random.default_rng(k).random() * 0.2)
        seen = seen_times(proc)
        stop.set()
        th.join(30)
        producer.close()
    lat = []
    for k, t in enumerate(sent, start=2):  # the k-th example is the (k-1)-th timed click
        first = next((x["t"] for x in seen if (x["examples"] or 0) >= k), None)
        if first is not None:
            lat.append(first - t)
    print(
        latency_line(f"click -> model visible (publish {publish_s * 1000:.0f} ms, poll {every_s * 1000:.0f} ms)", lat)
    )


def later_half(r: E.RunResult, n_boot: int = 1000) -> str:
    """Later half of the stream: online vs itself frozen at the half vs popularity, each
    difference with its paired bootstrap 95 % interval."""
    a = r.aucs()
    f, flo, fhi = r.versus_frozen(n_boot=n_boot)
    d, lo, hi = r.versus_popularity("later_half", n_boot=n_boot)
    return (
        f"later half: online {a['online_same_rows']:.3f}  frozen-at-half {a['frozen_post']:.3f}  popularity "
        f"{a['popularity_post']:.3f}; online-frozen {f:+.3f} [{flo:+.3f}, {fhi:+.3f}]  online-popularity "
        f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    )


def ceiling(r: E.RunResult, n_boot: int = 1000) -> str:
    """The later half's ceiling for a linear head (``RunResult.later_half_ceiling``)."""
    c = r.later_half_ceiling(n_boot=n_boot)
    return "; ".join(
        f"{name.replace('_', '-')} {a:.3f} (vs popularity {d:+.3f} [{lo:+.3f}, {hi:+.3f}])"
        for name, (a, d, lo, hi) in c.items()
    )


def quality(data_dir: Path, seeds: int = 3, raw: bool = True) -> None:
    print("stationary stream (every click + 5 % of non-clicks); popularity counts every earlier click:")
    for seed in range(seeds):
        rows, half = E.open_bandit_stream(data_dir, seed=seed)
        r = E.run(data_dir, rows, half, freeze_at_shift=True)
        a = r.aucs()
        d, lo, hi = r.versus_popularity("whole")
        print(
            f"  seed {seed}  whole stream: online {a['online']:.3f}  popularity {a['popularity']:.3f}  "
            f"difference {d:+.3f} [95% {lo:+.3f}, {hi:+.3f}]   {later_half(r)}   rows={len(rows)} "
            f"detections={len(r.log.detections)}"
        )
        print(f"           ceiling of a logistic regression fitted on the later half's own labels: {ceiling(r)}")
    print("shuffled (stationary by construction) stream, same rows in random order:")
    for shuffle in range(1, seeds + 1):
        rows, half = E.open_bandit_stream(data_dir, shuffle_seed=shuffle)
        r = E.run(data_dir, rows, half, freeze_at_shift=True)
        print(f"  shuffle {shuffle}  {later_half(r)}   detections={len(r.log.detections)}")
    print("injected remap-only shift at the half (learner/experiments.py):")
    for seed in range(seeds + 1):
        rows, half = E.open_bandit_stream(data_dir, shift=True, seed=seed)
        r = E.run(data_dir, rows, half, freeze_at_shift=True)
        a = r.aucs()
        lags = {
            name: r.first_detection_after_shift((det,))
            for name, det in (
                ("click rank", "adwin_click_rank"),
                ("clicked item", "adwin_clicked_item"),
                ("loss", "adwin_loss"),
                ("PH ctr", "page_hinkley_ctr"),
            )
        }
        early = sum(i < r.shift_event for i, _ in r.log.detections)
        print(
            f"  seed {seed}  later half: online {a['online_same_rows']:.3f}  frozen-at-half {a['frozen_post']:.3f}  "
            f"popularity {a['popularity_post']:.3f}   first detection after the shift (events): "
            f"{', '.join(f'{k} {v}' for k, v in lags.items())}; before it: {early}; challengers started "
            f"{[i - r.shift_event for i in r.log.challenger_starts]}, promoted "
            f"{[i - r.shift_event for i in r.log.promotions]}; clicks in the 500 events after the shift: "
            f"{r.clicks_after_shift(500)}"
        )
    fa = 0
    for seed in range(1, 6):  # stationary: shuffled replays must raise nothing
        rows, half = E.open_bandit_stream(data_dir, shuffle_seed=seed, seed=seed)
        fa += len(E.run(data_dir, rows, half).log.detections)
    print(f"shuffled x5: false alarms (all detectors) over 5 stationary shuffled replays: {fa}")
    if not raw:
        return
    rows = ob.merged(data_dir)  # the raw stream, no down-sampling
    for rate in (1.0, 0.05):
        cfg = E.LEARNER.model_copy(update={"train_negative_rate": rate})
        r = E.run(data_dir, rows, len(rows) // 2, learner=cfg, freeze_at_shift=True)
        a = r.aucs()
        d, lo, hi = r.versus_popularity("whole", n_boot=200)
        p, y, _ = r.log.arrays()
        print(
            f"raw 0.5% CTR, learning from {rate:.0%} of non-clicks: whole stream: online {a['online']:.3f}  "
            f"popularity {a['popularity']:.3f}  difference {d:+.3f} [95% {lo:+.3f}, {hi:+.3f}]   "
            f"{later_half(r, n_boot=200)}   mean p {p.mean():.4f} vs CTR {y.mean():.4f}   rows={len(rows)}  "
            f"detections={len(r.log.detections)}"
        )
        if rate < 1:
            print(f"  ceiling of a logistic regression fitted on the later half's own labels: {ceiling(r, n_boot=200)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--poll-ms", type=float, default=200.0)
    ap.add_argument(
        "--publish-s",
        type=float,
        default=Settings().learner.publish_every_s,
        help="the learner's learner.publish_every_s (default: the shipped setting)",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "publish", "event", "quality", "raw"])
    ap.add_argument("--seeds", type=int, default=3, help="quality: stationary seeds and shuffles (shifted: one more)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_dir = Settings().require_data_dir()
    print(
        f"streamrec learner bench — torch {torch.__version__}, 1 thread, batch 64/32, Adam lr "
        f"{E.LEARNER.lr} (challenger x{OnlineLearner.CHALLENGER_LR_SCALE})"
    )
    if "throughput" not in args.skip:
        throughput(data_dir)
    if "publish" not in args.skip:
        publish_to_visible(args.trials, args.poll_ms / 1000)
    if "event" not in args.skip:
        event_to_visible(args.trials, args.poll_ms / 1000, args.publish_s)
    if "quality" not in args.skip:
        quality(data_dir, seeds=args.seeds, raw="raw" not in args.skip)


if __name__ == "__main__":
    main()
