"""Learning from simulated shoppers, online, through the public API: the standard way online learning
to rank is evaluated (Hofmann et al. 2011; Oosterhuis & de Rijke 2018), on Home Depot's graded labels.

    python -m bench.online                        # informational noise, position-based clicks, 8 rounds
    python -m bench.online --click-model cascade --noise navigational --rounds 8
    python -m bench.online --ablations            # every configuration in ABLATIONS, one stack each

Three disjoint sets of real queries (a stable crc32 split) over one catalogue slice:

* **clicked**: each round, every query is searched by a new shopper (a logged ``GET /search``), who
  clicks through a click model over the graded labels; every click (and the purchases of 30 % of
  clicks on exact matches) is posted to ``POST /events`` with the impression's ``request_id``,
  ``query`` and ``position``, as a storefront sends it;
* **not logged**: searched with ``impression=false`` each round (QA traffic): only what was learned
  from *other* queries can move them;
* **non-clickers**: searched, logged, by shoppers who never click (bots, browsers that prefetch, QA
  with impressions on): their impressions reach the learner and the counters.

The figure of each round is the nDCG@10 of what was *served* (gain = relevance − 1, unlabelled
products 0): the clicked queries must improve, the other two sets must not get worse.

Click models (grades 0 … 2 = relevance − 1; a fractional grade interpolates linearly):

* position-based (PBM): rank k is examined with probability (1/k)^eta, an examined product is
  clicked with P(click | grade); clicks are independent of each other;
* cascade (DCM): the shopper scans from the top, clicks with P(click | grade), and after a click
  stops with P(stop | grade).

Noise levels (P(click), P(stop) at grades 0 / 1 / 2), Hofmann et al.'s three-grade values:
perfect (0, .5, 1 / 0, 0, 0), navigational (.05, .5, .95 / .2, .5, .9), informational
(.4, .7, .9 / .1, .3, .5).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.quality import (
    SearchData,
    load_search_data,
    ndcg_at,
    post_all,
    search_ids,
    start_stack,
    wait_for,
    wait_indexed,
    wait_model_settled,
)
from launcher.stack import LocalStack
from streamrec.analysis import query_key
from streamrec.query_versions import QueryVersions
from streamrec.settings import SearchSettings, Settings

NOISE = {  # P(click | grade 0, 1, 2), P(stop | grade 0, 1, 2)
    "perfect": ((0.0, 0.5, 1.0), (0.0, 0.0, 0.0)),
    "navigational": ((0.05, 0.5, 0.95), (0.2, 0.5, 0.9)),
    "informational": ((0.4, 0.7, 0.9), (0.1, 0.3, 0.5)),
}
PURCHASE_SHARE = 0.3  # of clicks on exact matches (grade ≥ 1.5)
K = 10  # results per page: what a shopper sees and what nDCG@10 scores

# Configurations compared by --ablations: settings overrides of the stack (one fresh stack each).
# (``Settings.replace`` arguments: a group and the fields it changes).
NO_EXPLORATION = {"explore_share": 0.0, "swap_share": 0.0}
NOTHING_LEARNED = {"head_weight": 0.0, "expansion_boost": 0.0, "memory_weight": 0.0}
DEFAULT_MEMORY_WEIGHT = SearchSettings().memory_weight
TUNING_OFF = {"enabled": False}  # the encoder's query side (learner/query_tuning.py)
ABLATIONS: dict[str, dict[str, dict[str, object]]] = {
    "learning off": {"search": {**NOTHING_LEARNED, **NO_EXPLORATION}, "query_tuning": TUNING_OFF},
    # the head served as it was before its scorecard, learning from every list (clicked or not)
    "head ungated, all lists": {
        "search": {**NOTHING_LEARNED, "head_weight": 0.5, "head_gate": False, **NO_EXPLORATION},
        "learner": {"skip_clickless_searches": False},
        "query_tuning": TUNING_OFF,
    },
    "expansion only": {
        "search": {**NOTHING_LEARNED, "expansion_boost": 0.5, **NO_EXPLORATION},
        "query_tuning": TUNING_OFF,
    },
    "click memory only": {
        "search": {**NOTHING_LEARNED, "memory_weight": DEFAULT_MEMORY_WEIGHT, **NO_EXPLORATION},
        "query_tuning": TUNING_OFF,
    },
    "query tuning only": {"search": {**NOTHING_LEARNED, **NO_EXPLORATION}},
    "full, no exploration": {"search": dict(NO_EXPLORATION)},
    "full without query tuning": {"query_tuning": TUNING_OFF},
    "full (default settings)": {},
    "full + expansion 0.5": {"search": {"expansion_boost": 0.5}},
}


@dataclass(frozen=True)
class ClickModel:
    kind: str  # "pbm" | "cascade"
    noise: str
    eta: float = 1.0  # PBM examination (1/k)^eta

    def probabilities(self, grade: float) -> tuple[float, float]:
        """(P(click), P(stop)) at a fractional grade in [0, 2]."""
        click, stop = NOISE[self.noise]
        g = min(2.0, max(0.0, grade))
        lo = min(1, int(g))
        w = g - lo
        return click[lo] * (1 - w) + click[lo + 1] * w, stop[lo] * (1 - w) + stop[lo + 1] * w

    def clicks(self, grades: Sequence[float], rng: random.Random) -> list[int]:
        """The 0-based positions a simulated shopper clicks, top first."""
        out = []
        for k, g in enumerate(grades):
            p_click, p_stop = self.probabilities(g)
            if self.kind == "pbm":
                if rng.random() < (1.0 / (k + 1)) ** self.eta and rng.random() < p_click:
                    out.append(k)
            else:
                if rng.random() < p_click:
                    out.append(k)
                    if rng.random() < p_stop:
                        break
        return out


@dataclass
class OnlineData:
    products: dict[str, str]
    clicked: dict[str, dict[str, float]]  # query -> {product: relevance 1..3}
    not_logged: dict[str, dict[str, float]]
    non_clickers: dict[str, dict[str, float]]


def query_group(q: str) -> int:
    """The stable split: 0 clicked, 1 not logged, 2 served to non-clickers. By the query's key
    (``streamrec.analysis.query_key``), so two spellings of one query, which the click memory treats
    as one, never land in two sets."""
    return zlib.crc32(("online:" + query_key(q)).encode()) % 3


def load_online_data(data_dir: Path, per_set: int, max_products: int) -> OnlineData:
    """Home Depot queries with at least one partly relevant product, split three ways; the
    catalogue slice holds every labelled product of the chosen queries, then others in file order."""
    full = load_search_data(data_dir)
    labels = {**full.feedback, **full.evaluation}
    useful = {q: lab for q, lab in sorted(labels.items()) if max(lab.values()) >= 2.0}
    sets: list[dict[str, dict[str, float]]] = [{}, {}, {}]
    for q, lab in useful.items():
        g = query_group(q)
        if len(sets[g]) < per_set:
            sets[g][q] = lab
    chosen = SearchData(full.products, {**sets[0], **sets[1]}, sets[2])
    sliced = _slice(chosen, max_products)
    return OnlineData(sliced, sets[0], sets[1], sets[2])


def _slice(data: SearchData, max_products: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for lab in (*data.feedback.values(), *data.evaluation.values()):
        for pid in lab:
            out[pid] = data.products[pid]
    for pid, title in data.products.items():
        if len(out) >= max_products:
            break
        out.setdefault(pid, title)
    return out


@dataclass
class RoundScore:
    clicked: float  # nDCG@10 of what the clicked queries' shoppers were served (logged, explored)
    not_logged: float
    non_clickers: float  # their ranking after their (logged, unclicked) search, asked again unlogged
    clicks: int = 0
    purchases: int = 0
    model_version: int = 0
    head_earned: bool = False  # the head reordered /search at the end of the round (its scorecard)
    query_encoder: str = ""  # the query-encoder version served at the end of the round ("" = pretrained)


@dataclass
class OnlineReport:
    config: str
    click_model: ClickModel
    start: RoundScore | None = None  # before any click, nothing logged, nothing explored
    rounds: list[RoundScore] = field(default_factory=list)
    final: RoundScore | None = None  # after the last round's clicks were learned, nothing logged

    def lift(self, what: str) -> float:
        """final − start: what learning changed, without exploration on either side."""
        assert self.start is not None and self.final is not None
        return getattr(self.final, what) - getattr(self.start, what)

    def exploration_cost(self) -> float:
        """Round 1's served nDCG of the clicked queries below the same ranking unexplored."""
        assert self.start is not None
        return self.start.clicked - self.rounds[0].clicked


