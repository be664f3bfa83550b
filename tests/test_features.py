"""The Redis feature layout: the atomic writer and the readers, on the real Redis."""

from __future__ import annotations

import math
import time

import pytest

from consumers.apply import Writer
from streamrec.features import FeatureStore
from streamrec.schemas import CatalogOp, Event, encode
from streamrec.settings import BotSettings, FeatureSettings
from streamrec.store import connect_binary

T0 = 1_700_000_000_000
HOUR = 3_600_000


def ev(i, user="u", item="a", typ="view", ts=None, session="s", **kw) -> Event:
    return Event(
        event_id=f"e{i}",
        type=typ,
        user_id=user,
        item_id=item,
        ts=T0 + i * 1000 if ts is None else ts,
        session_id=session,
        **kw,
    )


class Feed:
    """Feeds models to the writer as consecutive offsets of one partition."""

    def __init__(self, settings, features=None, bot=None, partition=0):
        self.w = Writer(
            connect_binary(settings), settings.redis.prefix, "g", features, bot or BotSettings(user_limit=0)
        )
        self.fs = FeatureStore.from_settings(settings)
        if features:
            self.fs.config = features
        self.partition = partition
        self.next = 0

    def __call__(self, *models):
        recs = [(self.next + i, m, encode(m), b"k") for i, m in enumerate(models)]
        res = self.w.apply("t", self.partition, recs, self.next + len(models))
        self.next += len(models)
        return res


def test_decayed_counts_do_not_depend_on_arrival_order(settings):
    stamps = [T0, T0 + 5 * HOUR, T0 + 2 * HOUR, T0 + 30 * HOUR, T0 + HOUR]
    a = Feed(settings, partition=0)
    a(*[ev(i, item="x", ts=ts, user=f"u{i}") for i, ts in enumerate(stamps)])
    b = Feed(settings, partition=1)
    b(*[ev(i, item="y", ts=ts, user=f"v{i}") for i, ts in enumerate(sorted(stamps))])
    now = T0 + 40 * HOUR
    x, y = a.fs.item_stats(["x", "y"], now_ms=now)
    tau = FeatureSettings().tau_ms(FeatureSettings().item_half_life_s)
    want = sum(math.exp(-(now - ts) / tau) for ts in stamps)
    assert x.counts["view"] == pytest.approx(want, rel=1e-12) and y.counts["view"] == pytest.approx(want, rel=1e-12)
    assert a.fs.item_counts("x") == {"view": 5}


def test_ctr_is_smoothed_clicks_over_impressions(settings):
    f = Feed(settings)
    imps = [
        Event(event_id=f"imp{i}", type="impression", user_id=f"u{i}", request_id=f"r{i}", item_ids=["a", "b"], ts=T0)
        for i in range(100)
    ]
    f(*imps, *[ev(200 + i, user=f"c{i}", item="a", typ="click", ts=T0) for i in range(10)])
    cfg = FeatureSettings()
    a, b, never = f.fs.item_stats(["a", "b", "zz"], now_ms=T0)
    assert (a.impressions, a.clicks) == (pytest.approx(100), pytest.approx(10))
    assert a.ctr == pytest.approx((10 + cfg.ctr_prior_clicks) / (100 + cfg.ctr_prior_impressions))
    assert b.ctr == pytest.approx(cfg.ctr_prior_clicks / (100 + cfg.ctr_prior_impressions))
    assert never.ctr == pytest.approx(cfg.ctr_prior_clicks / cfg.ctr_prior_impressions) and never.impressions == 0
    assert f.fs.item_counts("a") == {"impression": 100, "click": 10}


def test_caps_bound_memory(settings):
    cfg = FeatureSettings(
        recent_cap=5, covis_top_n=3, trending_cap=4, category_cap=2, covis_lookback=5, dedup_lookback=5
    )
    f = Feed(settings, features=cfg)
    f(*[CatalogOp(op="upsert", item_id=f"i{k}", ts=T0, title=f"t{k}", category=f"c{k}") for k in range(8)])
    # one session touching i0..i7: i0 co-visited with 7 others, trimmed to the 3 strongest
    f(
        ev(0, item="i1"),
        ev(1, item="i0"),
        ev(2, item="i1", typ="click"),
        ev(3, item="i2"),
        ev(4, item="i0", typ="click"),
    )
    f(*[ev(10 + k, item=f"i{k}") for k in range(3, 8)])
    assert len(f.fs.recent_items("u", 100)) == 5
    cv = f.fs.covisited("i0", 100)
    assert len(cv) == 3 and cv[0] == ("i1", 3.0)
    assert len(f.fs.trending(100)) == 4
    aff = f.fs.category_affinity("u")
    assert len(aff) == 2 and "c7" in aff  # the weakest categories were evicted, the newest kept


