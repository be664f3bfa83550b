"""The learner core on real Open Bandit impressions (positions, clicks, timestamps as logged).

Stream and injected shift are described in ``learner/experiments.py``. Each replay takes ~2 s.
"""

from __future__ import annotations

import pytest
import torch

from learner import experiments as E


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shifted(data_dir) -> E.RunResult:
    rows, half = E.open_bandit_stream(data_dir, shift=True)
    return E.run(data_dir, rows, half, freeze_at_shift=True)


def test_shift_is_detected_within_500_events(shifted):
    before = [d for i, d in shifted.log.detections if i < shifted.shift_event]
    assert before == [], f"drift reported before the shift: {before}"
    lag = shifted.first_detection_after_shift(("adwin_loss",))
    assert lag is not None and lag <= 500, f"ADWIN on the loss fired {lag} events after the shift"
    detection = next(d for i, d in shifted.log.detections if d.detector == "adwin_loss")
    assert detection.evidence["mean_after"] > detection.evidence["mean_before"]


def test_challenger_takes_over_and_beats_the_frozen_champion(shifted):
    assert shifted.log.challenger_starts and shifted.log.challenger_starts[0] >= shifted.shift_event
    assert shifted.log.promotions, "the challenger was never promoted"
    assert shifted.log.promotions[0] > shifted.log.challenger_starts[0]
    a = shifted.aucs()
    # the frozen champion ranks by the old concept: below chance once clicks moved to other items
    assert a["frozen_post"] < 0.5
    assert a["online_same_rows"] > a["frozen_post"] + 0.08, a
    assert a["online_post"] > a["popularity_post"] + 0.05, a
    assert a["online_post"] > 0.55, a


@pytest.mark.parametrize("seed", [1, 2])
def test_stationary_shuffled_replay_raises_no_drift(data_dir, seed):
    rows, half = E.open_bandit_stream(data_dir, shuffle_seed=seed)
    r = E.run(data_dir, rows, half)
    assert r.log.detections == [], [(i, d.detector, d.what) for i, d in r.log.detections]
    assert r.log.challenger_starts == [] and r.log.promotions == []
    assert len(r.log.p_click) == len(rows)   # every impression was scored before it was learned
