"""Merchandising rules on a real Redis: written by the admin API, followed by serving, applied to
/search in order (hide, bury, boost, pin) with the rule named in each moved product's reasons."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.catalog.filters import Filter
from serving.merchandising import RuleFollower, RuleStore
from streamrec.schemas import MerchandisingRule
from streamrec.store import connect
from streamrec.vector_index import ItemMeta
from tests.test_search_engine import TITLES, _engine, _ids
from tests.test_serving_app import FakeEngine, FakeProducer

NOW = int(time.time() * 1000)


@pytest.fixture
def engine_with_rules(settings):
    store = RuleStore(connect(settings), settings.redis.prefix)
    engine, impressions, _ = _engine()
    engine.rules = RuleFollower(store)
    return engine, store, impressions


def rule(**fields) -> MerchandisingRule:
    return MerchandisingRule.model_validate({"name": "test", "query": "copper", **fields})


def test_each_action_moves_what_it_names_and_says_so(engine_with_rules):
    engine, store, impressions = engine_with_rules
    assert _ids(engine.search("copper", None, 4, impression=False)) == ["elbow", "fitting", "pipe", "hose"]
    store.put(rule(name="Garden week", action="pin", items=["hose"], position=2))
    store.put(rule(name="No fittings", action="hide", items=["fitting"]))
    store.put(rule(name="Old stock", action="bury", items=["elbow"]))
    store.put(rule(name="Pipes", action="boost", items=["pipe"], amount=2.0))
    assert engine.rules.poll()
    result = engine.search("copper", None, 4)
    assert _ids(result) == ["pipe", "hose", "elbow"]  # boosted first, pinned second, buried last, one hidden
    reasons = {it.item_id: " ".join(it.reasons) for it in result.items}
    assert "pinned by rule 'Garden week'" in reasons["hose"] and "boosted by rule 'Pipes'" in reasons["pipe"]
    assert "buried by rule 'Old stock'" in reasons["elbow"]
    assert impressions.recorded[-1]["item_ids"] == _ids(result) and impressions.recorded[-1]["rows"] is None
    assert "fitting" in _ids(engine.search("copper fitting", None, 4, impression=False))  # the exact query only
    store.put(MerchandisingRule(name="Brand", query="copper", action="hide", items=[], brands=["Nobody"]))
    engine.rules.poll()
    assert _ids(engine.search("copper", None, 4, impression=False)) == ["pipe", "hose", "elbow"]


def test_rules_match_terms_categories_and_their_time_window(engine_with_rules):
    engine, store, _ = engine_with_rules
    store.put(rule(name="contains", query="Copper", match="contains", action="hide", items=["pipe"]))
    store.put(rule(name="later", action="hide", items=["elbow"], start_ms=NOW + 3_600_000))
    store.put(rule(name="over", action="hide", items=["fitting"], end_ms=NOW - 1))
    store.put(MerchandisingRule(name="aisle", category="Plumbing", action="pin", items=["hose"]))
    engine.rules.poll()
    assert "pipe" not in _ids(engine.search("copper pipe 1/2 in.", None, 4, impression=False))  # holds the terms
    result = engine.search("copper", None, 4, impression=False)
    assert {"elbow", "fitting"} <= set(_ids(result))  # a rule not yet active, one no longer
    assert not any("aisle" in r for it in result.items for r in it.reasons)  # not this category
    engine.index.apply(
        [(i, engine.index.vector(i), ItemMeta(TITLES[i], category="Plumbing > Pipes")) for i in ("hose", "pipe")], []
    )
    aisle = engine.search("copper", None, 4, impression=False, filters=Filter.parse(category="Plumbing"))
    assert _ids(aisle)[0] == "hose" and "pinned by rule 'aisle'" in aisle.items[0].reasons


def test_a_deleted_rule_stops_applying_on_the_next_poll(engine_with_rules):
    engine, store, _ = engine_with_rules
    saved = store.put(rule(action="hide", items=["pipe"]))
    engine.rules.poll()
    assert "pipe" not in _ids(engine.search("copper", None, 4, impression=False))
    assert store.delete(saved.id or "") and not store.delete("nope")
    assert engine.rules.poll() and not engine.rules.poll()  # reloads once per change
    assert "pipe" in _ids(engine.search("copper", None, 4, impression=False))


def test_rules_through_the_admin_api(settings):
    s = settings.replace(api={"admin_keys": "admin-1"})
    client = TestClient(create_app(s, FakeEngine(), FakeProducer()), headers={"Authorization": "Bearer admin-1"})
    assert TestClient(create_app(s, FakeEngine(), FakeProducer())).get("/admin/rules").status_code == 401
    created = client.post("/admin/rules", json={"name": "Sale", "query": "drill", "action": "pin", "items": ["d1"]})
    assert created.status_code == 201 and created.json()["id"]
    assert [r["name"] for r in client.get("/admin/rules").json()] == ["Sale"]
    bad = client.post("/admin/rules", json={"name": "x", "query": "drill", "action": "pin", "brands": ["Bosch"]})
    assert bad.status_code == 422 and "pin names items" in bad.text
    assert client.post("/admin/rules", json={"name": "x", "action": "hide", "items": ["a"]}).status_code == 422
    assert client.delete(f"/admin/rules/{created.json()['id']}").status_code == 204
    assert client.delete("/admin/rules/nope").status_code == 404 and client.get("/admin/rules").json() == []
