"""Query-log expansion: a search outcome adds the query's terms to the item's expansion in Redis
(bounded, decayed, linked by request_id when the click has no query), and serving's lexical index
follows the change log so another query finds the item within a second."""

from __future__ import annotations

import time

import pytest

from serving.expansions import ExpansionFollower
from serving.lexical import LexicalIndex
from streamrec.features import FeatureStore, ReplayFeatures, expansion_terms
from streamrec.schemas import Event
from streamrec.settings import FeatureSettings
from streamrec.store import connect
from streamrec.vector_index.live import ItemMeta
from tests.test_features import T0, Feed

HOUR = 3_600_000


def shown(i: int, query: str | None, items=("a", "b"), user: str = "u", rid: str | None = None) -> Event:
    return Event(
        event_id=f"imp{i}",
        type="impression",
        user_id=user,
        ts=T0 + i * 1000,
        request_id=rid or f"r{i}",
        item_ids=list(items),
        query=query,
    )


def outcome(i: int, typ: str = "click", item: str = "a", user: str = "u", ts: int | None = None, **kw) -> Event:
    ts = T0 + i * 1000 if ts is None else ts
    return Event(event_id=f"e{i}", type=typ, user_id=user, item_id=item, ts=ts, session_id="s", **kw)


def test_terms_are_the_analysed_query_each_once():
    assert expansion_terms("1/2 in. Copper Pipes copper", 8) == ["1/2", "inch", "copper", "pipe"]
    assert expansion_terms("a b c d", 2) == ["b", "c"]  # 'a' is a stopword
    assert expansion_terms(None, 8) == [] and expansion_terms("", 8) == []


def test_outcomes_weigh_by_type_and_views_add_nothing(settings):
    feed = Feed(settings)
    feed(
        outcome(1, "click", query="copper pipe"),
        outcome(2, "purchase", query="copper pipe"),
        outcome(3, "add_to_cart", item="b", query="garden hose"),
        outcome(4, "view", item="c", query="garden hose"),
    )
    a, b, c = feed.fs.expansions(["a", "b", "c"], now_ms=T0 + 4000)
    assert a == {"copper": pytest.approx(5.0, rel=1e-6), "pipe": pytest.approx(5.0, rel=1e-6)}
    assert b == {"garden": pytest.approx(2.0, rel=1e-6), "hose": pytest.approx(2.0, rel=1e-6)}
    assert c == {}
    changes, newest = feed.fs.expansion_changes(0, 100)
    assert [i for i, _ in changes] == ["a", "b"] and newest == 3


def test_a_click_without_query_is_linked_to_its_search_by_request_id(settings):
    feed = Feed(settings)
    feed(shown(1, "cordless drill", rid="req-1"), shown(2, None, rid="req-2"))
    feed(
        outcome(3, item="a", request_id="req-1", position=0),  # linked: the search's query
        outcome(4, item="b", request_id="req-2"),  # its search had no query
        outcome(5, item="c", request_id="nope"),  # no such search
        outcome(6, item="d", user="other", request_id="req-1"),  # another user's search: not linked
        outcome(7, item="e"),  # not from a search at all
    )
    got = feed.fs.expansions(["a", "b", "c", "d", "e"], now_ms=T0 + 7000)
    assert set(got[0]) == {"cordless", "drill"}
    assert got[1:] == [{}, {}, {}, {}]


def test_terms_are_capped_decayed_and_expire(settings):
    cfg = FeatureSettings(expansion_cap=4, expansion_half_life_s=3600.0)
    feed = Feed(settings, features=cfg)
    feed(outcome(1, query="alpha beta gamma"))
    feed(outcome(2, query="delta epsilon"))
    feed(outcome(3, "purchase", query="alpha zeta"))
    (exp,) = feed.fs.expansions(["a"], now_ms=T0 + 3000)
    # the weakest evicted at each change (ties: the smaller term): alpha after event 2, then beta, gamma
    assert set(exp) == {"alpha", "zeta", "delta", "epsilon"}
    assert exp["alpha"] == pytest.approx(4.0) and exp["delta"] < 1.0
    (later,) = feed.fs.expansions(["a"], now_ms=T0 + 3000 + HOUR)
    assert later["alpha"] == pytest.approx(exp["alpha"] / 2, rel=1e-6)  # one half-life
    r = connect(settings)
    assert 0 < r.ttl(feed.fs.keys.expansion("a")) <= cfg.item_ttl_s


