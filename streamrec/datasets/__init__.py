"""Adapters from public dataset formats to streamrec's contract (`Event`, `CatalogOp`).

One module per dataset, each exposing plain generators (``catalog(folder)``, ``events(folder)``),
so a user can point streamrec at their own download of the same public data, or write one more
small module for their own files. Files are read from ``STREAMREC_DATA_DIR`` (see README, 'Data').
"""

from __future__ import annotations

from pathlib import Path


def dataset_folder(data_dir: Path, name: str) -> Path:
    """``data_dir/name``, or a clear error naming what is missing and how to fix it."""
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset folder {folder} not found; set STREAMREC_DATA_DIR to the folder that holds "
            f"'{name}/' (see README, 'Data')"
        )
    return folder
