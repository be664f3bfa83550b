"""Serving follows the learner's published query-encoder versions (``streamrec/query_versions.py``).

Why a follower: a version is published only after it ranked held-out queries' clicks higher than
the one served (``learner/query_tuning.py``); every worker should switch to it without a restart,
and a worker that starts later should start with it. The new model is loaded (and its ONNX built,
once, inside its version directory) in this thread; requests keep the previous model until the
swap, which is one assignment.
"""

from __future__ import annotations

import logging

from serving.polling import Follower
from streamrec.query_encoder import QueryEncoder, embedder
from streamrec.query_versions import QueryVersions
from streamrec.settings import Settings

log = logging.getLogger(__name__)


class QueryVersionFollower(Follower):
    what = "the query-encoder version"

    def __init__(self, s: Settings, encoder: QueryEncoder, store: QueryVersions):
        super().__init__(s.query_tuning.poll_s, "query-versions")
        self.s, self.encoder, self.store = s, encoder, store
        self.version = 0  # 0 = the pretrained encoder

    def poll(self) -> int:
        """Swap to the current version when it changed; returns the version served."""
        wanted = self.store.current()
        if wanted == self.version:
            return self.version
        path = self.store.path(wanted)
        if wanted > 0 and path is None:  # pruned between the two reads: the next poll sees the newer one
            return self.version
        if path is None:
            embed, model_id, dim = embedder(self.s)
        else:
            embed, model_id, dim = embedder(self.s, path, onnx_dir=path, version=f"query-v{wanted}")
        if dim != self.encoder.dim:
            raise ValueError(f"query-encoder version {wanted} gives {dim}-d vectors, not {self.encoder.dim}")
        self.encoder.swap(embed, model_id)
        log.info("serving queries with %s", model_id)
        self.version = wanted
        return wanted
