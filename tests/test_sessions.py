"""The session candidate families and their fusion, on small hand-made sessions (no Redis)."""

from __future__ import annotations

import pytest

from streamrec.sessions import families, fusion
from streamrec.sessions.families import Neighbour
from streamrec.sessions.params import FAMILIES
from streamrec.settings import RecommendSettings, Settings

DAY = 86_400_000
P = RecommendSettings()


def ranked(scores: dict[str, float], exclude=()) -> list[str]:
    return [x for x, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if x not in exclude]


def test_every_family_has_a_fixed_weight_in_the_layout_order():
    assert tuple(P.weights) == FAMILIES
    assert P.weights == {"repeat": 3.0, "stan": 1.0, "vsknn": 0.25, "covis": 0.1, "popular": 0.001}


def test_the_recommend_group_reads_every_knob_from_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMREC_RECOMMEND_SAMPLE", "7")
    monkeypatch.setenv("STREAMREC_RECOMMEND_RECENCY_DAYS", "2")
    monkeypatch.setenv("STREAMREC_RECOMMEND_WEIGHT_STAN", "0.5")
    p = Settings().recommend
    assert p.sample == 7 and p.recency_ms == 2 * DAY and p.weights["stan"] == 0.5


def test_repeat_decays_with_steps_back_and_sums_occurrences():
    assert families.repeat(["a", "b", "a"], 0.6) == pytest.approx({"a": 1.0 + 0.36, "b": 0.6})


def test_stan_ranks_the_neighbours_next_item_first():
    prefix = ["a", "b"]
    neighbours = [
        Neighbour("s1", ["x", "a", "b", "c", "d"], ts=10 * DAY),  # went on from b to c, then d
        Neighbour("s2", ["a", "e"], ts=10 * DAY),  # shares only the older a
        Neighbour("s3", ["q", "r"], ts=10 * DAY),  # shares nothing: not a neighbour
    ]
    scored = families.stan_neighbours(prefix, neighbours, P)
    assert [s.neighbour.token for s in scored] == ["s1", "s2"] and scored[0].anchor == "b"
    order = ranked(families.stan(scored, P), exclude=prefix)
    assert order[0] == "c" and order.index("d") < order.index("x") and "q" not in order


def test_stan_prefers_recent_neighbours_in_event_time():
    same = ["a", "b", "c"]
    scored = families.stan_neighbours(
        ["a", "b"], [Neighbour("old", [*same, "o"], ts=0), Neighbour("new", [*same, "n"], ts=60 * DAY)], P
    )
    assert [s.neighbour.token for s in scored] == ["new", "old"]
    assert scored[1].sim == pytest.approx(scored[0].sim * 2.718281828 ** (-60 / 30), rel=1e-6)
    scores = families.stan(scored, P)
    assert scores["n"] > scores["o"] > 0


def test_neighbour_count_is_capped():
    many = [Neighbour(f"s{i}", ["a", f"x{i}"], ts=i) for i in range(50)]
    scored = families.stan_neighbours(["a"], many, P.model_copy(update={"neighbours": 5}))
    assert [s.neighbour.token for s in scored] == ["s49", "s48", "s47", "s46", "s45"]  # ties: the newest


def test_vsknn_weights_by_position_of_the_shared_item():
    neighbours = [Neighbour("s1", ["b", "c"], ts=0), Neighbour("s2", ["a", "e"], ts=0)]
    scores = families.vsknn(["a", "b"], neighbours, k=200)
    assert scores == pytest.approx({"b": 1.0, "c": 1.0, "a": 0.25, "e": 0.25})


def test_covis_sums_rows_of_the_prefix_newest_first():
    rows = {"b": [("c", 2.0)], "a": [("c", 1.0), ("e", 4.0)]}
    assert families.covis(["a", "b", "b"], rows, 0.5) == pytest.approx({"c": 2.0 + 0.25, "e": 1.0})


def test_fuse_normalises_each_family_and_weights_it():
    scores = {
        "repeat": {"a": 2.0, "b": 1.0},
        "stan": {"c": 10.0, "a": 5.0},
        "popular": {"z": 1000.0, "c": 10.0},
    }
    fused = fusion.fuse(scores, {"repeat": 3.0, "stan": 1.0, "popular": 0.001}, top_n=50)
    by_id = {f.item_id: f for f in fused}
    assert [f.item_id for f in fused] == ["a", "b", "c", "z"]
    assert by_id["a"].score == pytest.approx(3.0 + 0.5) and by_id["c"].score == pytest.approx(1.0 + 0.00001)
    assert by_id["a"].parts == pytest.approx({"repeat": 3.0, "stan": 0.5})


def test_fuse_takes_each_familys_top_n_and_drops_zero_weights():
    scores = {"stan": {f"i{k}": float(k) for k in range(10)}, "covis": {"x": 1.0}}
    fused = fusion.fuse(scores, {"stan": 1.0, "covis": 0.0}, top_n=3)
    assert [f.item_id for f in fused] == ["i9", "i8", "i7"]
