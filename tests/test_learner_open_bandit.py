"""The learner core on real Open Bandit impressions (positions, clicks, timestamps as logged).

Stream and injected shift are described in ``learner/experiments.py``: the shift is a remap only
(clicks move to the less clicked half of each campaign's items; same rows, same click rate).
Each replay takes 1-3 s.

"Clearly beats popularity" is judged on the whole prequential stream with a paired bootstrap
interval of the AUC difference (``learner.evaluation.auc_difference``): the popularity baseline
counts every click the head's features count, including the users' imported click histories
(the Open Bandit affinity columns, see ``streamrec/datasets/open_bandit.py``). Measured, seeds
0/1/2: online 0.602/0.600/0.595 vs popularity 0.551/0.553/0.554, difference 95 % intervals
[0.025, 0.078] / [0.022, 0.074] / [0.014, 0.069]. On the later half alone the two are at parity
(0.563 vs 0.555 on seed 0, interval [-0.029, 0.042]): the head's edge is the history, and most
of what history says is said early.

The shift is detected by the click-rank ADWIN (``learner/drift.py``): per click, the percentile
of the champion's score for the clicked item among its recent scores — a rolling AUC, which the
remap pushes down. Measured, seeds 0/1/2/3: first detection 432 / 366 / 597 / 438 events
after the shift (the 500 events after it hold ~22 clicks), nothing before it; the challenger is
promoted on every seed; later-half AUC online 0.597 / 0.592 / 0.546 / 0.582 vs the champion
frozen at the shift 0.437 / 0.483 / 0.441 / 0.423. No detection on shuffled stationary replays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner import experiments as E


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shifted(data_dir) -> E.RunResult:
    rows, half = E.open_bandit_stream(data_dir, shift=True, seed=0)
    return E.run(data_dir, rows, half, freeze_at_shift=True)


@pytest.fixture(scope="module")
def stationary(data_dir) -> list[E.RunResult]:
    out = []
    for seed in (0, 1, 2):
        rows, half = E.open_bandit_stream(data_dir, seed=seed)
        out.append(E.run(data_dir, rows, half))
    return out


def test_remap_only_shift_keeps_the_click_rate(data_dir):
    plain, half = E.open_bandit_stream(data_dir, seed=0)
    rows, half2 = E.open_bandit_stream(data_dir, shift=True, seed=0)
    assert half == half2 and len(rows) == len(plain)
    assert [r.item_id for r in rows] == [r.item_id for r in plain]  # the same impressions
    before = np.mean([r.click for r in plain[half:]])
    after = np.mean([r.click for r in rows[half:]])
    assert abs(after - before) <= 0.1 * before, (before, after)
    moved = sum(a.click != b.click for a, b in zip(rows[half:], plain[half:], strict=True))
    assert moved > 100  # most post-shift clicks landed on other rows


HARMFUL = ("adwin_click_rank", "adwin_clicked_item", "adwin_loss", "page_hinkley_ctr")


def test_shift_is_detected_within_500_events_and_nothing_before(shifted):
    before = [(i, d.detector) for i, d in shifted.log.detections if i < shifted.shift_event]
    assert before == [], f"drift reported before the shift: {before}"
    lag = shifted.first_detection_after_shift(HARMFUL)
    assert lag is not None and lag <= 500, f"first detection {lag} events after the shift"
    first = next(d for i, d in shifted.log.detections if i - shifted.shift_event == lag)
    assert first.detector == "adwin_click_rank"  # the model's ranking of clicks fell
    assert first.evidence["mean_after"] < first.evidence["mean_before"]  # the rolling AUC fell
    assert shifted.log.challenger_starts[0] - shifted.shift_event == lag


def test_every_seed_detects_the_shift_and_promotes_a_better_challenger(data_dir):
    """Seeds 1-3 (seed 0 is the fixture). Measured lags 366 / 597 / 438 events (seed 0: 432);
    later-half AUC online 0.592 / 0.546 / 0.582 vs frozen 0.483 / 0.441 / 0.423. With the 12
    query-product columns (always 0 on this stream) the head's random initialisation differs and
    seed 2 detects at 662, hence the bound of 700."""
    for seed in (1, 2, 3):
        rows, half = E.open_bandit_stream(data_dir, shift=True, seed=seed)
        r = E.run(data_dir, rows, half, freeze_at_shift=True)
        lag = r.first_detection_after_shift(HARMFUL)
        assert not [i for i, _ in r.log.detections if i < r.shift_event], seed
        assert lag is not None and lag <= 700, (seed, lag)
        assert r.log.promotions and r.log.promotions[0] > r.shift_event, seed
        a = r.aucs()
        assert a["online_same_rows"] > a["frozen_post"] + 0.05, (seed, a)


def test_challenger_takes_over_and_beats_the_frozen_champion(shifted):
    assert shifted.log.promotions, "the challenger was never promoted"
    assert shifted.log.promotions[0] > shifted.log.challenger_starts[0] >= shifted.shift_event
    a = shifted.aucs()
    # the frozen champion ranks by the old concept: below chance once clicks moved to other items
    assert a["frozen_post"] < 0.5, a
    assert a["online_same_rows"] > a["frozen_post"] + 0.08, a
    assert a["online_post"] > a["popularity_post"] + 0.1, a
    assert a["online_post"] > 0.55, a


def test_online_head_keeps_up_with_popularity_on_the_later_half(stationary):
    for r in stationary:
        a = r.aucs()
        assert a["online_later_half"] > a["popularity_later_half"] - 0.02, a


def test_the_later_half_leaves_no_room_for_a_clear_win_over_popularity(stationary):
    """Why no head beats popularity on the later half with an interval above 0: a logistic
    regression on the head's inputs plus log(1 + popularity) and the slot, fitted on the later
    half's *own* labels, only just clears popularity in-sample (measured: +0.037 to +0.049, lower
    bounds -0.004 to +0.010), and cross-fitted, future rows included, it falls below it."""
    for r in stationary:
        c = r.later_half_ceiling(n_boot=200)
        in_auc, in_diff, in_low, _ = c["in_sample"]
        cv_auc, cv_diff, _, _ = c["cross_fitted"]
        assert in_auc > cv_auc + 0.03, c  # seeing the answers flatters the fit
        assert in_low < 0.02 and cv_diff < 0.0, c
        assert r.aucs()["online_later_half"] > cv_auc, (r.aucs(), c)  # the online head beats the honest fit


def test_online_head_clearly_beats_chance_and_popularity(stationary):
    for r in stationary:
        a = r.aucs()
        assert a["online"] > 0.55, a
        diff, low, _high = r.versus_popularity("whole")
        assert diff >= 0.02 and low > 0, (a, diff, low)


@pytest.mark.slow
def test_on_the_raw_stream_training_on_sampled_negatives_beats_popularity(data_dir):
    """All 60,000 impressions at their 0.5 % click rate: the head learns from every click and 5 %
    of the non-clicks (``train_negative_rate``) but is scored on every impression. Measured:
    online 0.591 vs popularity 0.534, interval [0.015, 0.095]; learning from every non-click
    instead, 0.533 (the clicks drown); later half 0.479 vs popularity 0.562 — the head's edge is
    again the users' histories, and after it the item counters it learns from are noisier than
    the cumulative count popularity keeps."""

    from streamrec.datasets import open_bandit as ob

    rows = ob.merged(data_dir)
    r = E.run(data_dir, rows, len(rows) // 2, learner=E.LEARNER.model_copy(update={"train_negative_rate": 0.05}))
    p, y, _ = r.log.arrays()
    assert len(y) == 60_000
    assert 0.5 * y.mean() < p.mean() < 2 * y.mean()  # calibrated to the stream, not to the sample
    diff, low, _high = r.versus_popularity("whole", n_boot=200)
    assert diff >= 0.02 and low > 0, (r.aucs(), diff, low)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stationary_shuffled_replay_raises_no_drift_and_learning_on_costs_nothing(data_dir, seed):
    """A shuffled replay is stationary by construction: no detector may fire, and the head that
    keeps learning must not rank the later half worse than itself frozen at the half. Measured,
    shuffles 1/2/3 (later half, online vs frozen): 0.621 vs 0.608, 0.574 vs 0.570, 0.618 vs 0.617
    (shuffles 4/5: 0.630 vs 0.632, 0.648 vs 0.656), every paired interval of the difference
    straddling 0 — on a stationary stream learning on neither helps nor hurts measurably once
    the first half is learned."""
    rows, half = E.open_bandit_stream(data_dir, shuffle_seed=seed)
    r = E.run(data_dir, rows, half, freeze_at_shift=True)
    assert r.log.detections == [], [(i, d.detector, d.what) for i, d in r.log.detections]
    assert r.log.challenger_starts == [] and r.log.promotions == []
    assert len(r.log.p_click) == len(rows)  # every impression was scored before it was learned
    diff, _low, high = r.versus_frozen()
    assert diff >= -0.01 and high > 0, (r.aucs(), diff, high)  # not worse, and not measurably so
