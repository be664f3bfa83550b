"""Published versions of the fine-tuned query encoder, on disk beside the ranking models.

Layout under ``root`` (``settings.query_encoders_dir``)::

    v000001/              a HuggingFace model directory (weights, config, tokenizer) + meta.json
    v000001/*.onnx        serving's ONNX build of it, made by the first worker that loads it
    CURRENT               the version serving uses, as text; absent or 0 = the pretrained encoder
    status.json           the learner's tuner: training now or not, and its last verdict

The learner writes (``learner/query_tuning.py``), serving follows (``serving/query_versions.py``).
A version is written to a temporary directory and renamed into place before ``CURRENT`` moves, so a
reader never sees half a model; a version directory never changes afterwards, so its ONNX builds
can live inside it.

>>> import tempfile
>>> store = QueryVersions(Path(tempfile.mkdtemp()))
>>> store.current(), store.path(0)
(0, None)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from streamrec.model_store import fsync_dir_files, read_pointer, write_pointer


class QueryVersions:
    def __init__(self, root: Path):
        self.root = Path(root)

    def current(self) -> int:
        return read_pointer(self.root)

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(
            int(p.name[1:]) for p in self.root.glob("v*") if p.name[1:].isdigit() and (p / "meta.json").is_file()
        )

    def path(self, version: int) -> Path | None:
        """The version's model directory; None for 0 (the pretrained encoder) or a pruned version."""
        p = self.root / f"v{version:06d}"
        return p if version > 0 and (p / "meta.json").is_file() else None

    def meta(self, version: int) -> dict:
        p = self.path(version)
        return json.loads((p / "meta.json").read_text()) if p is not None else {}

    def status(self) -> dict:
        try:
            return json.loads((self.root / "status.json").read_text())
        except FileNotFoundError:
            return {}

    def write_status(self, status: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".status.{os.getpid()}"
        partial.write_text(json.dumps({**status, "t": int(time.time() * 1000)}, sort_keys=True, default=float))
        os.replace(partial, self.root / "status.json")

    def publish(self, write: Callable[[Path], None], meta: dict, keep: int) -> int:
        """``write(directory)`` saves the model; the new version becomes current. Older versions
        beyond ``keep`` are removed (never the current one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            write(tmp)
            fsync_dir_files(tmp)
            version = max(self.versions(), default=0) + 1
            meta = {**meta, "version": version, "created_ms": int(time.time() * 1000)}
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
            os.rename(tmp, self.root / f"v{version:06d}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.point(version)
        for old in self.versions()[:-keep]:
            if old != version:
                shutil.rmtree(self.root / f"v{old:06d}", ignore_errors=True)
        return version

    def point(self, version: int) -> None:
        """Make ``version`` current (0: the pretrained encoder); serving follows within a poll."""
        write_pointer(self.root, version)
