"""Versioned ranking-model snapshots on disk: publish, latest, load, list, rollback.

Layout under ``root`` (``settings.models_dir``)::

    v000001/model.pt     weights + head config (torch, loadable with weights_only=True)
    v000001/meta.json    feature schema, metrics, reason, created time
    CURRENT              the served version number, as text

Atomicity: a version is written to a temporary directory and renamed into place, and ``CURRENT``
is replaced with ``os.replace`` only afterwards, so a reader that follows ``CURRENT`` never sees
a half-written snapshot. Readers poll ``latest_version()`` (one tiny file read) and ``load()``
only when it changes. Rollback moves ``CURRENT`` back; the next publish gets a new, higher number.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from streamrec.ranking import SCHEMA_ID, RankingHead, head_from_state

_POINTER = "CURRENT"


class ModelNotFound(KeyError):
    """The requested model version does not exist (or no model was published yet)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else "model not found"


def _vdir(version: int) -> str:
    return f"v{version:06d}"


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, s: Any) -> ModelStore:
        return cls(s.models_dir)

    # --- reading --------------------------------------------------------------------------------

    def latest_version(self) -> int:
        """The served version; 0 when nothing was published. Cheap enough to poll every 0.2 s."""
        return read_pointer(self.root)

    def versions(self) -> list[int]:
        out = []
        for p in self.root.glob("v*"):
            if p.is_dir() and p.name[1:].isdigit() and (p / "meta.json").exists():
                out.append(int(p.name[1:]))
        return sorted(out)

    def meta(self, version: int) -> dict:
        path = self.root / _vdir(version) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelNotFound(f"model version {version} does not exist in {self.root}") from None

    def load(self, version: int | None = None) -> tuple[int, RankingHead, dict]:
        """``(version, head, meta)``; ``version=None`` loads the served one."""
        v = self.latest_version() if version is None else int(version)
        if v <= 0:
            raise ModelNotFound(f"no model has been published in {self.root} yet")
        meta = self.meta(v)
        try:
            blob = torch.load(self.root / _vdir(v) / "model.pt", map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelNotFound(f"model version {v} has no weights in {self.root}") from None
        head = head_from_state(blob["config"], blob["state"])
        head.eval()
        return v, head, meta

    def list(self) -> list[dict]:
        """One dict per version, oldest first: version, current, created_ms, reason, metrics."""
        cur = self.latest_version()
        rows = []
        for v in self.versions():
            m = self.meta(v)
            rows.append(
                {
                    "version": v,
                    "current": v == cur,
                    "created_ms": m.get("created_ms"),
                    "reason": m.get("reason"),
                    "parent": m.get("parent"),
                    "updates": m.get("updates"),
                    "metrics": m.get("metrics", {}),
                    # what /search may use of this version (the head's scorecard) and the position bias
                    "search_card": m.get("search_card"),
                    "position_bias": m.get("position_bias"),
                    "query_tuning": m.get("query_tuning"),  # the learner's fine-tuned query side
                }
            )
        return rows

    # --- writing --------------------------------------------------------------------------------

    def publish(self, head: RankingHead, meta: dict | None = None) -> int:
        """Write a new version and make it current; returns its number."""
        meta = dict(meta or {})
        meta.setdefault("created_ms", int(time.time() * 1000))
        meta["feature_schema"] = {"id": SCHEMA_ID, "names": list(head.feature_names)}
        meta["head"] = head.config()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            torch.save({"config": head.config(), "state": state}, tmp / "model.pt")
            v = max(self.versions(), default=0)
            for _attempt in range(100):
                v += 1
                meta["version"] = v
                (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, default=float))
                fsync_dir_files(tmp)
                try:
                    os.rename(tmp, self.root / _vdir(v))  # fails if another publisher took v
                    break
                except OSError:
                    continue
            else:  # pragma: no cover - 100 concurrent publishers
                raise RuntimeError(f"could not allocate a model version in {self.root}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point(v)
        return v

    def prune(self, keep: int, protect: set[int] | frozenset[int] = frozenset()) -> builtins.list[int]:
        """Delete all but the newest ``keep`` versions; never the served one nor ``protect``.

        A learner publishing every few seconds writes thousands of versions a day; old ones only
        matter as rollback targets, and the rollback guard names the one it may need.
        """
        if keep < 1:
            raise ValueError("keep must be at least 1")
        versions = self.versions()
        spare = {self.latest_version(), *protect}
        doomed = [v for v in versions[:-keep] if v not in spare]
        for v in doomed:
            path = self.root / _vdir(v)
            tomb = self.root / f".del-{_vdir(v)}-{os.getpid()}"
            os.rename(path, tomb)  # out of sight atomically, then removed
            shutil.rmtree(tomb, ignore_errors=True)
        return doomed

    def rollback(self, version: int) -> None:
        """Serve ``version`` again (it must exist); the learner adopts it as its champion."""
        self.meta(version)  # raises ModelNotFound
        if not (self.root / _vdir(version) / "model.pt").exists():
            raise ModelNotFound(f"model version {version} has no weights in {self.root}")
        self._point(version)

    def previous_version(self) -> int | None:
        """The rollback target of the served version: its parent when still on disk, else the newest
        older version; None when there is none."""
        cur = self.latest_version()
        versions = self.versions()
        try:
            parent = self.meta(cur).get("parent") if cur else None
        except ModelNotFound:
            parent = None
        if isinstance(parent, int) and 0 < parent < cur and parent in versions:
            return parent
        older = [v for v in versions if v < cur]
        return older[-1] if older else None

    def _point(self, version: int) -> None:
        write_pointer(self.root, version)


def read_pointer(root: Path) -> int:
    """The version ``root/CURRENT`` names; 0 when there is none (the query-encoder versions share it)."""
    try:
        text = (root / _POINTER).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def write_pointer(root: Path, version: int) -> None:
    """Replace ``root/CURRENT`` atomically and durably: a reader sees the old or the new number."""
    fd, tmp = tempfile.mkstemp(prefix=".ptr-", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(str(version))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / _POINTER)


def fsync_dir_files(d: Path) -> None:
    for p in d.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
