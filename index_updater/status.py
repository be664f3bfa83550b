"""What ``streamrec status`` shows about the index, read from the newest snapshot manifest
(cheap: no model or index is loaded)."""

from __future__ import annotations

import time

from streamrec.encoder import model_id_for
from streamrec.settings import Settings
from streamrec.vector_index import SnapshotError, index_snapshot_dir, list_snapshots, read_manifest


def summary(s: Settings) -> dict:
    out: dict = {
        "index_factory": s.index.factory,
        "metric": s.index.metric,
        "model_id": model_id_for(s),
        "size": None,
        "snapshot": None,
        "snapshot_age_s": None,
        "snapshot_version": None,
    }
    snaps = list_snapshots(index_snapshot_dir(s))
    if not snaps:
        out["snapshot_error"] = f"no index snapshot in {index_snapshot_dir(s)} yet"
        return out
    try:
        m = read_manifest(snaps[0])
    except SnapshotError as e:
        out["snapshot_error"] = str(e)
        return out
    out.update(
        size=m["items"],
        snapshot=str(snaps[0]),
        snapshot_age_s=round(time.time() - m["created_ms"] / 1000, 1),
        snapshot_version=m["version"],
        snapshot_offsets=m["offsets"],
        snapshot_factory=m["factory"],
        snapshot_model_id=m.get("model_id"),
    )
    return out
