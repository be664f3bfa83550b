"""The wire contract: what is accepted, what is rejected, and with which reason."""

import json

import jsonschema_rs
import pytest
from pydantic import ValidationError

from streamrec.schemas import (
    CatalogOp,
    CatalogShape,
    DeadLetter,
    Event,
    EventShape,
    Rejected,
    batch_json_schema,
    decode_catalog,
    decode_event,
    encode,
)

TS = 1_700_000_000_000


def _event(**kw) -> bytes:
    base = {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": TS}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_click_roundtrips_and_integer_ids_become_strings():
    e = decode_event(_event(user_id=42, item_id=7))
    assert (e.user_id, e.item_id, e.ts) == ("42", "7", TS)
    assert decode_event(encode(e)) == e


def test_iso_timestamps_are_normalised_to_epoch_ms():
    assert decode_event(_event(ts="2023-11-14T22:13:20Z")).ts == TS
    assert decode_event(_event(ts="2023-11-14T22:13:20")).ts == TS  # naive = UTC


@pytest.mark.parametrize(
    "ts, fragment",
    [
        (1_700_000_000, "epoch seconds"),
        (True, "epoch milliseconds"),
        ("yesterday", "neither epoch"),
        (10**17, "year 3000"),
    ],
)
def test_ambiguous_or_impossible_timestamps_are_rejected_with_a_hint(ts, fragment):
    with pytest.raises(Rejected) as err:
        decode_event(_event(ts=ts))
    assert err.value.reason == "invalid" and fragment in err.value.error


def test_impression_needs_request_id_and_unique_item_ids():
    ok = decode_event(_event(type="impression", item_id=..., request_id="r1", item_ids=["a", "b"]))
    assert ok.item_ids == ["a", "b"]
    for bad in (
        dict(request_id=None, item_ids=["a"]),
        dict(request_id="r", item_ids=["a", "a"]),
        dict(request_id="r", item_ids=[]),
    ):
        with pytest.raises(Rejected) as err:
            decode_event(_event(type="impression", item_id=..., **bad))
        assert err.value.reason == "invalid"
    with pytest.raises(Rejected, match="carries item_ids"):
        decode_event(_event(type="impression", request_id="r", item_ids=["a"]))


def test_interaction_without_item_is_rejected_naming_the_field():
    with pytest.raises(Rejected, match="needs item_id"):
        decode_event(_event(item_id=...))


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe not utf8", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (_event(type="teleport"), "unknown_type"),
        (_event(colour="red"), "invalid"),  # unknown fields are refused, not silently dropped
        (b" " * 70_000, "oversize"),
    ],
)
def test_each_rejection_has_a_machine_readable_reason(raw, reason):
    with pytest.raises(Rejected) as err:
        decode_event(raw)
    assert err.value.reason == reason and err.value.error


def test_catalog_upsert_needs_title_and_delete_carries_nothing_else():
    assert decode_catalog(b'{"op":"upsert","item_id":"x","ts":%d,"title":"Pen","price":2.5}' % TS).price == 2.5
    with pytest.raises(Rejected, match="needs a title"):
        decode_catalog(b'{"op":"upsert","item_id":"x","ts":%d}' % TS)
    with pytest.raises(Rejected, match="only op, item_id and ts"):
        decode_catalog(b'{"op":"delete","item_id":"x","ts":%d,"title":"Pen"}' % TS)
    with pytest.raises(Rejected, match="price"):
        decode_catalog(b'{"op":"upsert","item_id":"x","ts":%d,"title":"Pen","price":-1}' % TS)
    assert isinstance(decode_catalog(b'{"op":"delete","item_id":"x","ts":%d}' % TS), CatalogOp)


def test_dead_letter_keeps_the_exact_original_bytes():
    raw = b"\x00\xffbinary garbage"
    with pytest.raises(Rejected) as err:
        decode_event(raw)
    dl = DeadLetter.of(err.value, raw, topic="streamrec.events", partition=1, offset=9, key=b"u1", now_ms=TS)
    back = DeadLetter.model_validate_json(encode(dl))
    assert back.original_bytes() == raw and back.payload_text is None
    assert (back.reason, back.source_partition, back.source_offset, back.source_key) == ("not_utf8", 1, 9, "u1")


