"""Lexical retrieval (BM25 via bm25s) over the titles and categories of the live catalog.

bm25s indexes are immutable, so the index is rebuilt in the background whenever the vector index
version moved, at most once per ``min_interval_s``; queries use the last complete build. New items
are findable by vector search immediately and lexically after the next rebuild.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import bm25s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Build:
    version: int
    item_ids: list[str]
    retriever: bm25s.BM25 | None


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class LexicalIndex:
    """BM25 over ``docs()`` → {item_id: text}; ``search`` never blocks on a rebuild.

    ``version()`` is cheap and checked every ``min_interval_s``; ``docs()`` copies the catalog and
    is called only when the version moved.
    """

    def __init__(self, version: Callable[[], int], docs: Callable[[], dict[str, str]], min_interval_s: float = 1.0):
        self._version = version
        self._docs = docs
        self._min_interval_s = min_interval_s
        self._build = _Build(version=-1, item_ids=[], retriever=None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lexical-rebuild", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def version(self) -> int:
        return self._build.version

    def rebuild(self) -> None:
        version = self._version()
        if version == self._build.version:
            return
        docs = self._docs()
        item_ids = list(docs)
        retriever = None
        if item_ids:
            retriever = bm25s.BM25()
            retriever.index(_tokens([docs[i] for i in item_ids]), show_progress=False)
        self._build = _Build(version=version, item_ids=item_ids, retriever=retriever)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.rebuild()
            except Exception:  # a failed build keeps serving the previous one
                log.exception("lexical index rebuild failed")
            self._stop.wait(max(0.05, self._min_interval_s - (time.monotonic() - started)))

    def search(self, query: str, k: int) -> list[tuple[str, float, list[str]]]:
        """(item_id, bm25 score, matched query terms), best first; items with score 0 are dropped."""
        build = self._build
        if build.retriever is None or not query.strip():
            return []
        terms = _tokens([query])[0]
        if not terms:
            return []
        k = min(k, len(build.item_ids))
        docs, scores = build.retriever.retrieve([terms], k=k, show_progress=False, n_threads=1)
        out = []
        for doc, score in zip(docs[0], scores[0], strict=True):
            if score <= 0:
                continue
            out.append((build.item_ids[int(doc)], float(score), terms))
        return out