def test_catalog_ops_apply_in_event_time_order(settings):
    f = Feed(settings)
    f(CatalogOp(op="upsert", item_id="a", ts=T0 + 10, title="new", category="x", price=3.0))
    f(CatalogOp(op="upsert", item_id="a", ts=T0, title="old", category="y"))  # late and older: ignored
    assert f.fs.item_attributes(["a"]) == [{"title": "new", "category": "x", "price": 3.0}]
    f(CatalogOp(op="patch", item_id="a", ts=T0 + 12, price=None, category="z"))  # only what it names
    f(CatalogOp(op="patch", item_id="a", ts=T0 + 11, title="late"))  # older than the last change: ignored
    assert f.fs.item_attributes(["a"]) == [{"title": "new", "category": "z", "price": None}]
    f(CatalogOp(op="delete", item_id="a", ts=T0 + 20))
    f(CatalogOp(op="patch", item_id="a", ts=T0 + 30, price=1.0))  # deleted: a patch does not bring it back
    f(CatalogOp(op="patch", item_id="never", ts=T0 + 30, price=1.0))
    assert f.fs.item_attributes(["a", "never"]) == [None, None]


def test_a_replayed_batch_changes_nothing(settings):
    f = Feed(settings)
    batch = [ev(i, item=f"i{i % 3}") for i in range(6)]
    f(*batch)
    before = f.fs.item_counts("i0")
    recs = [(i, m, encode(m), b"k") for i, m in enumerate(batch)]
    res = f.w.apply("t", 0, recs, 6)  # delivered again after a crash before the Kafka commit
    assert (res.applied, res.skipped) == (0, 6) and f.fs.item_counts("i0") == before == {"view": 2}
    res = f.w.apply("t", 0, [(9, batch[0], b"{}", b"k")], 10)  # a batch that skips offsets 6..8
    assert res.status == "gap" and res.stored_before == 6


def test_readers_on_an_empty_store(settings):
    fs = FeatureStore.from_settings(settings)
    assert fs.recent_items("nobody") == [] and fs.covisited("x") == [] and fs.trending() == []
    assert fs.category_affinity("nobody") == {} and fs.item_attributes(["x"]) == [None]
    assert fs.item_stats(["x"])[0].counts == {"view": 0.0, "click": 0.0, "add_to_cart": 0.0, "purchase": 0.0}


def test_user_and_item_keys_expire(settings):
    f = Feed(settings)
    f(ev(0, item="a"), ev(1, item="b"))
    k, r = f.fs.keys, f.fs.r
    cfg = FeatureSettings()
    for key, ttl in [
        (k.user("u"), cfg.user_ttl_s),
        (k.recent("u"), cfg.user_ttl_s),
        (k.item("a"), cfg.item_ttl_s),
        (k.covis("a"), cfg.item_ttl_s),
        (k.covis("b"), cfg.item_ttl_s),
        (k.session("ss"), cfg.session_ttl_s),
        (k.item_sessions("a"), cfg.item_ttl_s),
    ]:
        assert 0 < r.ttl(key) <= ttl, key


def test_session_state_is_capped_and_keeps_the_newest(settings):
    cfg = FeatureSettings(session_cap=3, item_sessions_cap=2)
    f = Feed(settings, features=cfg)
    f(*[ev(i, item=f"i{i}", session="s1") for i in range(5)])
    f(ev(10, user="v", item="i0", session="s2"), ev(11, user="w", item="i0", session=None, ts=T0 - 1))
    f(ev(12, item="i0", session="s1", ts=T0 + 50_000))
    assert f.fs.session_items("ss1") == ["i3", "i4", "i0"]  # oldest first, the last session_cap
    assert f.fs.item_sessions(["i0", "i4", "none"]) == [
        [("ss1", T0 + 50_000.0), ("ss2", T0 + 10_000.0)],  # the user-as-session "uw" was the oldest: trimmed
        [("ss1", T0 + 4_000.0)],
        [],
    ]
    cur = f.fs.current_session("u")
    assert (
        cur is not None
        and cur.token == "ss1"
        and [r.item_id for r in cur.items] == ["i0", "i1", "i2", "i3", "i4", "i0"][-3:]
    )
    assert f.fs.current_session("w").token == "uw" and f.fs.current_session("nobody") is None


