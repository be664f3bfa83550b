"""Engine.search with in-memory parts: variants, fused order kept by an untrained head, impressions
only when asked, query–product features in the rows the learner trains on."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from serving.catalog.filters import Filter
from serving.engine import Engine
from serving.lexical import LexicalIndex
from streamrec.features import ReplayFeatures
from streamrec.ranking import FEATURE_NAMES, RankingHead
from streamrec.schemas import Event
from streamrec.settings import Settings
from streamrec.vector_index.live import ItemMeta, LiveIndex

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
TITLES = {
    "pipe": "1/2 in. x 10 ft. Copper Type L Pipe",
    "fitting": "1-1/2 in. x 1-1/4 in. Copper Fitting",
    "elbow": "2 in. Copper 90 Elbow",
    "hose": "Garden Hose 50 ft.",
}
VEC = {
    "pipe": [1.0, 0.0, 0.0],
    "fitting": [0.8, 0.6, 0.0],
    "elbow": [0.6, 0.8, 0.0],
    "hose": [0.0, 0.0, 1.0],
}


class FakeEncoder:
    model_id = "fake"
    dim = 3

    def encode_query(self, text: str) -> np.ndarray:
        return np.array([0.0, 0.0, 1.0] if "hose" in text else [0.6, 0.8, 0.0], dtype=np.float32)


class FakeImpressions:
    def __init__(self) -> None:
        self.recorded: list[dict] = []

    def record(self, **kw) -> None:
        self.recorded.append(kw)


@dataclass
class FakeModels:
    current: object | None = None


def _engine(**search) -> tuple[Engine, FakeImpressions, FakeModels]:
    """An engine over the five titles with these ``search`` settings; exploration off unless asked (it
    reorders logged pages at random)."""
    search = {"explore_share": 0.0, "swap_share": 0.0, **search}
    index = LiveIndex(3)
    index.apply([(i, np.array(v, np.float32), ItemMeta(TITLES[i])) for i, v in VEC.items()], [])
    lexical = LexicalIndex()
    index.subscribe(lexical.apply)
    lexical.refresh()
    impressions, models = FakeImpressions(), FakeModels()
    engine = Engine(
        Settings(search=search, serving={"candidates": 10}),
        FakeEncoder(),
        SimpleNamespace(index=index),
        ReplayFeatures({i: {"title": t} for i, t in TITLES.items()}),
        models,
        lexical,
        impressions,
    )
    return engine, impressions, models


def _ids(result) -> list[str]:
    return [it.item_id for it in result.items]


def test_variants_order_by_their_own_scores() -> None:
    engine, _, _ = _engine()
    q = "1/2 inch copper pipes"
    assert _ids(engine.search(q, None, 4, variant="bm25"))[0] == "pipe"
    assert _ids(engine.search(q, None, 4, variant="dense"))[0] == "elbow"  # the fake query vector is elbow's
    for variant in ("rrf", "fused", "full"):
        result = engine.search(q, None, 4, variant=variant)
        assert result.variant == variant and set(_ids(result)) <= set(TITLES)
    with pytest.raises(ValueError):
        engine.search(q, None, 4, variant="nope")


def test_lexical_weight_only_is_bm25_order_and_reasons_say_why() -> None:
    engine, _, _ = _engine(dense_weight=0.0)
    result = engine.search("1/2 inch copper pipes", None, 2)
    assert _ids(result)[0] == "pipe"
    assert "title matches '1/2', 'inch', 'copper', 'pipe'" in result.items[0].reasons


def test_untrained_head_keeps_the_fused_order() -> None:
    engine, _, models = _engine(head_weight=0.0)
    fused = _ids(engine.search("copper pipe", None, 4, variant="fused"))
    torch.manual_seed(0)
    head = RankingHead()
    with np.errstate(all="ignore"):
        for p in head.parameters():
            p.data.normal_()  # an arbitrary head: weight 0 must not let it reorder
    models.current = SimpleNamespace(version=3, head=head)
    full = engine.search("copper pipe", None, 4, variant="full")
    assert _ids(full) == fused
    assert any(r.startswith("ranker v3") for r in full.items[0].reasons)


def test_impression_only_when_asked_with_query_features() -> None:
    engine, impressions, _ = _engine()
    engine.search("copper pipe", "u1", 3, impression=False)
    assert impressions.recorded == []
    result = engine.search("1/2 inch copper pipe", "u1", 3)
    (rec,) = impressions.recorded
    assert rec["item_ids"] == _ids(result) and rec["query"] == "1/2 inch copper pipe"
    rows = dict(zip(rec["item_ids"], rec["rows"], strict=True))
    pipe = rows["pipe"]
    assert pipe[COL["has_query_features"]] == 1.0 and pipe[COL["qp_all_matched"]] == 1.0
    assert pipe[COL["qp_title_coverage"]] == 1.0 and pipe[COL["qp_numbers_missing"]] == 0.0
    if "elbow" in rows:
        assert rows["elbow"][COL["qp_numbers_missing"]] == 1.0  # '1/2' asked, a 2 in. elbow


def test_recommend_and_similar_still_rank_explain_and_log() -> None:
    engine, impressions, _ = _engine()
    similar = engine.similar("pipe", 3)
    assert similar is not None and "pipe" not in _ids(similar) and similar.items[0].reasons
    engine.similar("pipe", 3, impression=False)
    rec = engine.recommend("nobody", 3)
    assert rec.variant == "full"
    assert len(impressions.recorded) == (1 if similar.items else 0) + (1 if rec.items else 0)
    with pytest.raises(ValueError):
        engine.recommend("nobody", 3, variant="bm25")


def test_query_log_expansion_reorders_and_says_why() -> None:
    engine, _, _ = _engine()
    engine.lexical.expansion_boost = 2.0
    before = engine.search("copper fitting", None, 4, variant="bm25")
    assert _ids(before)[0] == "fitting"
    engine.lexical.expand({"elbow": {"copper": 5.0, "fitting": 5.0}})  # past searches led to the elbow
    engine.lexical.refresh()
    after = engine.search("copper fitting", None, 4, variant="bm25")
    assert _ids(after)[0] == "elbow"
    assert "chosen after past searches for 'copper', 'fitting'" in after.items[0].reasons
    engine.lexical.expand({"elbow": {}})  # gone (expired in Redis): back to the title alone
    engine.lexical.refresh()
    assert _ids(engine.search("copper fitting", None, 4, variant="bm25"))[0] == "fitting"


def test_exploration_touches_only_logged_pages_and_the_impression_says_where_it_swapped() -> None:
    engine, impressions, _ = _engine(explore_share=0.0, swap_share=1.0)
    q = "copper"
    plain = _ids(engine.search(q, None, 4, impression=False))  # QA traffic: never explored
    assert plain == _ids(engine.search(q, None, 4, impression=False))
    swapped = engine.search(q, None, 4)
    j = impressions.recorded[-1]["swapped"]
    assert j is not None and 0 <= j < len(plain) - 1
    expected = list(plain)
    expected[j], expected[j + 1] = expected[j + 1], expected[j]
    assert _ids(swapped) == expected and impressions.recorded[-1]["item_ids"] == expected

    engine, impressions, _ = _engine(explore_share=1.0, swap_share=0.0)
    for _ in range(20):
        page = _ids(engine.search(q, None, 4))
        assert page[:3] == plain[:3]  # the top three are never explored
        assert impressions.recorded[-1]["swapped"] is None


def test_the_head_reorders_search_only_once_its_scorecard_earned_it() -> None:
    head = RankingHead()
    with torch.no_grad():  # a head that prefers the last fused result, whatever the query
        head.click_wide.weight.zero_()
        head.click_wide.weight[0, COL["qp_fused_rank_log"]] = 5.0
    for gate, card, reorders in (
        (True, {"earned": False, "clicks": 12}, False),  # not earned: the head only explains
        (True, {"earned": True, "clicks": 900}, True),
        (True, None, False),  # a model from before the scorecard
        (False, None, True),  # the ablation: no gate
    ):
        engine, _, models = _engine(head_weight=100.0, head_gate=gate)
        fused = _ids(engine.search("copper", None, 4, variant="fused"))
        models.current = SimpleNamespace(version=5, head=head, search_card=card)
        assert (_ids(engine.search("copper", None, 4, impression=False)) != fused) == reorders, (gate, card)


def test_click_memory_lifts_what_this_query_chose_and_moves_no_other_query() -> None:
    engine, _, _ = _engine()
    features = engine.features
    before = _ids(engine.search("copper", None, 4, impression=False))
    other_before = _ids(engine.search("copper fitting elbow", None, 4, impression=False))
    low = before[2]  # a copper product the fused order put third
    for n in range(3):  # three shoppers searched "Copper" (same query key), each clicked the third result
        rid, ts = f"mem{n}", 1_700_000_000_000 + n * 1000
        features.observe(
            Event(
                event_id=f"i{n}",
                type="impression",
                user_id=f"s{n}",
                ts=ts,
                request_id=rid,
                item_ids=before,
                query="Copper",
            )
        )
        features.observe(Event(event_id=f"c{n}", type="click", user_id=f"s{n}", ts=ts + 1, item_id=low, request_id=rid))
    after = engine.search("copper", None, 4, impression=False)
    assert _ids(after).index(low) < before.index(low), (before, _ids(after))
    reasons = after.items[_ids(after).index(low)].reasons
    assert any("chosen by shoppers who searched 'copper'" in r for r in reasons), reasons
    assert _ids(engine.search("copper fitting elbow", None, 4, impression=False)) == other_before
    assert _ids(engine.search("copper", None, 4, variant="fused", impression=False)) == before  # the ablation


def test_out_of_stock_products_leave_every_list_until_restocked() -> None:
    engine, _, _ = _engine()
    for k, item in enumerate(["pipe", "fitting", "elbow", "pipe", "fitting"]):  # two shoppers' sessions
        user = f"u{k % 2}"
        engine.features.observe(
            Event(event_id=f"e{k}", type="view", user_id=user, item_id=item, ts=1_700_000_000_000 + k)
        )

    def lists() -> dict[str, list[str]]:
        rec = engine.recommend("u0", 4, exclude_seen=False, impression=False)
        similar = engine.similar("pipe", 4, impression=False)
        assert similar is not None
        search = engine.search("copper fitting", None, 4, impression=False)
        return {"search": _ids(search), "similar": _ids(similar), "recommend": _ids(rec)}

    assert all("fitting" in ids for ids in lists().values()), lists()
    out = ItemMeta(TITLES["fitting"], stock=0)
    engine.index.apply([("fitting", np.array(VEC["fitting"], np.float32), out)], [])
    engine.lexical.refresh()
    assert all("fitting" not in ids for ids in lists().values()), lists()
    shown = engine.search("copper fitting", None, 4, impression=False, filters=Filter.parse(availability="any"))
    assert "fitting" in _ids(shown)
    only_out = Filter.parse(availability="out_of_stock")
    assert _ids(engine.search("copper fitting", None, 4, impression=False, filters=only_out)) == ["fitting"]
    back = ItemMeta(TITLES["fitting"], stock=0, in_stock=True)  # a backorder: the shop says in stock
    engine.index.apply([("fitting", np.array(VEC["fitting"], np.float32), back)], [])
    assert all("fitting" in ids for ids in lists().values()), lists()


def test_search_facets_count_the_matches_under_the_other_filters() -> None:
    engine, _, _ = _engine()
    brands = {"pipe": "Acme", "fitting": "Acme", "elbow": "Bolt"}
    engine.index.apply(
        [
            (i, np.array(v, np.float32), ItemMeta(TITLES[i], category="Plumbing > Copper", brand=brands[i], price=5.0))
            for i, v in VEC.items()
            if i != "hose"
        ],
        [],
    )
    result = engine.search(
        "copper", None, 4, impression=False, filters=Filter.parse(brand=["Acme"]), facets=["brand", "category", "price"]
    )
    assert set(_ids(result)) == {"pipe", "fitting"}
    assert result.facets is not None and result.facets.matched == 2 and result.facets.exhaustive
    counts = {name: {v.value: v.count for v in f.values} for name, f in result.facets.counts.items()}
    # hose (a dense candidate: the index has four items) has neither brand nor category nor price
    assert counts["brand"] == {"Acme": 2, "Bolt": 1}  # the brand facet ignores the brand filter
    assert counts["category"] == {"Plumbing": 2, "Plumbing > Copper": 2}
    assert counts["price"] == {"..10": 2}


def test_pages_come_from_one_ranking_while_the_catalogue_changes() -> None:
    engine, impressions, _ = _engine()
    first = engine.search("copper", None, 2)
    assert first.offset == 0 and first.total is not None and first.total >= 3
    # between the pages a new product matches better and one of page 1 changes its title
    engine.index.apply([("cutter", np.array([0.6, 0.8, 0.0], np.float32), ItemMeta("Copper Copper Pipe Cutter"))], [])
    engine.lexical.refresh()
    second = engine.search("copper", None, 2, offset=2, page_of=first.request_id)
    assert second.offset == 2 and not second.degraded
    assert not set(_ids(first)) & set(_ids(second)) and "cutter" not in _ids(second)
    third = engine.search("copper", None, 2, offset=4, page_of=second.request_id)  # names the page before
    assert not (set(_ids(first)) | set(_ids(second))) & set(_ids(third))
    assert impressions.recorded[-2]["position"] == 2 and impressions.recorded[-1]["position"] == 4
    # a ranking that is gone, or another query under its id: ranked again, and said
    again = engine.search("copper", None, 2, offset=2, page_of="nowhere")
    assert again.degraded and "ranked again" in again.degraded[0]
    other = engine.search("elbow", None, 2, offset=2, page_of=first.request_id)
    assert other.degraded


def test_sorts_reorder_the_relevant_candidates() -> None:
    engine, _, _ = _engine()
    prices = {"pipe": 30.0, "fitting": 5.0, "elbow": 12.0, "hose": 1.0}
    engine.index.apply(
        [
            (i, np.array(VEC[i], np.float32), ItemMeta(TITLES[i], price=prices[i], created_ms=k))
            for k, i in enumerate(VEC)
        ],
        [],
    )
    engine.lexical.refresh()
    relevant = set(_ids(engine.search("copper", None, 10, impression=False)))
    cheap = engine.search("copper", None, 10, impression=False, sort="price_asc")
    listed = _ids(cheap)
    assert [prices[i] for i in listed] == sorted(prices[i] for i in listed)
    assert set(listed) <= relevant and "hose" not in listed  # the garden hose is no copper match
    assert _ids(engine.search("copper", None, 10, impression=False, sort="price_desc")) == listed[::-1]
    newest = _ids(engine.search("copper", None, 10, impression=False, sort="newest"))
    assert newest == sorted(listed, key=lambda i: -list(VEC).index(i))


def test_bought_together_follows_baskets_and_honours_the_cart_and_stock() -> None:
    engine, impressions, _ = _engine()
    basket = [("pipe", "add_to_cart"), ("fitting", "purchase"), ("elbow", "add_to_cart"), ("hose", "view")]
    for k, (item, typ) in enumerate(basket):
        engine.features.observe(
            Event(event_id=f"b{k}", type=typ, user_id="u", session_id="s", item_id=item, ts=1_700_000_000_000 + k)
        )
    together = engine.bought_together(["pipe"], 5)
    assert set(_ids(together)) == {"fitting", "elbow"}  # the hose was only looked at
    assert all(any("often bought with '1/2 in." in r for r in it.reasons) for it in together.items)
    assert _ids(engine.bought_together(["pipe", "fitting"], 5)) == ["elbow"]  # never the cart's own items
    engine.index.apply([("elbow", np.array(VEC["elbow"], np.float32), ItemMeta(TITLES["elbow"], stock=0))], [])
    assert _ids(engine.bought_together(["pipe", "fitting"], 5, impression=False)) == []
    # no basket holds the hose yet: what was viewed with it
    viewed = engine.bought_together(["hose"], 5)
    assert viewed.items and all("often viewed with" in it.reasons[0] for it in viewed.items)
    assert impressions.recorded  # logged like every list