def _grades(ids: Sequence[str], lab: dict[str, float]) -> list[float]:
    return [lab.get(i, 1.0) - 1.0 for i in ids]


def play_round(
    http: httpx.Client, data: OnlineData, model: ClickModel, rng: random.Random, round_no: int, shoppers: bool = True
) -> RoundScore:
    """One round: every clicked query by a new shopper (clicks posted), every non-clicker query
    logged without a click, every not-logged query scored. ``shoppers`` False: score only, unlogged."""
    served: list[float] = []
    clicks = purchases = 0
    for n, (q, lab) in enumerate(data.clicked.items()):
        user = f"shopper-{round_no}-{n}"
        params = {"user_id": user} if shoppers else {"impression": "false"}
        ids, _t, body = search_ids(http, q, K, "full", **params)
        served.append(ndcg_at(ids, lab))
        if not shoppers:
            continue
        now = int(time.time() * 1000)
        events = []
        for pos in model.clicks(_grades(ids, lab), rng):
            pid = ids[pos]
            common = dict(user_id=user, item_id=pid, request_id=body["request_id"], position=pos, query=q)
            events.append(dict(event_id=f"{body['request_id']}-c{pos}", type="click", ts=now + 1 + pos, **common))
            clicks += 1
            if lab.get(pid, 1.0) - 1.0 >= 1.5 and rng.random() < PURCHASE_SHARE:
                events.append(dict(event_id=f"{body['request_id']}-p{pos}", type="purchase", ts=now + 20, **common))
                purchases += 1
        if events:  # as the shopper acts: seconds after the page, inside the learner's label window
            post_all(http, "/events", events)
    non_clicked = []
    for n, (q, lab) in enumerate(data.non_clickers.items()):
        if shoppers:
            search_ids(http, q, K, "full", user_id=f"browser-{n % 20}")  # logged, never clicked
        non_clicked.append(ndcg_at(search_ids(http, q, K, "full", impression="false")[0], lab))
    not_logged = [
        ndcg_at(search_ids(http, q, K, "full", impression="false")[0], lab) for q, lab in data.not_logged.items()
    ]
    return RoundScore(
        float(np.mean(served)), float(np.mean(not_logged)), float(np.mean(non_clicked)), clicks, purchases
    )


