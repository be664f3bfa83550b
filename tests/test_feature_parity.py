"""One suite, both feature writers: the Redis script (``streamrec/features/apply.lua``, driven as
``consumers/apply.py`` drives it) and the replay's in-memory twin (``streamrec.features.ReplayFeatures``)
must give the same answer to every read, the way Feast runs one suite over every online store.

The bot filter's rate and repeat rules are switched off (they are the consumer's, not a feature
rule); the ``event_id`` dedup stays on, since both writers apply it.
"""

from __future__ import annotations

import random

import pytest

from consumers.apply import Writer
from streamrec.analysis import query_key
from streamrec.features import TRENDING_RESCALE, FeatureStore, ReplayFeatures
from streamrec.schemas import CatalogOp, Event, encode
from streamrec.settings import BotSettings, FeatureSettings
from streamrec.store import connect, connect_binary

T0 = 1_700_000_000_000
MIN = 60_000
BOT_OFF = BotSettings(user_limit=0, item_limit=0, repeat_gap_ms=0)
TIGHT = FeatureSettings(
    recent_cap=6,
    dedup_lookback=5,
    covis_lookback=4,
    covis_top_n=3,
    category_cap=2,
    trending_cap=4,
    covis_window_s=600.0,
    session_cap=3,
    item_sessions_cap=4,
    expansion_cap=3,
    expansion_links=2,
    expansion_log_cap=4,
    memory_cap=3,
    memory_positions=3,
    memory_outcome_weight=2.5,  # not 1, so a writer that ignored the weight would differ
)
ITEMS = [f"i{k}" for k in range(9)]
USERS = ["u1", "u2", "u3"]
TYPES = ["view", "click", "add_to_cart", "purchase"]
QUERIES = ["copper pipe", "1/2 in. copper elbow", "Garden  Hose 50 ft", "pipe cutter", None]


def event_list(seed: int = 7, n: int = 160) -> list[Event | CatalogOp]:
    """Sessions, repeated items, repeated event_ids, every type, impressions, catalog upserts (with and
    without a category, an older one arriving late, a delete), timestamps out of order."""
    rng = random.Random(seed)
    out: list[Event | CatalogOp] = [
        CatalogOp(
            op="upsert",
            item_id=i,
            ts=T0,
            title=f"t{i}",
            category=f"c{k % 4}" if k != 8 else None,
            price=float(k) if k % 3 else None,
        )
        for k, i in enumerate(ITEMS)
    ]
    sent: list[Event] = []
    for k in range(n):
        user = rng.choice(USERS)
        ts = T0 + k * 2 * MIN + rng.choice([0, 0, 0, -5 * MIN, -40 * MIN, 3 * MIN])  # out of order
        roll = rng.random()
        if roll < 0.08 and sent:
            out.append(rng.choice(sent[-6:]))  # a producer retry: the same event_id again
            continue
        if roll < 0.22:
            shown = Event(
                event_id=f"imp{k}",
                type="impression",
                user_id=user,
                request_id=f"r{k}",
                ts=ts,
                item_ids=rng.sample(ITEMS, 4),
                query=QUERIES[k % len(QUERIES)],
                position=2 if k % 4 == 0 else None,  # a second page now and then
            )
            out.append(shown)
            sent.append(shown)  # impressions are retried too, and must count once
            continue
        if roll < 0.26:
            item = rng.choice(ITEMS)
            if rng.random() < 0.2:  # a patch: of the category, or of the price only
                fields = {"category": rng.choice(["c7", None])} if rng.random() < 0.5 else {"price": 2.0}
                out.append(CatalogOp(op="patch", item_id=item, ts=ts, **fields))
            elif rng.random() < 0.5:
                out.append(CatalogOp(op="upsert", item_id=item, ts=ts, title="x", category=rng.choice(["c5", "c6"])))
            else:
                out.append(CatalogOp(op="upsert", item_id=item, ts=T0 - 1, title="old", category="stale"))
            continue
        if k == n // 2:
            out.append(CatalogOp(op="delete", item_id="i3", ts=ts))
            continue
        session = rng.choice([f"{user}-s{k // 40}", f"{user}-s{k // 40}", None])
        e = Event(
            event_id=f"e{k}",
            type=rng.choice(TYPES),
            user_id=user,
            item_id=rng.choice(ITEMS[:6]),
            ts=ts,
            session_id=session,
            # outcomes of searches: the query itself, or only the request_id of a recent search
            query=QUERIES[k % len(QUERIES)] if k % 3 == 0 else None,
            request_id=f"r{k - k % 7}" if k % 3 == 1 else None,
        )
        out.append(e)
        sent.append(e)
    return out + search_pages(seed, T0 + n * 2 * MIN)


