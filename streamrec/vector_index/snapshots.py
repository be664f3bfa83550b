"""Index snapshots on disk: a LiveIndex dump plus the vectors-topic offsets it covers.

<snapshot_dir>/index/<created_ms>-v<version>/
  manifest.json   format, topic, dim, factory, metric, version, next_id, created_ms,
                  offsets {partition: next offset to read}, model_id, sha256 of every file
  items.jsonl     one line per live item: item_id, faiss_id, content_hash, meta
  vectors.npy     float32 (n, dim), rows in items.jsonl order
  dead.npy        int64 tombstoned FAISS ids still inside index.faiss
  index.faiss     the CPU FAISS index (absent while an untrained factory searches exactly)
A snapshot directory is written under a temporary name and renamed into place, so a reader
sees a whole snapshot or none; checksums catch a file damaged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamrec.settings import Settings
from streamrec.vector_index.live import IndexDump, ItemMeta

SNAPSHOT_FORMAT = 1


class SnapshotError(Exception):
    """A snapshot that cannot be used; the replica logs it and rebuilds from the topic."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict
    dump: IndexDump
    hashes: dict[str, str]

    @property
    def offsets(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self.manifest["offsets"].items()}


def index_snapshot_dir(s: Settings) -> Path:
    return s.snapshot_dir / "index"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_snapshot(
    directory: Path,
    dump: IndexDump,
    *,
    topic: str,
    offsets: dict[int, int],
    hashes: dict[str, str],
    model_id: str | None = None,
    keep: int = 2,
) -> Path:
    """Write atomically (temp dir + rename) and prune all but the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    created_ms = int(time.time() * 1000)
    final = directory / f"{created_ms:013d}-v{dump.version}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for item_id, fid, meta in zip(dump.item_ids, dump.faiss_ids.tolist(), dump.metas, strict=True):
                f.write(
                    json.dumps(
                        {
                            "item_id": item_id,
                            "faiss_id": fid,
                            "content_hash": hashes.get(item_id),
                            "meta": asdict(meta),
                        },
                        separators=(",", ":"),
                    )
                    + "\n"
                )
        np.save(tmp / "vectors.npy", dump.vectors, allow_pickle=False)
        np.save(tmp / "dead.npy", dump.dead_ids, allow_pickle=False)
        files = ["items.jsonl", "vectors.npy", "dead.npy"]
        if dump.index_bytes is not None:
            dump.index_bytes.tofile(tmp / "index.faiss")
            files.append("index.faiss")
        manifest = {
            "format": SNAPSHOT_FORMAT,
            "topic": topic,
            "dim": dump.dim,
            "factory": dump.factory,
            "metric": dump.metric,
            "version": dump.version,
            "next_id": dump.next_id,
            "items": len(dump.item_ids),
            "created_ms": created_ms,
            "model_id": model_id,
            "offsets": {str(p): int(o) for p, o in sorted(offsets.items())},
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_snapshots(directory)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_snapshots(directory: Path) -> list[Path]:
    """Snapshot directories, newest first (temporary ones excluded)."""
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
        reverse=True,
    )


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SnapshotError(f"snapshot {path}: unreadable manifest.json ({e})") from None
    if manifest.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot {path}: format {manifest.get('format')!r}, expected {SNAPSHOT_FORMAT}")
    return manifest


def read_snapshot(path: Path) -> Snapshot:
    """Load and verify one snapshot; any problem raises :class:`SnapshotError` naming the file."""
    manifest = read_manifest(path)
    for name, digest in manifest.get("sha256", {}).items():
        if not (path / name).is_file():
            raise SnapshotError(f"snapshot {path}: {name} is missing")
        if _sha256(path / name) != digest:
            raise SnapshotError(f"snapshot {path}: {name} does not match its checksum (damaged)")
    try:
        ids, fids, metas, hashes = [], [], [], {}
        with open(path / "items.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["item_id"])
                fids.append(int(row["faiss_id"]))
                metas.append(ItemMeta(**row["meta"]))
                if row.get("content_hash"):
                    hashes[row["item_id"]] = row["content_hash"]
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        dead = np.load(path / "dead.npy", allow_pickle=False).astype(np.int64)
        raw = np.fromfile(path / "index.faiss", dtype=np.uint8) if (path / "index.faiss").is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"snapshot {path}: {e}") from None
    if vectors.shape != (len(ids), manifest["dim"]):
        raise SnapshotError(f"snapshot {path}: vectors {vectors.shape} vs {len(ids)} items × dim {manifest['dim']}")
    dump = IndexDump(
        dim=manifest["dim"],
        factory=manifest["factory"],
        metric=manifest["metric"],
        version=manifest["version"],
        item_ids=ids,
        faiss_ids=np.asarray(fids, dtype=np.int64),
        vectors=vectors.astype(np.float32, copy=False),
        metas=metas,
        index_bytes=raw,
        next_id=manifest["next_id"],
        dead_ids=dead,
    )
    return Snapshot(path=path, manifest=manifest, dump=dump, hashes=hashes)
