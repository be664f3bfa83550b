"""Session candidates read from the real writer script's state: a new session's clicks move them."""

from __future__ import annotations

import pytest

from streamrec.features import ReplayFeatures
from streamrec.sessions import candidates, fusion
from streamrec.settings import RecommendSettings
from tests.test_features import Feed, ev

P = RecommendSettings()
HISTORY = {  # session -> items, in the order they were viewed
    "h1": ["a", "b", "c"],
    "h2": ["a", "b", "c", "e"],
    "h3": ["x", "y", "z"],
    "h4": ["b", "d"],
}


def history_events():
    out, i = [], 0
    for session, items in HISTORY.items():
        for item in items:
            out.append(ev(i, user=f"user-{session}", item=item, session=session))
            i += 1
    return out


def top_new(features, user: str) -> list[str]:
    """The fused ranking without the items already in the session."""
    sc = candidates.read(features, user, P)
    ranked = fusion.rank(sc, "fused", P, keep=lambda _: True, exclude=set(sc.prefix))
    return [c.item_id for c in ranked]


def test_a_new_sessions_clicks_move_its_candidates(settings):
    f = Feed(settings)
    f(*history_events())
    f(ev(100, user="new", item="x", session="n1"))
    assert top_new(f.fs, "new")[:2] == ["y", "z"]
    f(ev(101, user="new", item="a", session="n1"), ev(102, user="new", item="b", session="n1"))
    after = top_new(f.fs, "new")
    assert after[0] == "c" and after.index("c") < after.index("y")
    sc = candidates.read(f.fs, "new", P)
    assert sc.prefix == ["x", "a", "b"] and sc.neighbour_anchor("c") == "b"
    assert all(s.neighbour.token != "sn1" for s in sc.neighbours)  # never its own neighbour
    assert max(sc.families["repeat"], key=sc.families["repeat"].get) == "b"


def test_reasons_name_the_family_and_the_anchor(settings):
    f = Feed(settings)
    f(*history_events(), ev(100, user="new", item="a", session="n1"), ev(101, user="new", item="b", session="n1"))
    sc = candidates.read(f.fs, "new", P)
    by_id = {c.item_id: c for c in fusion.rank(sc, "full", P, keep=lambda _: True)}
    title = str.upper
    assert "viewed after 'B' in similar sessions" in fusion.reasons(by_id["c"], sc, title)
    assert fusion.reasons(by_id["b"], sc, title)[0] == "you viewed this earlier in this session"
    assert "c" not in {c.item_id for c in fusion.rank(sc, "full", P, keep=lambda i: i != "c")}


def test_a_user_without_history_gets_only_trending(settings):
    f = Feed(settings)
    f(*history_events())
    sc = candidates.read(f.fs, "nobody", P)
    assert sc.prefix == [] and set(sc.families) == {"popular"} and sc.families["popular"]


def test_the_replay_twin_gives_the_same_candidates(settings):
    models = [
        *history_events(),
        ev(100, user="new", item="a", session="n1"),
        ev(101, user="new", item="b", session=None),
    ]
    f = Feed(settings)
    f(*models)
    rep = ReplayFeatures()
    for m in models:
        rep.observe(m)
    got, want = candidates.read(f.fs, "new", P), candidates.read(rep, "new", P)
    assert got.prefix == want.prefix == ["b"]  # the newest event has no session: the user is the session
    for family, scores in want.families.items():
        assert got.families[family] == {x: pytest.approx(v, rel=1e-9) for x, v in scores.items()}, family
