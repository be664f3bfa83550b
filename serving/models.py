"""Hot-swapping the ranking head (and the learned session fusion published with it): a poller
that loads each new published version.

The swap is one reference assignment, so a request scores with the old head or the new one,
never a mix; a version that fails to load is logged and the current head keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from serving import metrics
from streamrec.model_store import ModelStore
from streamrec.ranking import RankingHead
from streamrec.sessions.learned import FusionModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    version: int
    head: RankingHead
    fusion: FusionModel | None = None  # /recommend's learned family weights; None = the fixed ones
    search_card: dict | None = None  # the learner's search scorecard: {"earned": bool, ...}


class ModelWatcher:
    def __init__(self, store: ModelStore, poll_s: float = 0.2):
        self._store = store
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._failed_version = 0
        self.current: ServedModel | None = None
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        latest = self._store.latest_version()
        current = self.current.version if self.current else 0
        if latest in (0, current, self._failed_version):
            return
        try:
            version, head, meta = self._store.load(latest)
            fusion = FusionModel.from_state(meta["session_fusion"]) if "session_fusion" in meta else None
        except Exception:
            log.exception("model version %d failed to load; keeping version %d", latest, current)
            self._failed_version = latest
            return
        head.eval()
        self.current = ServedModel(version=version, head=head, fusion=fusion, search_card=meta.get("search_card"))
        metrics.MODEL_VERSION.set(version)
        metrics.MODEL_SWAPS.inc()
        log.info("serving ranking head version %d", version)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.refresh()
            except Exception:
                log.exception("model poll failed")
