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
    "amazon18_office:catalog": (
        "streamrec.datasets.amazon18",
        "catalog",
        "Amazon 2018 Office Products: 3,459 items with title, brand, description",
    ),
    "diginetica:events": (
        "streamrec.datasets.diginetica",
        "events",
        "DIGINETICA sessions + raw purchases/views, time-ordered (types derived; see module)",
    ),
    "diginetica:catalog": (
        "streamrec.datasets.diginetica",
        "catalog",
        "DIGINETICA items with their real category (no titles in the public data)",
    ),
    "open_bandit:events": (
        "streamrec.datasets.open_bandit",
        "events",
        "Open Bandit (ZOZOTOWN) impressions with real positions, then their clicks",
    ),
    "homedepot:catalog": ("streamrec.datasets.homedepot", "catalog", "Home Depot: 54,667 products with titles"),
    "instacart:catalog": (
        "streamrec.datasets.instacart",
        "catalog",
        "Instacart: 49,688 products with aisle and department",
    ),
}


def describe() -> dict[str, str]:
    return {name: doc for name, (_m, _f, doc) in SOURCES.items()}


def load(name: str, data_dir: Path) -> Iterator[CatalogOp | Event]:
    if name not in SOURCES:
        raise KeyError(f"unknown dataset source {name!r}; known: {', '.join(SOURCES)}")
    module, fn, _doc = SOURCES[name]
    return getattr(importlib.import_module(module), fn)(data_dir)
