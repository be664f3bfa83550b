"""Named dataset sources for `streamrec replay dataset:NAME:KIND` and `streamrec up`.

Each entry points at an adapter generator taking the data directory; adapters are imported only
when used, so a missing optional dataset never breaks the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

from streamrec.schemas import CatalogOp, Event

SOURCES: dict[str, tuple[str, str, str]] = {
    "amazon18_office:catalog": ("streamrec.datasets.amazon18", "catalog",
                                "Amazon 2018 Office Products: 3,459 items with title, brand, description"),
}


def describe() -> dict[str, str]:
    return {name: doc for name, (_m, _f, doc) in SOURCES.items()}


def load(name: str, data_dir: Path) -> Iterator[CatalogOp | Event]:
    if name not in SOURCES:
        raise KeyError(f"unknown dataset source {name!r}; known: {', '.join(SOURCES)}")
    module, fn, _doc = SOURCES[name]
    return getattr(importlib.import_module(module), fn)(data_dir)