def test_neighbour_sessions_are_the_most_recent_sharing_an_item(settings):
    f = Feed(settings)
    f(ev(0, user="v", item="a", session="s1"), ev(1, user="v", item="b", session="s1"))
    f(ev(2, user="w", item="b", session="s2"), ev(3, user="w", item="c", session="s2"))
    f(ev(4, user="x", item="a", session="s3"), ev(5, user="y", item="z", session="s4"))
    got = f.fs.neighbour_sessions(["a", "b"], own="ss3", sample=2)
    assert [(v.token, v.ts, v.items) for v in got] == [
        ("ss2", T0 + 2000.0, ["b", "c"]),
        ("ss1", T0 + 1000.0, ["a", "b"]),
    ]
    assert [v.token for v in f.fs.neighbour_sessions(["a"], own=None, sample=10)] == ["ss3", "ss1"]
    assert f.fs.neighbour_sessions([], own=None, sample=10) == [] and f.fs.neighbour_sessions(["none"], None, 5) == []


def test_serving_reads_trending_from_a_copy_at_most_trending_cache_s_old(settings):
    f = Feed(settings)
    f(ev(1, item="a", typ="purchase"))
    cached = FeatureStore(f.fs.r, settings.redis.prefix, trending_cache_s=0.3)
    assert [i for i, _ in cached.trending(10)] == ["a"]
    f(ev(2, item="b", typ="purchase"), ev(3, item="b", typ="purchase"))
    assert [i for i, _ in cached.trending(5)] == ["a"]  # the copy, not yet expired
    assert [i for i, _ in f.fs.trending(10)][0] == "b"  # an uncached reader sees the change at once
    time.sleep(0.35)
    assert [i for i, _ in cached.trending(10)][0] == "b"  # re-read once older than trending_cache_s
    assert cached.trending(500) == f.fs.trending(500)  # a longer list than the copy holds is read anew


def test_bought_together_pairs_a_baskets_carts_and_purchases_only(settings):
    f = Feed(settings)
    f(
        ev(0, item="drill", typ="add_to_cart"),
        ev(1, item="bits", typ="view"),  # looked at, not bought: co-visited only
        ev(2, item="battery", typ="purchase"),
        ev(3, item="drill", typ="purchase"),  # the same item again counts once per pair
        ev(4, user="v", item="saw", typ="purchase", session="other"),
        ev(5, item="case", typ="add_to_cart", session="later"),  # another basket
    )
    assert f.fs.bought_together(["drill", "battery", "bits", "case"], 10) == [
        [("battery", 1.0)],
        [("drill", 1.0)],
        [],
        [],
    ]
    assert "bits" in dict(f.fs.covisited("drill", 10))  # co-visited, not bought together


def _reads(fs: FeatureStore, users: list[str], items: list[str]) -> tuple:
    """What serving reads of these users and items (trending's sums may round differently by batch)."""
    return (
        [fs.item_counts(i) for i in items],
        [fs.covisited(i, 100) for i in items],
        [fs.user_counts(u) for u in users],
        [[r.item_id for r in fs.recent_items(u, 50)] for u in users],
        [(item, pytest.approx(score, rel=1e-12)) for item, score in fs.trending(100)],
        fs.clock_ms(),
    )


def test_a_large_batch_is_applied_in_atomic_parts_and_a_crash_between_them_loses_nothing(settings, monkeypatch):
    import consumers.apply

    models = [ev(i, user=f"u{i % 3}", item=f"i{i % 5}", session=f"s{i % 3}") for i in range(10)]
    users, items = [f"u{k}" for k in range(3)], [f"i{k}" for k in range(5)]
    one_call = Feed(settings.replace(redis={"prefix": settings.redis.prefix + "one:"}))
    assert one_call(*models).applied == 10

    monkeypatch.setattr(consumers.apply, "CALL_RECORDS", 4)  # 10 records: calls of 4, 4 and 2
    parts = Feed(settings)
    script, calls = parts.w.script, []

    def crash_on_second_call(**kw):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("Redis went away between two calls")
        return script(**kw)

    parts.w.script = crash_on_second_call
    with pytest.raises(ConnectionError):
        parts(*models)
    assert parts.w.stored_offset("t", 0) == 4  # the first part is in, with its offsets; nothing of the second
    parts.w.script = script
    parts.next = 0  # Kafka delivers the whole batch again
    res = parts(*models)
    assert (res.status, res.stored_before, res.skipped, res.applied) == ("ok", 4, 4, 6)
    assert parts.w.stored_offset("t", 0) == 10
    assert _reads(parts.fs, users, items) == _reads(one_call.fs, users, items)


def test_the_compiled_config_keeps_any_prefix_byte_for_byte(settings):
    """The writer compiles its config (key names included) into the script's text: a prefix with
    quotes, backslashes and non-ASCII letters must name the same keys the readers use."""
    odd = settings.replace(redis={"prefix": settings.redis.prefix + 'q"uo\\te-é∑:'})
    f = Feed(odd)
    assert f(ev(1, item="a"), ev(2, item="b")).applied == 2
    assert f.fs.item_counts("a") == {"view": 1} and f.fs.covisited("a", 5) == [("b", 1.0)]
    assert f.w.stored_offset("t", 0) == 2
