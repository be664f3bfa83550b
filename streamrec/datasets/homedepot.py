"""Home Depot product search relevance (Kaggle 2016): a titles-only catalogue plus graded labels.

``products.csv`` (``product_uid, product_title``) becomes upserts; ``labels_dev.csv``
(``id, product_uid, search_term, relevance``; 1 = irrelevant … 3 = exact) gives, per query, the
graded products for search-quality benchmarks (nDCG with gain = relevance − 1).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

from streamrec.datasets import dataset_folder
from streamrec.schemas import CatalogOp

NAME = "homedepot"


def catalog(data_dir: Path, now_ms: int | None = None, limit: int | None = None) -> Iterator[CatalogOp]:
    """Upserts in file order; rows without a title are skipped (an upsert needs one)."""
    folder = dataset_folder(data_dir, NAME)
    ts = now_ms or int(time.time() * 1000)
    n = 0
    with open(folder / "products.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            title = (row.get("product_title") or "").strip()
            if not title:
                continue
            yield CatalogOp(op="upsert", item_id=row["product_uid"], ts=ts, title=title[:1000])
            n += 1
            if limit is not None and n >= limit:
                return


def relevance_labels(data_dir: Path) -> dict[str, dict[str, float]]:
    """search_term → {product_uid: relevance}; terms are kept as typed (lower-cased only)."""
    folder = dataset_folder(data_dir, NAME)
    labels: dict[str, dict[str, float]] = {}
    with open(folder / "labels_dev.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            term = " ".join(row["search_term"].lower().split())
            if term:
                labels.setdefault(term, {})[row["product_uid"]] = float(row["relevance"])
    return labels
