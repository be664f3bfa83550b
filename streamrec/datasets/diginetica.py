"""DIGINETICA (CIKM Cup 2016) → streamrec ``Event`` / ``CatalogOp``.

What is real and what is derived — read before trusting a number built on it:

* ``session_events``: ``train_sessions.jsonl`` (SR-GNN preprocessing) holds, per anonymous
  session, the *real* sequence of product views in time order, with re-indexed item ids that do
  not map to the raw ids; items are named ``sg{id}`` to keep them apart. Everything else is
  **derived**, deterministically: the k-th occurrence of an item within its session becomes
  ``view`` (k=1, 84 % of rows), ``click`` (k=2), ``add_to_cart`` (k=3), ``purchase`` (k≥4) —
  repeated attention as a stand-in for the funnel; timestamps put session ``s`` (0-based line)
  at 2016-01-01 + ``s`` minutes (the file is in time order; 186,670 sessions span Jan–May 2016 as
  the real data does) and its events ``STEP_MS`` apart, so longer sessions overlap the next ones.
  The user is the session (``dgs{s}``).
* ``purchase_events`` / ``view_events``: raw ``train-purchases.csv`` and
  ``sample_train-item-views.csv`` — **real** types, users (``NA`` → ``anon-{session}``), raw item
  ids and times (``eventdate`` midnight UTC + ``timeframe`` ms since the session's first query).
* ``catalog``: one upsert per raw item of ``product-categories.csv`` with its **real** category;
  the public data has no titles, so the title is the **derived** ``"DIGINETICA product {id}"``.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

from streamrec.schemas import CatalogOp, Event

START_MS = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp() * 1000)
SESSION_GAP_MS = 60_000
STEP_MS = 15_000
FUNNEL = ("view", "click", "add_to_cart", "purchase")


def _folder(path: Path | str) -> Path:
    p = Path(path)
    return p / "diginetica" if (p / "diginetica").is_dir() else p


def sessions(path: Path | str) -> Iterator[list[int]]:
    """The SR-GNN item-id lists, one per session, in time order."""
    with open(_folder(path) / "train_sessions.jsonl") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def session_events(path: Path | str, limit: int | None = None) -> Iterator[Event]:
    """Views of ``train_sessions.jsonl`` with derived types and times (see module docstring)."""
    produced = 0
    for s, items in enumerate(sessions(path)):
        seen: Counter[int] = Counter()
        for pos, item in enumerate(items):
            if limit is not None and produced >= limit:
                return
            seen[item] += 1
            yield Event(
                event_id=f"dgs{s}-{pos}",
                type=FUNNEL[min(seen[item], 4) - 1],
                user_id=f"dgs{s}",
                item_id=f"sg{item}",
                session_id=f"dgs{s}",
                ts=START_MS + s * SESSION_GAP_MS + pos * STEP_MS,
            )
            produced += 1


def _raw_ts(eventdate: str, timeframe: str) -> int:
    day = date.fromisoformat(eventdate)
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000) + int(timeframe)


def _raw_rows(path: Path, kind: str) -> Iterator[Event]:
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f, delimiter=";")):
            if kind == "purchase":
                session, user, item = row["sessionId"], row["userId"], row["itemId"]
            else:
                session, user, item = row["session_id"], row["user_id"], row["item_id"]
            yield Event(
                event_id=f"dg{kind[0]}{row_no}",
                type=kind,
                user_id=user if user != "NA" else f"anon-{session}",
                item_id=item,
                session_id=f"dg{session}",
                ts=_raw_ts(row["eventdate"], row["timeframe"]),
            )


def purchase_events(path: Path | str) -> list[Event]:
    """Real purchases, sorted by time (the file is ordered by session, not time)."""
    return sorted(_raw_rows(_folder(path) / "train-purchases.csv", "purchase"), key=lambda e: (e.ts, e.event_id))


def view_events(path: Path | str) -> list[Event]:
    """The real view sample, sorted by time."""
    return sorted(_raw_rows(_folder(path) / "sample_train-item-views.csv", "view"), key=lambda e: (e.ts, e.event_id))


def events(path: Path | str, limit: int | None = None) -> Iterator[Event]:
    """Everything above merged by time: derived session events plus the real typed rows.

    Sessions start a minute apart but last up to 70 × ``STEP_MS``, so consecutive sessions
    overlap (as real ones do): the stream is in time order up to the length of a session.
    """
    merged = heapq.merge(session_events(path), purchase_events(path), view_events(path), key=lambda e: e.ts)
    for n, e in enumerate(merged):
        if limit is not None and n >= limit:
            return
        yield e


def catalog(path: Path | str, item_ids: set[str] | None = None) -> Iterator[CatalogOp]:
    """Upserts with the real category per raw item (optionally only ``item_ids``)."""
    with open(_folder(path) / "product-categories.csv", newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            if item_ids is None or row["itemId"] in item_ids:
                yield CatalogOp(
                    op="upsert",
                    item_id=row["itemId"],
                    ts=START_MS,
                    title=f"DIGINETICA product {row['itemId']}",
                    category=row["categoryId"],
                )
