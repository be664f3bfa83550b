"""The live item index shared by index_updater, serving and learner.

- ``live``: ``LiveIndex`` — FAISS with stable string ids, atomic batches, tombstones + compaction,
  self-training IVF/PQ, GPU when faiss sees one;
- ``records``: the vectors-topic record format (``encode_record`` / ``decode_record``);
- ``snapshots``: index + covered offsets on disk, written atomically, verified on load;
- ``replica``: ``IndexReplica`` — snapshot first, then the topic's tail, applied live.
"""

from streamrec.vector_index.live import IndexDump, ItemMeta, LiveIndex, min_train_points, want_gpu
from streamrec.vector_index.metrics import EVENT_TO_SEARCHABLE, REBUILDS
from streamrec.vector_index.records import VectorRecord, decode_record, encode_record, to_batch
from streamrec.vector_index.replica import IndexReplica
from streamrec.vector_index.snapshots import (
    Snapshot,
    SnapshotError,
    index_snapshot_dir,
    list_snapshots,
    read_manifest,
    read_snapshot,
    write_snapshot,
)

__all__ = [
    "EVENT_TO_SEARCHABLE",
    "REBUILDS",
    "IndexDump",
    "IndexReplica",
    "ItemMeta",
    "LiveIndex",
    "Snapshot",
    "SnapshotError",
    "VectorRecord",
    "decode_record",
    "encode_record",
    "index_snapshot_dir",
    "list_snapshots",
    "min_train_points",
    "read_manifest",
    "read_snapshot",
    "to_batch",
    "want_gpu",
    "write_snapshot",
]
