"""Amazon 2014 Beauty and Toys and Games, as S3-Rec prepared them (a line per user: ``user item item …``,
items in time order, 5-core).

Real purchase-review sequences of 22,363 (Beauty) and 19,412 (Toys) users; ids only, no titles.
The S3-Rec papers evaluate on it leave-one-out over the whole item set (HR@10 / NDCG@10), which
makes it the published yardstick for ``/recommend`` on users with long histories rather than
anonymous sessions.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "Beauty.txt").write_text("1 5 6 7\\n2 6 8\\n")
>>> sequences(d, "Beauty")
{'1': ['5', '6', '7'], '2': ['6', '8']}
"""

from __future__ import annotations

from pathlib import Path

NAME = "amazon14_sequences"
CATEGORIES = ("Beauty", "Toys_and_Games")


def _folder(path: Path | str) -> Path:
    p = Path(path)
    return p / NAME if (p / NAME).is_dir() else p


def sequences(path: Path | str, category: str = "Beauty") -> dict[str, list[str]]:
    """User id → item ids, oldest first, users in file order."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown Amazon 2014 category {category!r}; one of {CATEGORIES}")
    out: dict[str, list[str]] = {}
    with open(_folder(path) / f"{category}.txt", encoding="utf-8") as f:
        for line in f:
            user, *items = line.split()
            if items:
                out[user] = items
    return out
