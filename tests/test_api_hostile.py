"""Hostile input, hand-written: each invalid object gets a 4xx (or, in a batch with valid siblings,
a rejection by index) whose message names the field; none becomes a 500. Plus which copy wins
when one event_id arrives twice with different payloads (the first; README, "Duplicates")."""

from __future__ import annotations

import json

import pytest

from consumers.apply import Writer
from serving.app import MAX_BODY_BYTES
from streamrec.features import FeatureStore
from streamrec.schemas import Event, decode_event, encode
from streamrec.settings import BotSettings
from streamrec.store import connect_binary
from tests.test_serving_app import _client

TS = 1_700_000_000_000
CLICK = {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": TS}
UPSERT = {"op": "upsert", "item_id": "i1", "ts": TS, "title": "Pen"}


def post(path: str, body, raw: bool = False):
    client, producer = _client()
    r = client.post(path, content=body if raw else json.dumps(body).encode())
    return r, producer


def rejected_fields(r) -> str:
    assert r.status_code == 422, (r.status_code, r.text[:300])
    (rejection,) = r.json()["detail"]["rejected"]
    return rejection["error"]


def test_a_1_mb_title_is_refused_naming_the_field_and_its_valid_sibling_published():
    huge = {**UPSERT, "title": "x" * 1_000_000}
    r, producer = post("/catalog", huge)
    assert "title" in rejected_fields(r) and len(r.content) < 10_000 and producer.sent == []
    r, producer = post("/catalog", [UPSERT, huge])
    assert r.status_code == 202 and r.json()["accepted"] == 1
    assert [x["index"] for x in r.json()["rejected"]] == [1] and "title" in r.json()["rejected"][0]["error"]
    assert len(producer.sent) == 1


def test_a_1_mb_type_is_not_echoed_back():
    r, _ = post("/events", {**CLICK, "type": "y" * 1_000_000})
    assert "unknown_type" in rejected_fields(r) and len(r.content) < 2_000


@pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")])
def test_json_nested_10000_deep_is_400_not_a_recursion_error(opening, closing):
    r, producer = post("/events", (opening * 10_000 + "1" + closing * 10_000).encode(), raw=True)
    assert r.status_code == 400 and "nested" in r.json()["detail"] and producer.sent == []


def test_nesting_the_parser_takes_is_refused_by_field():
    r, _ = post("/events", {**CLICK, "event_id": json.loads("[" * 500 + "]" * 500)})
    assert "event_id" in rejected_fields(r)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["price", "ts"])
def test_nan_and_infinity_literals_are_refused_naming_the_field(literal, field):
    text = json.dumps({**UPSERT, "price": 1.0}).replace('"price": 1.0', f'"{field}": {literal}')
    if field == "ts":
        text = json.dumps({k: v for k, v in UPSERT.items() if k != "ts"})[:-1] + f', "ts": {literal}}}'
    r, producer = post("/catalog", text.encode(), raw=True)
    assert field in rejected_fields(r) and producer.sent == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("event_id", "a\x1fb"),  # the feature writer's field separator
        ("event_id", "line\nbreak"),
        ("user_id", "\x00"),
        ("user_id", "\u202eevil.exe"),  # right-to-left override
        ("item_id", "x\u200fy"),  # right-to-left mark
        ("item_id", "\u2066isolate\u2069"),
        ("session_id", "s\x85t"),  # C1 next-line (stripped at either end, refused inside)
        ("item_id", "   "),  # whitespace only (was accepted as "")
    ],
)
def test_control_characters_and_bidi_marks_in_ids_are_refused_naming_the_field(field, value):
    r, producer = post("/events", {**CLICK, field: value})
    error = rejected_fields(r)
    assert error.startswith(f"invalid: {field}:"), error
    assert producer.sent == []


def test_right_to_left_scripts_themselves_are_fine():
    r, producer = post("/events", {**CLICK, "user_id": "שלום", "item_id": "مرحبا"})
    assert r.status_code == 202 and r.json() == {"accepted": 1, "rejected": []}
    assert decode_event(producer.sent[0][2]).user_id == "שלום"


def test_a_category_cannot_carry_the_feature_writers_separator():
    r, _ = post("/catalog", {**UPSERT, "category": "office\x1fpens"})
    assert "category" in rejected_fields(r)


def test_an_object_the_consumers_would_dead_letter_as_oversize_is_refused_up_front():
    r, producer = post("/catalog", {**UPSERT, "description": "\U0001f58a" * 20_000})  # 80 KB encoded
    assert rejected_fields(r).startswith("oversize:") and producer.sent == []


def test_bodies_past_the_limit_are_413_before_being_read():
    client, producer = _client()
    r = client.post("/events", content=b"[]", headers={"content-length": str(MAX_BODY_BYTES + 1)})
    assert r.status_code == 413 and producer.sent == []
    r = client.post("/events", content=b" " * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413


@pytest.mark.parametrize("url", ["/recommend?user_id=%1F", "/recommend?user_id=%E2%80%AE", "/similar/a%00b"])
def test_control_characters_in_parameters_are_422_not_500(url):
    client, _ = _client()
    r = client.get(url)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] in ("query", "path")


# whitespace to one side of the contract only: U+0085 to the validator, U+FEFF to JSON Schema's
# ECMAScript (schemathesis found the first); both are refused, as the schema's pattern says
@pytest.mark.parametrize("q", ["%C2%85%C2%85", "%EF%BB%BF", "%20%E3%80%80"])
def test_a_search_text_of_whitespace_is_422_whichever_whitespace(q):
    client, _ = _client()
    r = client.get(f"/search?q={q}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "q"], r.text[:300]


def test_the_first_copy_of_an_event_id_wins(settings):
    """Two payloads under one event_id from one user: the consumers apply the first and quarantine
    the second as duplicate_event. Per user (the partition key), within the user's last
    dedup_lookback events: the same id from another user is another event."""
    writer = Writer(connect_binary(settings), settings.redis.prefix, "g", settings.features, BotSettings(user_limit=0))
    first = Event(event_id="dup", type="click", user_id="u1", item_id="a", ts=TS)
    second = Event(event_id="dup", type="purchase", user_id="u1", item_id="b", ts=TS + 60_000)
    other_user = Event(event_id="dup", type="click", user_id="u2", item_id="a", ts=TS + 120_000)
    records = [(i, e, encode(e), e.user_id.encode()) for i, e in enumerate([first, second, other_user])]
    result = writer.apply(settings.topic.events, 0, records[:2], next_offset=2)
    assert result.applied == 1 and result.quarantined == ["duplicate_event"]
    writer.apply(settings.topic.events, 0, records[2:], next_offset=3)
    fs = FeatureStore.from_settings(settings)
    assert fs.user_counts("u1") == {"click": 1} and fs.item_counts("b") == {}
    assert fs.user_counts("u2") == {"click": 1} and fs.item_counts("a") == {"click": 2}
    assert fs.quarantine_counts() == {"duplicate_event": 1}