def search_pages(seed: int, t: int, n: int = 40) -> list[Event | CatalogOp]:
    """Searches and the clicks on their pages (the click memory): second clicks on one page, a
    click on a product the page did not show, second pages, a page nobody clicks, add-to-carts and
    purchases after a click and a purchase straight from the page (weighted outcomes)."""
    rng = random.Random(seed + 1)
    out: list[Event | CatalogOp] = []
    for k in range(n):
        user, ts = rng.choice(USERS), t + k * MIN
        page = rng.sample(ITEMS, 5)
        out.append(
            Event(
                event_id=f"simp{k}",
                type="impression",
                user_id=user,
                request_id=f"sr{k}",
                ts=ts,
                item_ids=page,
                query=QUERIES[k % (len(QUERIES) - 1)],
                position=2 if k % 5 == 0 else None,
            )
        )
        clicked = rng.sample(page, rng.choice([0, 1, 1, 2])) + (["i8"] if k % 9 == 0 and "i8" not in page else [])
        outcomes = [("click", item) for item in clicked]
        outcomes += [(rng.choice(["add_to_cart", "purchase"]), item) for item in clicked if rng.random() < 0.5]
        if k % 7 == 3:
            outcomes.append(("purchase", page[-1]))  # bought from the page without a click event first
        for j, (typ, item) in enumerate(outcomes):
            out.append(
                Event(event_id=f"sc{k}-{j}", type=typ, user_id=user, item_id=item, ts=ts + 1 + j, request_id=f"sr{k}")
            )
    return out


def apply_to_redis(settings, models, config: FeatureSettings, batch: int) -> FeatureStore:
    writer = Writer(connect_binary(settings), settings.redis.prefix, "parity", config, BOT_OFF)
    offset = 0
    for start in range(0, len(models), batch):
        chunk = models[start : start + batch]
        recs = [(offset + i, m, encode(m), b"k") for i, m in enumerate(chunk)]
        assert writer.apply("events", 0, recs, offset + len(chunk)).status == "ok"
        offset += len(chunk)
    return FeatureStore(connect(settings), settings.redis.prefix, config)


def replay(models, config: FeatureSettings) -> ReplayFeatures:
    f = ReplayFeatures(config=config)
    for m in models:
        f.observe(m)
    return f


def approx_pairs(pairs):
    return [(m, pytest.approx(s, rel=1e-9, abs=1e-12)) for m, s in pairs]


