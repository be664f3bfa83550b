"""The catalogue adapters index_updater is benchmarked on: real files in, valid CatalogOps out."""

from __future__ import annotations

import csv
import itertools

import pytest

from streamrec.datasets import homedepot, instacart
from streamrec.encoder import item_text
from streamrec.schemas import CatalogOp, decode_catalog, encode
from streamrec.settings import Settings


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_homedepot_products_and_labels(data_dir):
    ops = list(itertools.islice(homedepot.catalog(data_dir), 200))
    assert all(isinstance(op, CatalogOp) and op.op == "upsert" and op.title for op in ops)
    assert len({op.item_id for op in ops}) == len(ops)
    assert decode_catalog(encode(ops[0])) == ops[0], "adapters emit what the wire accepts"
    assert len(list(homedepot.catalog(data_dir, limit=7))) == 7
    labels = homedepot.relevance_labels(data_dir)
    grades = [g for graded in labels.values() for g in graded.values()]
    assert len(labels) > 1000 and min(grades) >= 1.0 and max(grades) <= 3.0


def test_instacart_categories_join_departments_and_aisles(data_dir):
    folder = data_dir / "instacart"
    first = rows(folder / "products.csv")[0]
    aisles = {r["aisle_id"]: r["aisle"] for r in rows(folder / "aisles.csv")}
    departments = {r["department_id"]: r["department"] for r in rows(folder / "departments.csv")}
    op = next(instacart.catalog(data_dir))
    assert (op.item_id, op.title) == (first["product_id"], first["product_name"])
    assert op.category == f"{departments[first['department_id']]} > {aisles[first['aisle_id']]}"
    assert item_text(op, Settings().encoder.item_text_template) == f"{op.title}. {op.category}"


def test_a_missing_dataset_folder_says_how_to_fix_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="STREAMREC_DATA_DIR"):
        next(instacart.catalog(tmp_path))
