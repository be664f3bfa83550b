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


def sequences(data_dir: Path) -> dict[str, list[str]]:
    """Each user's whole item sequence, oldest first, users in order of their first row.

    The files hold windows of at most ten items (``valid`` an earlier period than ``test``); a
    user's sequence is their first window followed by the next item of each of their rows, in file
    order (every later window is the tail of the sequence so far: checked, so a changed file fails
    loudly instead of yielding shuffled histories)."""
    out: dict[str, list[str]] = {}
    for split in ("valid", "test"):
        for h in histories(data_dir, split):
            *window, nxt = h.item_ids
            seq = out.setdefault(h.user_id, list(window))
            if window and seq[-len(window) :] != window:
                raise ValueError(f"{NAME}: user {h.user_id}'s {split} window is not the tail of their sequence")
            seq.append(nxt)
    return out
