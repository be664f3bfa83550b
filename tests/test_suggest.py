"""Autocomplete from the stream: the feature writer's suggestions (script and twin agree in
tests/test_feature_parity.py), read by serving's follower and completed by prefix, later word and
typo; only searches followed by a click, add to cart or purchase, never a view, never quarantined."""

from __future__ import annotations

import pytest

from serving.suggest import SuggestFollower
from streamrec.features import ReplayFeatures
from streamrec.schemas import CatalogOp, Event
from streamrec.settings import FeatureSettings

T0 = 1_700_000_000_000


def _event(k: int, typ: str, query: str | None, user: str = "u", ts: int | None = None) -> Event:
    return Event(event_id=f"e{k}", type=typ, user_id=f"{user}{k}", item_id="i", ts=ts or T0 + k, query=query)


def test_choices_after_a_search_are_counted_views_are_not_and_old_ones_fade():
    fs = ReplayFeatures({})
    for k, (typ, q) in enumerate(
        [("click", "Copper Pipe"), ("purchase", "copper pipe"), ("view", "garden hose"), ("click", "pipe cutter")]
    ):
        fs.observe(_event(k, typ, q))
    got = dict(fs.suggestions(10))
    assert set(got) == {"copper pipe", "pipe cutter"}  # case folded into one; the view chose nothing
    weights = FeatureSettings()
    assert got["copper pipe"] > got["pipe cutter"] > 0
    assert got["copper pipe"] / got["pipe cutter"] == pytest.approx(
        (weights.weight("click") + weights.weight("purchase")) / weights.weight("click"), rel=1e-3
    )
    day = 24 * 3_600_000
    fs.observe(_event(9, "click", "garden hose", ts=T0 + day))  # a day later: the earlier ones decayed
    assert fs.suggestions(1)[0][0] == "garden hose"


def test_the_follower_completes_by_prefix_later_word_and_typo():
    fs = ReplayFeatures({})
    searches = ["copper pipe"] * 5 + ["copper pipes"] * 2 + ["copper elbow"] * 3 + ["pipe cutter"] * 4
    for k, q in enumerate(searches + ["garden hose"]):
        fs.observe(_event(k, "click", q))
    follower = SuggestFollower(fs, cap=100)
    assert follower.poll() == 4  # "copper pipes" is "copper pipe" (one query key): shown once
    complete = follower.current.complete
    assert [t for t, _ in complete("copper", 5)[0]] == ["copper pipe", "copper elbow"]
    assert [t for t, _ in complete("pip", 5)[0]] == ["pipe cutter", "copper pipe"]  # a later word too
    assert complete("COPPER  E", 5)[0][0][0] == "copper elbow"
    found, corrected = complete("coper e", 5)  # one letter missing in a finished word
    assert [t for t, _ in found] == ["copper elbow"] and corrected == "copper e"
    found, corrected = complete("garden hoes", 5)  # two letters swapped in the last word
    assert [t for t, _ in found] == ["garden hose"] and corrected == "garden hose"
    assert complete("telescope", 5) == ([], None)
    assert complete("c", 1)[0] == [("copper pipe", pytest.approx(dict(fs.suggestions(10))["copper pipe"]))]


def test_a_new_query_appears_on_the_next_poll():
    fs = ReplayFeatures({})
    follower = SuggestFollower(fs, cap=100)
    follower.poll()
    assert follower.current.complete("tele", 5)[0] == []
    fs.observe(_event(1, "add_to_cart", "telescope eyepiece"))
    follower.poll()
    assert follower.current.complete("tele", 5)[0][0][0] == "telescope eyepiece"


def test_suggestions_within_a_category_count_the_chosen_products_category_at_every_level():
    fs = ReplayFeatures({})
    for item, category in [("drill", "Tools > Power Tools"), ("hose", "Garden")]:
        fs.observe(CatalogOp(op="upsert", item_id=item, ts=T0, title=item, category=category))
    for k, (q, item) in enumerate([("cordless drill", "drill"), ("cordless drill", "drill"), ("garden hose", "hose")]):
        fs.observe(Event(event_id=f"c{k}", type="click", user_id=f"u{k}", item_id=item, ts=T0 + k, query=q))
    follower = SuggestFollower(fs, cap=100)
    follower.poll()
    assert [t for t, _ in follower.current.complete("", 5)[0]] == []
    assert [t for t, _ in follower.within("Tools").complete("c", 5)[0]] == ["cordless drill"]
    assert [t for t, _ in follower.within("Tools >Power  Tools").complete("c", 5)[0]] == ["cordless drill"]
    assert follower.within("Garden").complete("c", 5)[0] == []
    assert [t for t, _ in follower.within("Garden").complete("gar", 5)[0]] == ["garden hose"]
    assert follower.within("Kitchen").complete("c", 5)[0] == []
