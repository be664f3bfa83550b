"""Query-log expansions into the lexical index: serving follows the consumers' change log in Redis.

Why a follower: the consumers keep each item's expansion (the terms of past searches that led to a
click, add to cart or purchase of it; ``P:qx:{item}``, streamrec/features/layout.py) and log every change
(``P:qxlog:changed``, item -> change number). Serving reads the changes since the last it saw, every
``search.expansion_poll_s``, and re-indexes those items' ``qlog`` field, so a click linked to a
search changes what the next search returns within about a second. At start it reads the whole log
(a restart rebuilds the in-RAM index from Redis, as the documents are rebuilt from the vectors
topic); a Redis that lost the log (its change number went back) is read again from the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from serving.lexical import LexicalIndex
from serving.polling import Follower

BATCH = 1_000  # changed items read per round trip


class ExpansionSource(Protocol):
    """What the follower reads (``FeatureStore`` has it, and its replay twin)."""

    def expansion_changes(self, after: int, n: int) -> tuple[list[tuple[str, int]], int]: ...
    def expansions(self, item_ids: Sequence[str], now_ms: int | None = None) -> list[dict[str, float]]: ...


class ExpansionFollower(Follower):
    what = "query-log expansions"

    def __init__(self, source: ExpansionSource, lexical: LexicalIndex, poll_s: float = 0.25):
        super().__init__(poll_s, "expansion-follower")
        self.source = source
        self.lexical = lexical
        self.seen = 0  # the newest change number applied

    def poll(self) -> int:
        """Apply every change since the last poll; returns how many items changed."""
        done = 0
        while True:
            rows, newest = self.source.expansion_changes(self.seen, BATCH)
            if newest < self.seen:  # the log restarted (a new Redis): read it whole again
                self.seen = 0
                continue
            if not rows:
                return done
            items = [item for item, _ in rows]
            self.lexical.expand(dict(zip(items, self.source.expansions(items), strict=True)))
            self.seen = rows[-1][1]
            done += len(rows)