def assert_same_reads(redis_fs, rep: ReplayFeatures, exercised: bool = True, merged_log: bool = False) -> None:
    """Every read of ``redis_fs`` equals the twin's; ``exercised``: and the list reached bought
    together and suggestions (a keyspace holding a part of the users may not); ``merged_log``: the
    expansion log is read from several keyspaces (its change numbers are merged cursors, and an
    item changed in two keyspaces is listed by each), so only the items changed are compared."""
    assert redis_fs.clock_ms() == rep.clock
    for now in (None, rep.clock + 3 * 3_600_000):
        for user in USERS + ["nobody"]:
            assert redis_fs.recent_items(user, 100) == rep.recent_items(user, 100), user
            assert redis_fs.recent_items(user, 2) == rep.recent_items(user, 2), user
            want = rep.category_affinity(user, now_ms=now)
            got = redis_fs.category_affinity(user, now_ms=now)
            assert got == {c: pytest.approx(v, rel=1e-9) for c, v in want.items()}, user
        got_stats = redis_fs.item_stats(ITEMS + ["never"], now_ms=now)
        for item, g, w in zip(ITEMS + ["never"], got_stats, rep.item_stats(ITEMS + ["never"], now_ms=now), strict=True):
            assert g.counts == {t: pytest.approx(v, rel=1e-9, abs=1e-12) for t, v in w.counts.items()}, item
            assert (g.impressions, g.clicks, g.ctr) == (
                pytest.approx(w.impressions, rel=1e-9, abs=1e-12),
                pytest.approx(w.clicks, rel=1e-9, abs=1e-12),
                pytest.approx(w.ctr, rel=1e-9),
            ), item
    for item in ITEMS + ["never"]:
        assert redis_fs.covisited(item, 100) == approx_pairs(rep.covisited(item, 100)), item
        assert redis_fs.covisited(item, 2) == approx_pairs(rep.covisited(item, 2)), item
    bought = redis_fs.bought_together(ITEMS + ["never"], 100)
    assert bought == [approx_pairs(rows) for rows in rep.bought_together(ITEMS + ["never"], 100)]
    assert any(bought) or not exercised
    many = redis_fs.covisited_many(ITEMS + ["never"], 2)
    assert many == [approx_pairs(rows) for rows in rep.covisited_many(ITEMS + ["never"], 2)]
    assert redis_fs.trending(100) == approx_pairs(rep.trending(100))
    assert redis_fs.trending(3) == approx_pairs(rep.trending(3))
    assert redis_fs.suggestions(100) == approx_pairs(rep.suggestions(100))
    assert rep.suggestions(100) or not exercised
    categories = ["c0", "c1", "c2", "c3", "c5", "c6", "c7", "none"]
    for category in categories:
        assert redis_fs.suggestions(100, category) == approx_pairs(rep.suggestions(100, category)), category
    assert sum(bool(rep.suggestions(100, c)) for c in categories) >= 2 or not exercised
    assert redis_fs.item_attributes(ITEMS + ["never"]) == rep.item_attributes(ITEMS + ["never"])
    for now in (None, rep.clock + 30 * 86_400_000):
        got, want = redis_fs.expansions(ITEMS + ["never"], now_ms=now), rep.expansions(ITEMS + ["never"], now_ms=now)
        assert got == [{t: pytest.approx(v, rel=1e-9, abs=1e-12) for t, v in w.items()} for w in want]
    for q in [*QUERIES[:-1], "never searched"]:
        for now in (None, rep.clock + 30 * 86_400_000):
            want = rep.click_memory(query_key(q), now_ms=now)
            got = redis_fs.click_memory(query_key(q), now_ms=now)
            assert got == {i: pytest.approx(v, rel=1e-9, abs=1e-12) for i, v in want.items()}, q
    if merged_log:
        rows, newest = redis_fs.expansion_changes(0, 100)
        assert {item for item, _ in rows} == {item for item, _ in rep.expansion_changes(0, 100)[0]}
        assert rows[-1][1] == newest and redis_fs.expansion_changes(newest, 100) == ([], newest)
    else:
        assert redis_fs.expansion_changes(0, 100) == rep.expansion_changes(0, 100)
        assert redis_fs.expansion_changes(3, 2) == rep.expansion_changes(3, 2)
    assert_same_row_reads(redis_fs, rep)
    assert_same_session_reads(redis_fs, rep)


def assert_same_row_reads(redis_fs, rep: ReplayFeatures) -> None:
    """The ranking rows' batched read (two round trips in Redis) equals the twin's reads one by one."""
    candidates = ITEMS[::2] + ["never"]
    for now in (None, rep.clock + 3 * 3_600_000):
        for user in [*USERS, "nobody", None]:
            got = redis_fs.row_reads(user, candidates, now, 20, 3, 4)
            want = rep.row_reads(user, candidates, now, 20, 3, 4)
            assert got.recent == want.recent, user
            assert got.attributes == want.attributes, user
            assert got.covisited == [approx_pairs(rows) for rows in want.covisited], user
            assert got.affinity == {c: pytest.approx(v, rel=1e-9) for c, v in want.affinity.items()}, user
            assert [s.counts for s in got.stats] == [
                {k: pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in s.counts.items()} for s in want.stats
            ], user
            assert [s.ctr for s in got.stats] == [pytest.approx(s.ctr, rel=1e-9) for s in want.stats], user


