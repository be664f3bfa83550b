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
