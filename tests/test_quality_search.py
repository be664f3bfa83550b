"""Search quality on a Home Depot slice, end to end through the running stack (bench/quality.py --search).

The full bench scores all 54,667 products and 2,9xx unseen queries; this slice keeps the same
protocol (crc32 query split, feedback only as impression-linked click/purchase events, scoring with
``impression=false``) on a few hundred queries so that CI sees a regression of any stage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import load_search_data, measure_search, print_search
from streamrec.settings import Settings

pytestmark = pytest.mark.slow


def test_search_slice_beats_baselines_and_feedback_does_not_hurt_unseen_queries(data_dir):
    data = load_search_data(Path(data_dir), max_queries=80, max_products=2500)
    report = measure_search(data, Settings(), index_timeout_s=900, label_window_s=5.0)
    print_search(report)
    before, after = report.before, report.after
    # query normalisation (numbers, fractions, units, stemming, spelling) beats plain BM25 on raw titles
    assert before["bm25"].ndcg > report.bm25_offline
    # no stage after retrieval makes results worse than the best baseline measured in the same run
    best_baseline = max(before["bm25"].ndcg, before["rrf"].ndcg)
    assert before["full"].ndcg >= best_baseline - 0.01
    # the feedback reached the learner through events only, and unseen queries are not worse after it
    assert report.version_after > report.version_before
    assert after["full"].ndcg >= before["full"].ndcg - 0.01