def simulate(
    http: httpx.Client, stack: LocalStack, data: OnlineData, model: ClickModel, rounds: int, seed: int, config: str
) -> OnlineReport:
    rng = random.Random(seed)
    report = OnlineReport(config, model)
    report.start = play_round(http, data, model, rng, 0, shoppers=False)
    for r in range(1, rounds + 1):
        score = play_round(http, data, model, rng, r)
        score.model_version = wait_model_settled(http, after_s=stack.settings.learner.label_window_s + 1.0, quiet_s=3.0)
        wait_tuned(http, stack)
        health = http.get("/healthz").json()
        score.head_earned = bool(health.get("search_head_earned"))
        encoder = str(health.get("encoder", ""))
        score.query_encoder = encoder.partition("+query-")[2]
        report.rounds.append(score)
        print(
            f"  [{config}] round {r}: clicked {score.clicked:.4f} · not logged {score.not_logged:.4f} · "
            f"non-clickers {score.non_clickers:.4f} · {score.clicks} clicks, {score.purchases} purchases · "
            f"model v{score.model_version}{' (head ranks search)' if score.head_earned else ''}"
            f"{f' · query encoder {score.query_encoder}' if score.query_encoder else ''}",
            flush=True,
        )
    report.final = play_round(http, data, model, rng, rounds + 1, shoppers=False)
    return report


def wait_tuned(http: httpx.Client, stack: LocalStack, timeout_s: float = 900.0) -> None:
    """Until the learner's query-encoder training (if one started on this round's clicks) has ended
    and serving follows what it published: a shop's rounds are hours apart, this bench's seconds."""
    store = QueryVersions(stack.settings.query_encoders_dir)
    wait_for(lambda: not store.status().get("training"), timeout_s, "query-encoder training ended")
    wanted = store.current()
    if wanted:
        wait_for(lambda: f"+query-v{wanted}" in http.get("/healthz").json().get("encoder", ""), 120, "served")