def test_redis_and_replay_agree(settings):
    cfg = FeatureSettings(expansion_cap=3, expansion_links=2, expansion_log_cap=2)
    events = [
        shown(1, "red brick wall", rid="q1"),
        shown(2, "steel door", rid="q2"),
        shown(3, "white paint", rid="q3"),  # pushes q1 out of the 2 linked searches
        outcome(4, item="a", request_id="q1"),
        outcome(5, item="a", request_id="q2"),
        outcome(6, "purchase", item="b", request_id="q3"),
        outcome(7, item="c", query="oak floor board"),
        outcome(10, item="a", query="oak door", ts=T0 - HOUR),  # late: added decayed to a's reference
        outcome(8, "add_to_cart", item="a", query="door hinge brass"),
        outcome(9, "view", item="d", query="ignored"),
    ]
    feed = Feed(settings, features=cfg)
    for e in events:
        feed(e)
    rep = ReplayFeatures(config=cfg)
    for e in events:
        rep.observe(e)
    items = ["a", "b", "c", "d"]
    for now in (None, T0 + 5 * HOUR):
        got, want = feed.fs.expansions(items, now_ms=now), rep.expansions(items, now_ms=now)
        assert got == [{t: pytest.approx(v, rel=1e-9) for t, v in w.items()} for w in want]
    assert feed.fs.expansion_changes(0, 10) == rep.expansion_changes(0, 10)
    assert len(rep.expansion_changes(0, 10)[0]) == 2  # the log's cap


def test_a_linked_click_changes_what_another_query_returns_within_a_second(settings):
    lexical = LexicalIndex(commit_interval_s=0.1, expansion_boost=1.0)
    lexical.apply({"a": ItemMeta("Hampton Bay Ceiling Fan 52 in."), "b": ItemMeta("Fan Blade Arm Set")})
    lexical.refresh()
    lexical.start()
    fs = FeatureStore.from_settings(settings)
    follower = ExpansionFollower(fs, lexical, poll_s=0.05)
    follower.start()
    try:
        assert [h.item_id for h in lexical.search("outdoor fan", 10)] == ["b", "a"]
        Feed(settings)(shown(1, "outdoor patio fan", items=("b", "a"), rid="s1"), outcome(2, item="a", request_id="s1"))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and [h.item_id for h in lexical.search("outdoor fan", 10)] != ["a", "b"]:
            time.sleep(0.02)
        assert [h.item_id for h in lexical.search("outdoor fan", 10)] == ["a", "b"]  # an unseen query
        assert set(lexical.expansion("a")) == {"outdoor", "patio", "fan"}
    finally:
        follower.stop()
        lexical.stop()


def test_the_follower_reloads_when_the_log_restarts(settings):
    lexical = LexicalIndex()
    lexical.apply({"a": ItemMeta("Ceiling Fan")})
    rep = ReplayFeatures()
    rep.observe(outcome(1, item="a", query="patio fan"))
    follower = ExpansionFollower(rep, lexical)
    assert follower.poll() == 1 and follower.poll() == 0
    lexical.refresh()
    assert set(lexical.expansion("a")) == {"patio", "fan"}
    follower.source = ReplayFeatures()  # a new, empty Redis: the item's expansion is gone
    follower.source.observe(outcome(1, item="z", query="garden"))
    follower.seen = 5
    assert follower.poll() == 1 and follower.seen == 1


def test_an_item_at_the_cap_stays_small(settings):
    """The default cap of 32 terms, each long-ish: one listpack hash, bounded in bytes."""
    feed = Feed(settings)
    words = [f"term{k:03d}word" for k in range(48)]
    for n in range(0, 48, 6):
        feed(outcome(n, "purchase", query=" ".join(words[n : n + 6])))
    (exp,) = feed.fs.expansions(["a"])
    assert len(exp) == FeatureSettings().expansion_cap
    size = connect(settings).memory_usage(feed.fs.keys.expansion("a"), samples=0)
    print(f"qx:{{}} at the cap: {size} B")
    assert size <= 1_500
