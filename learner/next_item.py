"""Join a /recommend impression with the user's next interaction: the examples of the learned
fusion (``streamrec.sessions.learned``).

Why a join of its own: the ranking head's label is a click on a shown item (``learner/joiner.py``,
by request id); the session fusion's label is *which pooled candidate the session's next event
picked*, wherever the shopper found it — the SR-GNN target. So the newest pooled impression of
each user waits for that user's next view, click, add-to-cart or purchase within the label window;
an impression without a pool (search, similar items, a request served degraded) is ignored.
"Next" is stream order: events are keyed by user, so Kafka keeps a user's events in order, and an
impression's time is serving's clock while a replayed event keeps its original time. The window
runs on the learner's clock from the impression's arrival.

Bounded: one pending impression per user, at most ``max_pending`` users (oldest dropped, counted).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.schemas import Event
from streamrec.sessions.learned import Pool

INTERACTIONS = ("view", "click", "add_to_cart", "purchase")
PoolLookup = Callable[[str], Pool | None]  # streamrec.sessions.learned.load_pool


@dataclass(frozen=True)
class FusionExample:
    """A pool's feature rows and the row the next event picked."""

    F: np.ndarray
    target: int


class NextItemJoiner:
    """``feed(event)`` returns the example this event completes, if any.

    >>> pools = {"r1": (["a", "b"], np.eye(2, dtype=np.float32))}
    >>> j = NextItemJoiner(pools.get, window_s=30)
    >>> imp = Event(event_id="i", type="impression", user_id="u", ts=1_700_000_000_000, request_id="r1", item_ids=["a"])
    >>> view = Event(event_id="v", type="view", user_id="u", ts=1_700_000_001_000, item_id="b")
    >>> j.feed(imp), j.feed(view).target, j.feed(view)
    (None, 1, None)
    """

    def __init__(
        self,
        pools: PoolLookup,
        window_s: float,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pools = pools
        self.window_s = window_s
        self.max_pending = max_pending
        self.clock = clock
        self.pending: OrderedDict[str, tuple[float, list[str], np.ndarray]] = OrderedDict()  # by arrival
        self.counts = {"joined": 0, "not_in_pool": 0, "expired": 0, "dropped": 0, "no_pool": 0}

    def feed(self, event: Event) -> FusionExample | None:
        if event.type == "impression":
            self._add(event)
            return None
        if event.type not in INTERACTIONS or event.item_id is None:
            return None
        waiting = self.pending.pop(event.user_id, None)
        if waiting is None:
            return None
        arrived, items, F = waiting
        if self.clock() - arrived > self.window_s:
            self.counts["expired"] += 1
            return None
        try:
            target = items.index(event.item_id)
        except ValueError:
            self.counts["not_in_pool"] += 1
            return None
        self.counts["joined"] += 1
        return FusionExample(F, target)

    def _add(self, event: Event) -> None:
        got = self.pools(event.request_id) if event.request_id else None
        if got is None:
            self.counts["no_pool"] += 1
            return
        self.pending.pop(event.user_id, None)  # a newer request replaces what the user saw before
        self.pending[event.user_id] = (self.clock(), got[0], got[1])
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.counts["dropped"] += 1

    def __len__(self) -> int:
        return len(self.pending)

    def state(self) -> dict[str, Any]:
        """For the learner checkpoint (pickled): a restart joins what was pending before it."""
        now = self.clock()
        return {
            "pending": [[u, now - arrived, items, F] for u, (arrived, items, F) in self.pending.items()],
            "counts": dict(self.counts),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Ages are kept across the restart (the monotonic clock is not)."""
        now = self.clock()
        self.pending = OrderedDict(
            (u, (now - float(age), list(items), np.asarray(F, dtype=np.float32)))
            for u, age, items, F in state["pending"]
        )
        self.counts.update(state.get("counts", {}))