def index_catalogue(http: httpx.Client, stack: LocalStack, products: dict[str, str], timeout_s: float) -> None:
    now = int(time.time() * 1000)
    catalog = [dict(op="upsert", item_id=pid, ts=now, title=title) for pid, title in products.items()]
    post_all(http, "/catalog", catalog, label="catalog")
    wait_indexed(http, len(catalog), timeout_s=timeout_s)
    last_id, last_title = catalog[-1]["item_id"], catalog[-1]["title"]
    wait_for(
        lambda: last_id in search_ids(http, last_title, 10, "bm25", impression="false")[0],
        120,
        "lexical index caught up",
    )
    stack.wait_ready(timeout_s=120, min_items=len(catalog))


def run_config(
    config: str,
    overrides: dict[str, object],
    data: OnlineData,
    model: ClickModel,
    rounds: int,
    seed: int,
    base: Settings,
) -> OnlineReport:
    stack = start_stack(base.replace(learner={"label_window_s": 2.0, "publish_every_s": 0.5}), **overrides)
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            wait_for(lambda: _up(http), 300, "API up")
            index_catalogue(http, stack, data.products, timeout_s=3600)
            return simulate(http, stack, data, model, rounds, seed, config)
    finally:
        stack.stop()


def _up(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def print_online(reports: list[OnlineReport]) -> None:
    if not reports:
        return
    m = reports[0].click_model
    rounds = len(reports[0].rounds)
    print()
    print(
        f"Simulated shoppers ({m.kind}, {m.noise} noise, eta {m.eta:g}), nDCG@10: 'before' and 'after' unlogged "
        f"(before any click / after the last round's clicks were learned); rounds 1..{rounds}: the clicked "
        "queries as served (logged, explored), the others as ranked for them at that round"
    )
    head = "".join(f"{r:>7d}" for r in range(1, rounds + 1))
    print(f"{'configuration':26s} {'set':13s} {'before'}{head}  {'after':>6s} {'lift':>7s} {'min−r1':>7s}")
    for rep in reports:
        assert rep.start is not None and rep.final is not None
        for what, name in (("clicked", "clicked"), ("not_logged", "not logged"), ("non_clickers", "non-clickers")):
            vals = [getattr(s, what) for s in rep.rounds]
            worst = min(vals[1:]) - vals[0] if len(vals) > 1 else 0.0
            cells = "".join(f"{v:7.4f}" for v in vals)
            before, after = getattr(rep.start, what), getattr(rep.final, what)
            print(
                f"{rep.config:26s} {name:13s} {before:6.4f}{cells}  {after:6.4f} {rep.lift(what):+7.4f} {worst:+7.4f}"
            )
        total_clicks = sum(s.clicks for s in rep.rounds)
        print(
            f"{'':26s} {'clicks':13s} {'':6s}{''.join(f'{s.clicks:7d}' for s in rep.rounds)}  total {total_clicks}; "
            f"round-1 cost of exploration {rep.exploration_cost():+.4f}"
        )


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the stack's services are stopped
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=5000, help="catalogue slice (labelled products first)")
    ap.add_argument("--queries", type=int, default=200, help="queries in each of the three sets")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--click-model", choices=("pbm", "cascade"), default="pbm")
    ap.add_argument("--noise", choices=tuple(NOISE), default="informational")
    ap.add_argument("--eta", type=float, default=1.0, help="PBM examination (1/rank)^eta")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablations", action="store_true", help="every configuration in ABLATIONS, one stack each")
    ap.add_argument("--configs", help="names of ABLATIONS to run, separated by |")
    args = ap.parse_args()
    base = Settings()
    data = load_online_data(base.require_data_dir(), args.queries, args.products)
    model = ClickModel(args.click_model, args.noise, args.eta)
    print(
        f"online learning: {len(data.products):,} Home Depot products; {len(data.clicked)} clicked / "
        f"{len(data.not_logged)} not-logged / {len(data.non_clickers)} non-clicker queries; {model}",
        flush=True,
    )
    configs = ABLATIONS if args.ablations else {"full (default settings)": {}}
    if args.configs:
        configs = {name: ABLATIONS[name] for name in args.configs.split("|")}
    reports = []
    for name, overrides in configs.items():
        reports.append(run_config(name, overrides, data, model, args.rounds, args.seed, base))
        print_online(reports)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