def assert_same_session_reads(redis_fs, rep: ReplayFeatures) -> None:
    """The session-kNN state: sessions' items, items' sessions, each user's current session."""
    tokens = session_tokens_seen(rep)
    assert redis_fs.sessions_items(tokens) == rep.sessions_items(tokens)
    assert redis_fs.session_items(tokens[0]) == rep.session_items(tokens[0])
    items = ITEMS + ["never"]
    for n in (None, 2, 0):
        assert redis_fs.item_sessions(items, n) == rep.item_sessions(items, n), n
    for user in USERS + ["nobody"]:
        assert redis_fs.current_session(user) == rep.current_session(user), user
    for own in (None, tokens[0]):
        for sample in (1, 3, 100):
            for asked in (ITEMS[:2], ITEMS, ["never"], []):
                got, want = redis_fs.neighbour_sessions(asked, own, sample), rep.neighbour_sessions(asked, own, sample)
                assert got == want, (own, sample, asked)


def session_tokens_seen(rep: ReplayFeatures) -> list[str]:
    return sorted(rep.sessions) + ["snever"]


def test_the_list_exercises_every_rule():
    models = event_list()
    events = [m for m in models if isinstance(m, Event)]
    assert {e.type for e in events} == {"impression", *TYPES}
    assert len({e.event_id for e in events}) < len(events)  # repeated event_ids
    shown = [e.event_id for e in events if e.type == "impression"]
    assert len(set(shown)) < len(shown)  # repeated impressions
    assert any(a.ts > b.ts for a, b in zip(events, events[1:], strict=False))  # out of order
    assert any(e.session_id is None for e in events) and any(e.session_id for e in events)
    assert any(isinstance(m, CatalogOp) and m.op == "delete" for m in models)
    rep = replay(models, TIGHT)
    assert any(len(rep.covisited(i, 100)) == TIGHT.covis_top_n for i in ITEMS)  # the caps bite
    assert len(rep.trending(100)) == TIGHT.trending_cap
    assert any(len(rep.category_affinity(u)) == TIGHT.category_cap for u in USERS)
    assert any(len(rows) == TIGHT.item_sessions_cap for rows in rep.item_sessions(ITEMS))
    assert any(len(items) == TIGHT.session_cap for items in rep.sessions_items(sorted(rep.sessions)))
    assert any(len(x) == TIGHT.expansion_cap for x in rep.expansions(ITEMS))
    assert len(rep.expansion_changes(0, 100)[0]) == TIGHT.expansion_log_cap
    remembered = [rep.click_memory(query_key(q)) for q in QUERIES[:-1]]
    assert any(len(m) == TIGHT.memory_cap for m in remembered)  # clicks on search pages, and the cap bites
    assert any(t.startswith("u") for t in rep.sessions) and any(t.startswith("s") for t in rep.sessions)


def test_one_event_per_batch_with_tight_caps(settings):
    """Caps are trimmed per batch in Redis and per event in the replay: one event per batch is exact."""
    models = event_list()
    assert_same_reads(apply_to_redis(settings, models, TIGHT, batch=1), replay(models, TIGHT))


def test_partition_batches_with_the_default_caps(settings):
    models = event_list(seed=11)
    cfg = FeatureSettings()
    assert_same_reads(apply_to_redis(settings, models, cfg, batch=17), replay(models, cfg))


@pytest.mark.parametrize(("caps", "batch"), [(TIGHT, 1), (FeatureSettings(), 17)])
def test_trending_across_landmark_rescales(settings, caps, batch):
    """A one-minute trending half-life: the 5-hour list moves the landmark several times (its
    exponent passes ``TRENDING_RESCALE`` every ~43 minutes), which the default half-life never
    reaches in these lists. Tight caps one event per batch, as above; the default caps in batches."""
    models = event_list(seed=3)
    cfg = caps.model_copy(update={"trending_half_life_s": 60.0})
    events = [m for m in models if isinstance(m, Event)]
    tau = cfg.tau_ms(cfg.trending_half_life_s)
    assert (max(e.ts for e in events) - min(e.ts for e in events)) / tau > 3 * TRENDING_RESCALE
    assert_same_reads(apply_to_redis(settings, models, cfg, batch=batch), replay(models, cfg))
