"""/recommend on users' purchase histories, leave-one-out, in process over a real Redis written by
the real writer script.

    python -m bench.histories_offline [--dataset amazon-office|amazon-beauty|amazon-toys] [--users 0]

Why: the session families' fixed weights were tuned on DIGINETICA's anonymous sessions, where the
next click is often a product already viewed (repeat weight 3). A shop whose shoppers buy each
product once is another world; this bench shows what the fixed weights do there and whether the
learned fusion (``streamrec/sessions/learned.py``) finds that out from the shop's own next items.

Protocol (S3-Rec / SASRec leave-one-out): each user's last item is the test target, the one before
it the validation target, the rest the history, written as one session per user. Validation:
every user's next item is predicted from their history; the learned fusion runs test-then-train
over these predictions (as the learner runs it over logged /recommend pools). Then every user's
validation item is written, and the test item predicted from the whole history, the learned
fusion frozen. HR@10 / NDCG@10 over the items the families return (nothing outside them can
rank).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.quality import HISTORY_DATASETS, HISTORY_K, RankTally, history_event, history_user
from bench.sessions_offline import Stream
from launcher.embedded import EmbeddedRedis
from streamrec.features import FeatureStore
from streamrec.schemas import Event
from streamrec.sessions import candidates, fusion
from streamrec.sessions.learned import FEATURE_NAMES, MODES, FusionModel, features
from streamrec.settings import RecommendSettings, Settings
from streamrec.store import connect

T0 = 1_451_606_400_000  # 2016-01-01
USER_GAP_MS = 60_000
STEP_MS = 1_000
K = HISTORY_K
VARIANTS = ("fused", "stan", "vsknn", "covis", "repeat", "popular")
ALL = (*VARIANTS, *MODES[1:])  # the families, their fixed fusion, and the learned fusion's two orders


@dataclass
class Phase:
    tallies: dict[str, RankTally] = field(default_factory=lambda: {v: RankTally(k=K) for v in ALL})
    in_pool: int = 0


def purchase(user: str, n: int, pos: int, item: str, t0: int) -> Event:
    """The API bench's event for item ``pos`` of user ``n``'s history, one user a minute."""
    return Event(**history_event(user, pos, item, t0 + n * USER_GAP_MS + pos * STEP_MS))


def predict(
    fs: FeatureStore,
    users: list[tuple[str, str]],
    p: RecommendSettings,
    model: FusionModel,
    learn: bool,
    variants: Sequence[str] = ALL,
) -> Phase:
    """Rank each ``(user, target)``'s candidates every way; the learned fusion test-then-train when ``learn``."""
    phase = Phase()
    for n, (user, target) in enumerate(users):
        sc = candidates.read(fs, history_user(user), p)
        fused = fusion.rank(sc, "fused", p, keep=lambda _: True)
        pool = [c.item_id for c in fused]
        F = features(pool, sc.families, sc.prefix, [0.0] * len(pool), p.family_top_n)
        for v in variants:
            if v in MODES:
                ranked = [pool[j] for j in model.order(F, v)[0][:K]]
            else:
                out = fused if v == "fused" else fusion.rank(sc, v, p, keep=lambda _: True)
                ranked = [c.item_id for c in out[:K]]
            phase.tallies[v].add(ranked, target)
        if target in pool:
            phase.in_pool += 1
            if learn:
                model.learn(F, pool.index(target))
        if learn and (n + 1) % 2000 == 0:
            print(f"  {n + 1:,} users, {model.examples:,} examples: [MRR@20, HR@20] {_card(model)}, {model.mode}")
    return phase


def _card(model: FusionModel) -> dict[str, list[float]]:
    return {m: [round(100 * x, 2) for x in v] for m, v in model.card.items()}


def leave_one_out(
    seqs: list[tuple[str, list[str]]],
    redis_url: str,
    s: Settings,
    variants: Sequence[str] = ALL,
    valid_variants: Sequence[str] | None = None,
) -> tuple[Phase, Phase, FusionModel]:
    """The protocol over ``seqs`` (user, items with 3+ items), on a Redis at ``redis_url``:
    (validation phase, test phase, the learned fusion after validation). ``variants`` are scored
    on the test items, ``valid_variants`` (default: the same) on the validation items."""
    prefix = f"hist{time.time_ns()}:"
    stream = Stream(redis_url, prefix, s.features)
    for n, (u, items) in enumerate(seqs):
        for pos, item in enumerate(items[:-2]):
            stream.add(purchase(u, n, pos, item, T0))
    stream.flush()
    fs = FeatureStore(connect(s.replace(redis={"url": redis_url, "prefix": prefix})), prefix, s.features)
    model = FusionModel.from_settings(s)
    valid_variants = variants if valid_variants is None else valid_variants
    valid = predict(fs, [(u, items[-2]) for u, items in seqs], s.recommend, model, True, valid_variants)
    t_valid = T0 + (len(seqs) + 1) * USER_GAP_MS
    for n, (u, items) in enumerate(seqs):
        stream.add(purchase(u, n, len(items) - 2, items[-2], t_valid))
    stream.flush()
    test = predict(fs, [(u, items[-1]) for u, items in seqs], s.recommend, model, False, variants)
    return valid, test, model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=tuple(HISTORY_DATASETS), default="amazon-office")
    ap.add_argument("--users", type=int, default=0, help="the first N users (0 = all)")
    args = ap.parse_args()
    s = Settings()
    data = HISTORY_DATASETS[args.dataset]
    seqs = [(u, items) for u, items in data.load(s.require_data_dir()).items() if len(items) >= 3][: args.users or None]
    print(f"{args.dataset}: {len(seqs):,} users with 3+ items, {sum(len(items) for _, items in seqs):,} items in all")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        valid, test, model = leave_one_out(seqs, server.url, s)
    print(f"\nleave-one-out, {len(seqs):,} users, {time.perf_counter() - started:.0f} s; figures in %")
    labels = {"fused": "fixed fusion", "learned": "learned fusion", "rerank": "learned in fixed top 20"}
    for name, phase in (("validation (the learned fusion learning)", valid), ("test (learned fusion frozen)", test)):
        print(f"{name}:")
        for v in ALL:
            print(f"  {labels.get(v, v):24s} {phase.tallies[v].line()}")
    n = max(len(seqs), 1)
    print(f"target in the fused pool: validation {100 * valid.in_pool / n:.1f} %, test {100 * test.in_pool / n:.1f} %")
    print(f"learned fusion after {model.examples:,} examples: serving {model.mode}; [MRR@20, HR@20] {_card(model)}")
    assert model.average is not None
    print(f"  weights: { {f: round(float(w), 3) for f, w in zip(FEATURE_NAMES, model.average, strict=True) if w} }")
    print(data.published)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