def test_models_are_immutable():
    e = Event(event_id="e", type="view", user_id="u", item_id="i", ts=TS)
    with pytest.raises(ValidationError):
        e.user_id = "other"


BODY_CASES = [
    (
        EventShape,
        Event,
        {"InteractionEvent", "ImpressionEvent"},
        [
            {"event_id": "e", "type": "purchase", "user_id": 1, "ts": TS, "item_id": "i", "session_id": "s"},
            {"event_id": "e", "type": "impression", "user_id": "u", "ts": TS, "request_id": "r", "item_ids": ["a"]},
        ],
        [
            {"event_id": "e", "type": "click", "user_id": "u", "ts": TS},  # no item
            {"event_id": "e", "type": "click", "user_id": "u", "ts": TS, "item_id": "i", "item_ids": ["a"]},
            {"event_id": "e", "type": "impression", "user_id": "u", "ts": TS, "item_ids": ["a"]},  # no request_id
            {"event_id": 2, "type": "impression", "user_id": 1, "ts": TS, "request_id": "r", "item_ids": ["b", "b"]},
            {"event_id": "e", "type": "impression", "user_id": "u", "ts": TS, "request_id": "r", "item_id": "i"},
            {"event_id": "e", "type": "like", "user_id": "u", "ts": TS, "item_id": "i"},
            {"event_id": "e", "type": "view", "user_id": "u", "ts": TS, "item_id": "i", "colour": "red"},
        ],
    ),
    (
        CatalogShape,
        CatalogOp,
        {"CatalogUpsert", "CatalogPatch", "CatalogDelete"},
        [
            {"op": "upsert", "item_id": "i", "ts": TS, "title": "Drill", "price": 9.5, "category": "tools"},
            {
                "op": "upsert",
                "item_id": "i",
                "ts": TS,
                "title": "Drill",
                "brand": "Bosch",
                "stock": 3,
                "attributes": {"volts": 18, "colour": "blue", "sizes": ["S", "M"]},
            },
            {"op": "patch", "item_id": "i", "ts": TS, "price": None, "in_stock": False, "attributes": {"volts": None}},
            {"op": "delete", "item_id": 7, "ts": TS},
        ],
        [
            {"op": "upsert", "item_id": "i", "ts": TS},  # no title
            {"op": "upsert", "item_id": "i", "ts": TS, "title": " "},
            {"op": "delete", "item_id": "i", "ts": TS, "title": "Drill"},
            {"op": "delete", "item_id": "i", "ts": TS, "price": 1.0},
            {"op": "rename", "item_id": "i", "ts": TS},
            {"op": "patch", "item_id": "i", "ts": TS},  # changes nothing
            {"op": "patch", "item_id": "i", "ts": TS, "title": None},
            {"op": "upsert", "item_id": "i", "ts": TS, "title": "Drill", "attributes": {"volts": None}},
            {"op": "upsert", "item_id": "i", "ts": TS, "title": "Drill", "attributes": {"on sale": "yes"}},
            {"op": "upsert", "item_id": "i", "ts": TS, "title": "Drill", "attributes": {"kit": True}},
            {"op": "upsert", "item_id": "i", "ts": TS, "title": "Drill", "stock": -1},
        ],
    ),
]


@pytest.mark.parametrize("shape, model, names, valid, invalid", BODY_CASES)
def test_request_body_schemas_declare_each_shape_and_agree_with_the_model(shape, model, names, valid, invalid):
    """The OpenAPI bodies come from the shape models: one object of either shape, or an array of
    them up to the limit; what the schema accepts the model accepts, and the same for refusals."""
    body = batch_json_schema(shape, 3)
    assert set(body.components) == names
    assert all(f"#/components/schemas/{n}" in json.dumps(body.schema) for n in names)
    schema = jsonschema_rs.validator_for({**body.schema, "components": {"schemas": body.components}})
    for obj in valid:
        model.model_validate(obj)
        assert schema.is_valid(obj) and schema.is_valid([obj] * 3), obj
        assert not schema.is_valid([obj] * 4)
    for obj in invalid:
        with pytest.raises(ValidationError):
            model.model_validate(obj)
        assert not schema.is_valid(obj) and not schema.is_valid([valid[0], obj]), obj
