"""Every named dataset source reads the real files into valid contract objects."""

import itertools

import pytest

from streamrec.datasets import dataset_folder, sources
from streamrec.schemas import CatalogOp, Event


@pytest.mark.parametrize("name", sorted(sources.SOURCES))
def test_source_yields_valid_contract_objects(name, data_dir):
    first = list(itertools.islice(sources.load(name, data_dir), 50))
    assert len(first) == 50
    kind = CatalogOp if name.endswith(":catalog") else Event
    assert all(isinstance(x, kind) for x in first)
    assert len({(x.item_id if kind is CatalogOp else x.event_id) for x in first}) == 50


def test_unknown_source_and_missing_folder_fail_clearly(tmp_path):
    with pytest.raises(KeyError, match="known:"):
        sources.load("nope:events", tmp_path)
    with pytest.raises(FileNotFoundError, match="STREAMREC_DATA_DIR"):
        dataset_folder(tmp_path, "amazon18_office")


def test_amazon_catalog_has_titles_and_joined_descriptions(data_dir):
    from streamrec.datasets import amazon18

    ops = {op.item_id: op for op in amazon18.catalog(data_dir)}
    assert len(ops) == 3459
    assert ops["0"].title.startswith("HP 74 Black")
    assert ops["0"].category == "HP" and "[" not in (ops["0"].description or "")[:1]
    history = next(amazon18.histories(data_dir))
    assert history.user_id == "A994" and history.item_ids[-1] == "2280"


def test_amazon_office_windows_join_into_one_sequence_per_user(data_dir, tmp_path):
    from streamrec.datasets import amazon18

    seqs = amazon18.sequences(data_dir)
    assert len(seqs) == 3231 and all(len(s) >= 2 for s in seqs.values())
    # the user's first validation window, its next item, then the next item of their second row
    assert seqs["A994"][:6] == ["2122", "243", "811", "812", "2280", "1750"]
    # a window that does not continue the sequence (a changed or shuffled file) fails loudly
    folder = tmp_path / amazon18.NAME
    folder.mkdir()
    header = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid\n"
    (folder / "valid.csv").write_text(header + 'u,[],x,"[1, 2]",3,,\n' + 'u,[],x,"[2, 4]",5,,\n')
    (folder / "test.csv").write_text(header)
    with pytest.raises(ValueError, match="not the tail"):
        amazon18.sequences(tmp_path)


def test_open_bandit_user_history_becomes_organic_clicks_before_the_impression(data_dir):
    from streamrec.datasets import open_bandit as ob

    rows = list(ob.impressions(data_dir, "bts", "men"))
    assert len(rows) == 10_000
    with_history = [r for r in rows if r.history]
    assert with_history and all(h.startswith("men:") for r in with_history for h in r.history)
    # the affinity precedes the impression: only a few clicked rows had clicked that item before
    clicked = [r for r in rows if r.click]
    assert 0 < sum(r.item_id in r.history for r in clicked) < len(clicked) // 10
    # anonymous visits are not pooled; a user with a history keeps one id for that history
    assert len({r.user_id for r in rows if not r.history}) == len(rows) - len(with_history)
    history_of = {}
    for r in with_history:
        assert history_of.setdefault(r.user_id, r.history) == r.history
    assert len(history_of) < len(with_history)  # returning users: the same id on several rows

    events = list(ob.to_events(rows))
    assert len({e.event_id for e in events}) == len(events)  # idempotent ids, each history click once
    organic = [e for e in events if e.event_id.startswith("obd-hist-")]
    assert organic and all(e.type == "click" and e.request_id is None for e in organic)
    assert len(organic) == len({(r.user_id, h) for r in with_history for h in r.history})
    first_imp = {}
    for k, e in enumerate(events):
        if e.type == "impression":
            first_imp.setdefault(e.user_id, (k, e.ts))
    for e in organic:
        k, ts = first_imp[e.user_id]
        assert e.ts == ts - 1
    order = {e.event_id: k for k, e in enumerate(events)}
    assert all(order[e.event_id] < first_imp[e.user_id][0] for e in organic)
    assert sum(e.type == "impression" for e in events) == len(rows)
    assert sum(e.type == "click" and e.request_id is not None for e in events) == len(clicked)
