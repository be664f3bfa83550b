"""Amazon Reviews 2018 (Office Products, 5-core), as prepared by MiniOneRec.

``items.json`` maps item id → title, description, brand; ``valid.csv`` / ``test.csv`` hold one
row per user: the user's history (oldest first) and the next item. The files carry no
timestamps, so ``histories`` yields the real item order only and the replayer stamps events with
the time it sends them.
"""

from __future__ import annotations

import ast
import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamrec.datasets import dataset_folder
from streamrec.schemas import CatalogOp

NAME = "amazon18_office"


def _description(raw: str) -> str | None:
    """Descriptions are stringified Python lists of paragraphs; join the non-empty ones."""
    try:
        parts = ast.literal_eval(raw) if raw.startswith("[") else [raw]
    except (ValueError, SyntaxError):
        parts = [raw]
    text = " ".join(str(p).strip() for p in parts if str(p).strip())
    return text[:2000] or None


def catalog(data_dir: Path, now_ms: int | None = None) -> Iterator[CatalogOp]:
    folder = dataset_folder(data_dir, NAME)
    ts = now_ms or int(time.time() * 1000)
    with open(folder / "items.json", encoding="utf-8") as f:
        items = json.load(f)
    for item_id, item in items.items():
        title = (item.get("title") or "").strip()
        if not title:
            continue
        yield CatalogOp(
            op="upsert",
            item_id=item_id,
            ts=ts,
            title=title[:1000],
            description=_description(item.get("description") or ""),
            # the dataset has no categories: the brand also stands in for one (category affinity features)
            category=(item.get("brand") or "").strip()[:200] or None,
            brand=(item.get("brand") or "").strip()[:200] or None,
        )


@dataclass(frozen=True)
class History:
    user_id: str
    item_ids: list[str]  # oldest first; the last one is the held-out "next item"


def histories(data_dir: Path, split: str = "valid") -> Iterator[History]:
    folder = dataset_folder(data_dir, NAME)
    with open(folder / f"{split}.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            past = [str(i) for i in ast.literal_eval(row["history_item_id"])]
            yield History(user_id=row["user_id"], item_ids=past + [str(row["item_id"])])
