"""The learned session fusion: starts as the fixed fusion, learns what this shop's next clicks
say (content similarity included), is served only once it beats the fixed weights, and its join
and state survive a restart."""

from __future__ import annotations

import numpy as np
import pytest

from learner.next_item import NextItemJoiner
from streamrec.features import ReplayFeatures
from streamrec.schemas import Event
from streamrec.sessions import candidates, fusion, learned
from streamrec.settings import RecommendSettings, Settings
from tests.test_features import ev
from tests.test_search_engine import FakeModels, _engine

COL = {n: i for i, n in enumerate(learned.FEATURE_NAMES)}
P = RecommendSettings()
T = 1_700_000_000_000


def _pool(rng: np.random.Generator, n: int = 60) -> np.ndarray:
    """A random pool: sparse family scores in [0, 1], their rank features, a content cosine."""
    F = np.zeros((n, learned.N_FEATURES), dtype=np.float32)
    for f in learned.FAMILIES:
        present = rng.random(n) < 0.5
        scores = rng.random(n) * present
        F[:, COL[f"{f}_score"]] = scores / max(scores.max(), 1e-9)
        order = np.argsort(-scores)
        F[order, COL[f"{f}_rr"]] = (1.0 / (1.0 + np.arange(n))) * present[order]
    F[:, COL["profile_cos"]] = rng.uniform(-0.2, 1.0, n)
    return F


