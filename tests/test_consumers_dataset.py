"""The DIGINETICA adapter: real rows stay real, derived fields follow the documented rules."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from streamrec.datasets import diginetica


def ms(y, m, d) -> int:
    return int(datetime(y, m, d, tzinfo=UTC).timestamp() * 1000)


def test_session_events_derive_types_from_repeats_and_times_from_position(data_dir):
    events = list(itertools.islice(diginetica.session_events(data_dir), 30))
    fifth = [e for e in events if e.session_id == "dgs4"]  # line 5: [10, 11, 12, 12, 13, 14, 15]
    assert [e.item_id for e in fifth] == ["sg10", "sg11", "sg12", "sg12", "sg13", "sg14", "sg15"]
    assert [e.type for e in fifth] == ["view", "view", "view", "click", "view", "view", "view"]
    assert [e.ts for e in fifth] == [ms(2016, 1, 1) + 4 * 60_000 + k * 15_000 for k in range(7)]
    assert {e.user_id for e in fifth} == {"dgs4"}
    seventh = [e.type for e in events if e.session_id == "dgs6"]  # [19, 19, 20]
    assert seventh == ["view", "click", "view"]


def test_real_rows_keep_their_type_user_item_and_time(data_dir):
    purchase = next(e for e in diginetica.purchase_events(data_dir) if e.event_id == "dgp0")
    assert (purchase.type, purchase.user_id, purchase.item_id) == ("purchase", "18278", "25911")
    assert purchase.ts == ms(2016, 5, 6) + 17_100_868
    view = next(e for e in diginetica.view_events(data_dir) if e.event_id == "dgv0")
    assert (view.type, view.user_id, view.item_id, view.ts) == ("view", "anon-1", "81766", ms(2016, 5, 9) + 526_309)
    assert len(diginetica.purchase_events(data_dir)) == 18_025


def test_catalog_has_the_real_category(data_dir):
    (op,) = diginetica.catalog(data_dir, {"25911"})
    assert (op.op, op.item_id, op.category) == ("upsert", "25911", "822")


def test_merged_stream_is_in_time_order_up_to_one_session(data_dir):
    stamps = [e.ts for e in diginetica.events(data_dir, limit=50_000)]
    longest_session_ms = 70 * diginetica.STEP_MS
    latest = 0
    for ts in stamps:
        assert ts >= latest - longest_session_ms
        latest = max(latest, ts)
    assert len(stamps) == 50_000
