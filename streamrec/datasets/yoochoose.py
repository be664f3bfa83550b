"""YOOCHOOSE (RecSys Challenge 2015) clicks, the 100k sample of session-rec's ``rsc15`` preparation.

Real: anonymous sessions of product clicks with their item ids and times
(``SessionId, ItemId, Time`` tab-separated, epoch seconds); ``train_full`` is the history and
``test`` the day after it, as session-rec splits them. No titles, categories or users: a second
shop for the session families, one they were not tuned on (DIGINETICA is).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "yoochoose-clicks-100k_test.txt").write_text(
...     "SessionId\\tItemId\\tTime\\n7\\t30\\t200.0\\n5\\t10\\t100.0\\n5\\t11\\t150.5\\n7\\t31\\t210.0\\n")
>>> list(sessions(d, "test"))
[[10, 11], [30, 31]]
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

PARTS = ("train_full", "train_tr", "train_valid", "test")


def _folder(path: Path | str) -> Path:
    p = Path(path)
    return p / "yoochoose_100k" if (p / "yoochoose_100k").is_dir() else p


def sessions(path: Path | str, part: str = "train_full") -> Iterator[list[int]]:
    """The item ids of each session in click order, sessions in the order of their first click."""
    if part not in PARTS:
        raise ValueError(f"unknown YOOCHOOSE part {part!r}; one of {PARTS}")
    clicks: dict[str, list[tuple[float, int]]] = defaultdict(list)
    with open(_folder(path) / f"yoochoose-clicks-100k_{part}.txt", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            clicks[row["SessionId"]].append((float(row["Time"]), int(row["ItemId"])))
    for events in sorted(clicks.values(), key=min):
        yield [item for _t, item in sorted(events)]