def test_features_follow_the_families_and_the_session() -> None:
    families = {"repeat": {"a": 1.0, "b": 0.6}, "stan": {"c": 4.0, "a": 2.0}, "covis": {}}
    F = learned.features(["a", "b", "c", "d"], families, ["b", "a"], [0.1, 0.2, 0.3, 0.4], top_n=50)
    assert F[:, COL["stan_score"]].tolist() == [0.5, 0.0, 1.0, 0.0]
    assert F[:, COL["stan_rr"]].tolist() == [0.5, 0.0, 1.0, 0.0]
    assert F[:, COL["covis_score"]].sum() == 0 and F[:, COL["is_last_item"]].tolist() == [1, 0, 0, 0]
    assert F[:, COL["profile_cos"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert F[0, COL["repeat_x_len"]] == pytest.approx(np.log1p(2))


def test_the_initial_model_ranks_exactly_like_the_fixed_fusion(settings) -> None:
    f = ReplayFeatures()
    for i, (user, item, session) in enumerate(
        [("h1", "a", "s1"), ("h1", "b", "s1"), ("h1", "c", "s1"), ("h2", "a", "s2"), ("h2", "c", "s2")]
        + [("h3", "b", "s3"), ("h3", "d", "s3"), ("n", "a", "sn"), ("n", "b", "sn")]
    ):
        f.observe(ev(i, user=user, item=item, session=session))
    sc = candidates.read(f, "n", P)
    fused = fusion.rank(sc, "fused", P, keep=lambda _: True)
    ids = [c.item_id for c in fused]
    F = learned.features(ids, sc.families, sc.prefix, [0.0] * len(ids), P.family_top_n)
    model = learned.FusionModel.from_settings(Settings())
    assert np.allclose(model.scores(F), [c.score for c in fused])
    assert not model.earned  # nothing learned: the fixed weights are served


def test_content_similarity_counts_as_much_as_it_predicts_the_next_click() -> None:
    """A catalogue where the next click is the most similar item: the learned fusion finds it and
    earns its place; where content says nothing, its weight stays near zero and it is not served
    unless it ranks at least as well as the fixed weights."""
    rng = np.random.default_rng(0)
    content = learned.FusionModel.initial(P.weights)
    for _ in range(1500):
        F = _pool(rng)
        content.learn(F, int(np.argmax(F[:, COL["profile_cos"]])))
    (rr, hit), (rr0, hit0) = content.card["learned"], content.card["fixed"]
    assert content.mode == "learned" and rr > 3 * rr0 and hit > 2 * hit0
    assert content.average is not None and content.average[COL["profile_cos"]] > 1.0

    noise = learned.FusionModel.initial(P.weights)
    for _ in range(1500):
        F = _pool(rng)
        noise.learn(F, int(np.argmax(F @ noise.fixed)))  # the fixed weights are exactly right here
    assert noise.average is not None and abs(noise.average[COL["profile_cos"]]) < 0.3
    # nothing to gain: the learned order does not beat the fixed one, so the fixed weights stay
    assert noise.card["learned"][0] <= noise.card["fixed"][0] and noise.mode == "fixed"


def test_state_round_trips_and_another_schema_is_refused() -> None:
    rng = np.random.default_rng(1)
    m = learned.FusionModel.initial(P.weights)
    for _ in range(20):
        m.learn(_pool(rng), 0)
    again = learned.FusionModel.from_state(m.state())
    assert again is not None and again.examples == 20
    F = _pool(rng)
    assert np.array_equal(again.scores(F), m.scores(F))
    again.learn(F, 3), m.learn(F, 3)
    assert np.array_equal(again.weights, m.weights)  # the step sizes continue, too
    assert learned.FusionModel.from_state(m.state() | {"schema": "older"}) is None


def test_the_pool_log_round_trips_through_redis(settings) -> None:
    from streamrec.store import connect

    r = connect(settings)
    F = np.arange(2 * learned.N_FEATURES, dtype=np.float32).reshape(2, learned.N_FEATURES)
    learned.log_pool(r, settings.redis.prefix, "req1", ["a", "b"], F, ttl_s=60)
    items, got = learned.load_pool(r, settings.redis.prefix, "req1")
    assert items == ["a", "b"] and np.array_equal(got, F)
    assert 0 < r.ttl(f"{settings.redis.prefix}pool:req1") <= 60
    assert learned.load_pool(r, settings.redis.prefix, "never-logged") is None


def _imp(user: str, rid: str) -> Event:
    return Event(event_id=f"i-{rid}", type="impression", user_id=user, ts=T, request_id=rid, item_ids=["x"])


def _view(user: str, item: str, i: int = 0) -> Event:
    return Event(event_id=f"v-{user}-{i}", type="view", user_id=user, ts=T - 10_000, item_id=item)


def test_an_impression_joins_the_users_next_interaction_in_stream_order() -> None:
    now = [0.0]
    pools = {"r1": (["a", "b", "c"], np.eye(3, dtype=np.float32)), "r2": (["d"], np.ones((1, 3), np.float32))}
    j = NextItemJoiner(pools.get, window_s=30, clock=lambda: now[0])
    assert j.feed(_view("u", "a")) is None  # nothing pending
    j.feed(_imp("u", "r1"))
    other = j.feed(_view("someone-else", "b"))
    got = j.feed(_view("u", "c"))  # replayed events keep old times: order decides, not ts
    assert other is None and got is not None and got.target == 2 and np.array_equal(got.F, np.eye(3)[:3])
    assert j.feed(_view("u", "b")) is None  # one example per impression
    j.feed(_imp("u", "r1")), j.feed(_imp("u", "r2"))  # a newer request replaces the older one
    assert j.feed(_view("u", "a")) is None and j.counts["not_in_pool"] == 1
    j.feed(_imp("u", "r1"))
    now[0] = 31.0
    assert j.feed(_view("u", "a")) is None and j.counts["expired"] == 1
    j.feed(_imp("u", "search-request-without-pool"))
    assert j.counts["no_pool"] == 1 and len(j) == 0


def test_pending_joins_survive_a_restart_and_stay_bounded() -> None:
    now = [100.0]
    pools = {f"r{i}": ([f"item{i}"], np.ones((1, 2), np.float32)) for i in range(5)}
    j = NextItemJoiner(pools.get, window_s=30, max_pending=3, clock=lambda: now[0])
    for i in range(5):
        j.feed(_imp(f"u{i}", f"r{i}"))
    assert len(j) == 3 and j.counts["dropped"] == 2
    now[0] = 110.0
    state = j.state()
    restarted = NextItemJoiner(pools.get, window_s=30, clock=lambda: 5.0)  # another process's clock
    restarted.load_state(state)
    got = restarted.feed(_view("u4", "item4"))
    assert got is not None and got.target == 0
    assert restarted.counts["dropped"] == 2
    restarted.clock = lambda: 5.0 + 21.0  # 10 s before the restart + 21 s after: past the window
    assert restarted.feed(_view("u3", "item3")) is None and restarted.counts["expired"] == 1


def test_recommend_logs_its_pool_and_serves_the_learned_order_only_once_earned() -> None:
    engine, impressions, models = _engine()
    assert isinstance(models, FakeModels)
    f = engine.features
    assert isinstance(f, ReplayFeatures)
    for i, (user, item, session) in enumerate(
        [("h1", "pipe", "s1"), ("h1", "fitting", "s1"), ("h2", "pipe", "s2"), ("h2", "elbow", "s2")]
        + [("h2", "fitting", "s2"), ("n", "pipe", "sn")]
    ):
        f.observe(ev(i, user=user, item=item, session=session))
    fixed = engine.recommend("n", 3)
    pool = impressions.recorded[-1]["pool"]
    assert (
        pool is not None
        and set(pool[0]) >= {"fitting", "elbow"}
        and pool[1].shape == (len(pool[0]), learned.N_FEATURES)
    )

    fitted = learned.FusionModel.initial(P.weights)
    assert fitted.average is not None
    fitted.average[:] = 0.0
    fitted.average[COL["profile_cos"]] = -5.0  # a model that says: the least similar first
    models.current = type("Served", (), {"version": 2, "head": None, "fusion": fitted})()
    not_yet = engine.recommend("n", 3)
    assert [i.item_id for i in not_yet.items] == [i.item_id for i in fixed.items]  # not earned yet
    fitted.examples, fitted.card = 1000, {"fixed": [0.2, 0.5], "learned": [0.3, 0.6], "rerank": [0.25, 0.5]}
    served = engine.recommend("n", 3)
    cos = {i.item_id: float(engine.index.vector(i.item_id) @ engine.index.vector("pipe")) for i in served.items}
    assert [i.item_id for i in served.items] == sorted(cos, key=cos.get)[:3]
    assert served.items[0].score == pytest.approx(1.0)
    engine.s = engine.s.replace(recommend={"learned_fusion": False})
    assert [i.item_id for i in engine.recommend("n", 3).items] == [i.item_id for i in fixed.items]


def test_rerank_mode_keeps_the_fixed_top_k_and_orders_inside_it() -> None:
    rng = np.random.default_rng(2)
    m = learned.FusionModel.initial(P.weights)
    assert m.average is not None
    m.average[:] = rng.normal(size=learned.N_FEATURES)
    F = _pool(rng)
    fixed_order, _ = m.order(F, "fixed")
    order, relevance = m.order(F, "rerank")
    k = learned.RERANK_K
    assert set(order[:k]) == set(fixed_order[:k]) and list(order[k:]) == list(fixed_order[k:])
    assert list(order[:k]) == sorted(order[:k], key=lambda j: -m.scores(F)[j])
    assert relevance[0] == pytest.approx(1.0) and np.all(np.diff(relevance) <= 1e-12)


def test_a_stream_that_only_reorders_the_top_picks_the_rerank_mode() -> None:
    """The next click is always among the fixed top 20, the most similar of them: learning helps
    inside the top 20, while a full learned order pulls in similar items from further down and
    loses hits — so the scorecard serves the rerank mode, never a mode that loses hits."""
    rng = np.random.default_rng(3)
    m = learned.FusionModel.initial(P.weights)
    for _ in range(2500):
        F = _pool(rng)
        top = m.order(F, "fixed")[0][: learned.RERANK_K]
        m.learn(F, int(top[np.argmax(F[top, COL["profile_cos"]])]))
    assert m.card["rerank"][1] == pytest.approx(m.card["fixed"][1])  # the same hits, by construction
    assert m.card["rerank"][0] > m.card["fixed"][0] + 0.1
    assert m.mode == "rerank"
