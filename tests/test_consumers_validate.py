"""Property tests: whatever bytes arrive, the validator accepts them or dead-letters them, and an
accepted record can always be stored (no poison pill that fails its batch forever)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.apply import Writer
from consumers.validate import classify
from streamrec.schemas import CatalogOp, DeadLetter, Event, encode
from streamrec.store import connect_binary

REASONS = {"oversize", "not_utf8", "not_json", "not_object", "invalid", "unknown_type"}
MAX = 2048

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
ids = st.one_of(st.text(min_size=0, max_size=12), st.integers(-5, 10**20), st.booleans(), st.none())
event_like = st.fixed_dictionaries(
    {
        "event_id": ids,
        "type": st.sampled_from(["view", "click", "add_to_cart", "purchase", "impression", "x"]),
        "user_id": ids,
        "ts": st.one_of(
            st.integers(10**11, 3 * 10**13), st.integers(), st.text(max_size=30), st.floats(), st.booleans()
        ),
    },
    optional={
        "item_id": ids,
        "item_ids": st.lists(ids, max_size=4),
        "request_id": ids,
        "session_id": ids,
        "query": st.text(max_size=20),
        "position": st.integers(-3, 20_000),
        "extra": json_values,
    },
)
catalog_like = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["upsert", "delete", "merge"]),
        "item_id": ids,
        "ts": st.one_of(st.integers(10**11, 3 * 10**13), st.integers(), st.text(max_size=30)),
    },
    optional={
        "title": st.text(max_size=20),
        "category": st.text(max_size=10),
        "price": st.floats(),
        "description": st.text(max_size=20),
    },
)
valid_ids = st.one_of(st.text(min_size=1, max_size=12).filter(str.strip), st.integers(0, 10**9))


@st.composite
def nearly_valid_events(draw) -> dict:
    """Mostly valid events (any text in ids, impressions included), sometimes with one field broken."""
    typ = draw(st.sampled_from(["view", "click", "add_to_cart", "purchase", "impression"]))
    e = {
        "event_id": draw(valid_ids),
        "type": typ,
        "user_id": draw(valid_ids),
        "ts": draw(st.integers(10**11, 4 * 10**12)),
    }
    if typ == "impression":
        e["item_ids"] = draw(st.lists(valid_ids, min_size=1, max_size=5, unique_by=lambda v: str(v).strip()))
        e["request_id"] = draw(valid_ids)
    else:
        e["item_id"] = draw(valid_ids)
    if draw(st.booleans()):
        e["session_id"] = draw(valid_ids)
    if draw(st.integers(0, 4)) == 0:
        e[draw(st.sampled_from(sorted(e)))] = draw(json_values)
    return e


payloads = st.one_of(
    nearly_valid_events().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    catalog_like.map(lambda v: json.dumps(v).encode()),
    st.binary(min_size=MAX + 1, max_size=MAX + 50),
)


def check(raw: bytes | None, is_catalog: bool):
    m = classify(raw, topic="t", is_catalog=is_catalog, max_bytes=MAX, partition=0, offset=7, key=b"\xffk", now_ms=1)
    if isinstance(m, DeadLetter):
        assert m.reason in REASONS and m.error
        assert m.original_bytes() == (raw or b"")
        assert DeadLetter.model_validate_json(encode(m)) == m  # the letter itself always serialises
    else:
        assert isinstance(m, CatalogOp if is_catalog else Event)
        assert classify(encode(m), topic="t", is_catalog=is_catalog, max_bytes=10**6) == m  # stable
    return m


@hsettings(max_examples=400, deadline=None)
@given(payloads, st.booleans())
def test_every_input_is_accepted_or_dead_lettered(raw, is_catalog):
    check(raw, is_catalog)


def test_known_bad_inputs_get_their_reason():
    cases = {
        None: "not_json",
        b"": "not_json",
        b"\xc3\x28": "not_utf8",
        b"[]": "not_object",
        b"x" * (MAX + 1): "oversize",
        b'{"event_id":"a","type":"teleport","user_id":"u","ts":1700000000000,"item_id":"i"}': "unknown_type",
        b'{"event_id":"a","type":"view","user_id":"u","ts":1700000000000,"item_id":"i\\u001fj"}': "invalid",
        b'{"event_id":"a","type":"view","user_id":"\\ud800","ts":1700000000000,"item_id":"i"}': "invalid",
        b'{"event_id":"a","type":"click","user_id":"u","ts":1700000000000,"item_id":"i","query":"x\\ud83d"}': "invalid",
        # U+001F and a lone surrogate only ever arrive escaped: JSON refuses raw control characters
        b'{"event_id":"a\x1fb","type":"view","user_id":"u","ts":1700000000000,"item_id":"i"}': "not_json",
    }
    for raw, reason in cases.items():
        m = check(raw, False)
        assert isinstance(m, DeadLetter) and m.reason == reason, (raw, m)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(payloads, min_size=1, max_size=8))
def test_accepted_records_are_always_storable(settings, batch):
    """Whatever the validator accepts, the atomic writer stores (on the real Redis)."""
    writer = Writer(connect_binary(settings), settings.redis.prefix, "prop")
    stored = writer.stored_offset("t", 0) or 0
    for is_catalog in (False, True):
        records = [
            (stored + i, m, raw, b"k") for i, raw in enumerate(batch) if (m := check(raw, is_catalog)) is not None
        ]
        res = writer.apply("t", 0, records, stored + len(batch))
        assert res.status == "ok" and res.applied + len(res.quarantined) == len(records)
        stored += len(batch)
