"""Instacart Online Grocery Shopping 2017: the full product catalogue with aisles and departments.

``products.csv`` (``product_id, product_name, aisle_id, department_id``) joined with
``aisles.csv`` and ``departments.csv`` becomes upserts whose category reads "department > aisle".
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

from streamrec.datasets import dataset_folder
from streamrec.schemas import CatalogOp

NAME = "instacart"


def _names(path: Path, id_col: str, name_col: str) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row[id_col]: row[name_col].strip() for row in csv.DictReader(f)}


def catalog(data_dir: Path, now_ms: int | None = None, limit: int | None = None) -> Iterator[CatalogOp]:
    folder = dataset_folder(data_dir, NAME)
    ts = now_ms or int(time.time() * 1000)
    aisles = _names(folder / "aisles.csv", "aisle_id", "aisle")
    departments = _names(folder / "departments.csv", "department_id", "department")
    n = 0
    with open(folder / "products.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            title = (row.get("product_name") or "").strip()
            if not title:
                continue
            parts = [departments.get(row["department_id"], ""), aisles.get(row["aisle_id"], "")]
            category = " > ".join(p for p in parts if p and p != "missing") or None
            yield CatalogOp(
                op="upsert",
                item_id=row["product_id"],
                ts=ts,
                title=title[:1000],
                category=category[:200] if category else None,
            )
            n += 1
            if limit is not None and n >= limit:
                return
