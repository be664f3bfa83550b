"""The learner's checkpoint: model, optimiser, pending joins, detectors, metrics *and* offsets.

Why offsets live inside the checkpoint: the file is replaced atomically (write, fsync, rename),
so the state and the stream position it was built from can never disagree. On restart the learner
seeks to these offsets (Kafka's committed offset is only advanced after a checkpoint, for lag
monitoring), which gives effectively-once training: an event is learned from at most once per
checkpointed state and none is skipped.

Format: pickle — a private file the learner writes and reads itself (River detectors and numpy
arrays pickle as they are); never load a checkpoint from an untrusted source.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

FORMAT = 1


class Checkpointer:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "checkpoint.pkl"

    def save(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump({"format": FORMAT, "state": state}, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when there is none; a corrupt file is an error, not a reset."""
        try:
            with open(self.path, "rb") as f:
                blob = pickle.load(f)
        except FileNotFoundError:
            return None
        except (pickle.UnpicklingError, EOFError) as e:
            raise RuntimeError(
                f"learner checkpoint {self.path} is unreadable ({e}); move it away to start fresh"
            ) from None
        if blob.get("format") != FORMAT:
            raise RuntimeError(f"learner checkpoint {self.path} has format {blob.get('format')}, expected {FORMAT}")
        return blob["state"]
