"""Search quality and learning from shoppers on a Home Depot slice, end to end through one running
stack (``bench/quality.py --search`` and ``bench/online.py`` in small).

First every stage is scored on all the slice's queries before any click (``impression=false``),
beside plain BM25 computed offline; then simulated shoppers (a position-based click model with
Hofmann et al.'s navigational noise: mostly near the top, sometimes the wrong product, often no
click at all) search and click for a few rounds while other queries are searched without being
logged and others by shoppers who never click. What was clicked must improve; the queries that got
no click must not get worse. ``bench/online.py`` runs the noisier click models on a larger slice.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.online import ClickModel, index_catalogue, load_online_data, print_online, simulate
from bench.quality import SearchData, offline_bm25_ndcg, score_search, start_stack
from streamrec.settings import Settings
from tests.polling import clicks_learned

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_stages_beat_the_baselines_and_shoppers_clicks_help_what_they_clicked_and_harm_nothing_else(data_dir):
    data = load_online_data(Path(data_dir), per_set=40, max_products=1500)
    queries = {**data.clicked, **data.not_logged, **data.non_clickers}  # none clicked yet
    bm25_offline = offline_bm25_ndcg(SearchData(data.products, {}, queries))
    stack = start_stack(Settings(), learner={"label_window_s": 2.0, "publish_every_s": 0.5})
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            index_catalogue(http, stack, data.products, timeout_s=900)
            before = {v: score_search(http, queries, v) for v in ("bm25", "dense", "rrf", "fused", "full")}
            print({v: round(score.ndcg, 4) for v, score in before.items()}, f"plain bm25s offline {bm25_offline:.4f}")
            report = simulate(http, stack, data, ClickModel("pbm", "navigational"), ROUNDS, seed=0, config="slice")
            learned = clicks_learned(http)
    finally:
        stack.stop()
    print_online([report])

    # query normalisation beats plain BM25 on raw titles
    assert before["bm25"].ndcg > bm25_offline
    # the full path is not worse than the best first-stage baseline beyond what 120 queries can tell
    # apart (two standard errors of the paired difference; on larger catalogues fusion wins: README)
    best = max(("bm25", "rrf"), key=lambda v: before[v].ndcg)
    diff = np.subtract(before["full"].per_query, before[best].per_query)
    assert diff.mean() >= -2 * diff.std(ddof=1) / np.sqrt(len(diff)), (best, diff.mean())
    # the clicks reached the learner, joined to their impressions
    assert learned > 0
    # what was clicked improves, and no round of it is served worse than the first
    assert report.lift("clicked") >= 0.02, report
    assert min(r.clicked for r in report.rounds[1:]) >= report.rounds[0].clicked - 0.01, report
    # queries nobody clicked are not worse: searched without being logged, or by shoppers who never click
    assert report.lift("not_logged") >= -0.005, report
    assert report.lift("non_clickers") >= -0.005, report
