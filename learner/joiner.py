"""Join impressions with their outcomes by ``request_id`` within a label window.

Why this shape: a click is a certain positive the moment it arrives, so it becomes a training
example at once (the model learns within a second); "shown but not clicked" is only known when
the window closes, so negatives — and the purchase label of every shown item — are emitted then.
Windows close on *event time* (the newest ``ts`` seen, so a fast replay behaves like the live
stream) or on wall time since the impression arrived (so a quiet live stream still flushes).

Outcomes that arrive before their impression (other partition, clock skew) wait in an orphan
buffer for one window; events without ``request_id`` cannot be joined and are counted.

A *search* list that closes without any click is dropped (``skip_clickless_searches``): it says
nothing about which result was better, and most such lists come from traffic that never clicks
(bots, prefetching browsers, QA). Learned from, each would teach the head that whatever it showed
was wrong, and its shown products' features would become negatives for every other query.
Recommendation lists keep their non-clicks: there a non-click is the click-rate signal itself.

Observers (``on_first_click``, ``on_close``) see each joined impression: the learner's position
bias estimate and its search scorecard read them (``learner/position_bias.py``,
``learner/search_card.py``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from learner.examples import Example
from streamrec.schemas import Event

POSITIVE_TYPES = ("click", "add_to_cart", "purchase")


@dataclass
class PendingImpression:
    """An impression waiting for its outcomes: what was shown, where, and what was clicked."""

    event: Event
    rows: np.ndarray  # (len(item_ids), F)
    arrived: float  # wall clock (monotonic s)
    clicked: set[str] = field(default_factory=set)
    bought: set[str] = field(default_factory=set)
    positions: dict[str, int] = field(default_factory=dict)

    # an impression always has both (Event's validator; add_impression checks too)
    @property
    def request_id(self) -> str:
        assert self.event.request_id is not None
        return self.event.request_id

    @property
    def item_ids(self) -> list[str]:
        assert self.event.item_ids is not None
        return self.event.item_ids


class LabelJoiner:
    """Turns impression + outcome events into :class:`Example` s.

    ``add_impression`` and ``add_outcome`` return examples ready now (click positives);
    ``expire`` returns those whose window closed (negatives, purchase labels).
    """

    def __init__(
        self,
        window_s: float,
        max_pending: int = 200_000,
        clock=time.monotonic,
        skip_clickless_searches: bool = True,
        on_first_click: Callable[[PendingImpression, int], None] | None = None,
        on_close: Callable[[PendingImpression], None] | None = None,
    ):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.skip_clickless_searches = skip_clickless_searches
        self.on_first_click = on_first_click  # (impression, index of the clicked item) before it is learned
        self.on_close = on_close
        self.clickless_searches = 0  # search lists closed without a click, not learned from
        self.window_ms = int(window_s * 1000)
        self.window_s = float(window_s)
        self.max_pending = max_pending
        self.clock = clock
        self.pending: OrderedDict[str, PendingImpression] = OrderedDict()
        self.orphans: OrderedDict[str, list[Event]] = OrderedDict()
        self.watermark_ms = 0
        self.unjoinable = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.pending)

    def add_impression(self, event: Event, rows: np.ndarray) -> list[Example]:
        if event.type != "impression" or event.request_id is None or not event.item_ids:
            raise ValueError("add_impression needs an impression event with request_id and item_ids")
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(event.item_ids):
            raise ValueError(f"rows must have one row per shown item, got {rows.shape} for {len(event.item_ids)}")
        self.watermark_ms = max(self.watermark_ms, event.ts)
        if event.request_id in self.pending:
            self.duplicates += 1
            return []
        offset = event.position or 0  # an impression's position = slot of its first item
        p = PendingImpression(
            event, rows, self.clock(), positions={iid: offset + k for k, iid in enumerate(event.item_ids)}
        )
        self.pending[event.request_id] = p
        out: list[Example] = []
        for early in self.orphans.pop(event.request_id, []):
            out.extend(self._apply(p, early))
        while len(self.pending) > self.max_pending:  # memory bound: close the oldest early
            _rid, old = self.pending.popitem(last=False)
            out.extend(self._close(old))
        return out

    def add_outcome(self, event: Event) -> list[Example]:
        """A click / add_to_cart / purchase; views and unjoinable events return nothing."""
        self.watermark_ms = max(self.watermark_ms, event.ts)
        if event.type not in POSITIVE_TYPES:
            return []
        if event.request_id is None:
            self.unjoinable += 1
            return []
        p = self.pending.get(event.request_id)
        if p is None:
            self.orphans.setdefault(event.request_id, []).append(event)
            return []
        return self._apply(p, event)

    def _apply(self, p: PendingImpression, event: Event) -> list[Example]:
        iid = event.item_id
        if iid not in p.positions:
            self.unjoinable += 1
            return []
        if event.type == "purchase":
            p.bought.add(iid)
        if iid in p.clicked:
            return []
        k = p.item_ids.index(iid)
        if not p.clicked and self.on_first_click is not None:
            self.on_first_click(p, k)
        p.clicked.add(iid)
        return [self._example(p, k, click=1.0, purchase=None)]

    def _example(self, p: PendingImpression, k: int, click: float | None, purchase: float | None) -> Example:
        iid = p.item_ids[k]
        return Example(
            request_id=p.request_id,
            item_id=iid,
            user_id=p.event.user_id,
            ts=p.event.ts,
            x=p.rows[k],
            position=p.positions[iid],
            click=click,
            purchase=purchase,
        )

    def _close(self, p: PendingImpression) -> list[Example]:
        if self.on_close is not None:
            self.on_close(p)
        if not p.clicked and p.event.query and self.skip_clickless_searches:
            self.clickless_searches += 1
            return []
        out = []
        for k, iid in enumerate(p.item_ids):
            if iid in p.clicked:
                out.append(self._example(p, k, click=None, purchase=1.0 if iid in p.bought else 0.0))
            else:
                out.append(self._example(p, k, click=0.0, purchase=0.0))
        return out

    def _expired(self, p: PendingImpression, now: float) -> bool:
        return (p.event.ts + self.window_ms <= self.watermark_ms) or (now - p.arrived >= self.window_s)

    def expire(self, flush_all: bool = False) -> list[Example]:
        """Close every window that has ended (all of them with ``flush_all``, e.g. end of a replay)."""
        now = self.clock()
        out: list[Example] = []
        while self.pending:
            rid, p = next(iter(self.pending.items()))
            if not (flush_all or self._expired(p, now)):
                break  # arrival order ≈ event-time order; a late straggler closes a bit later
            del self.pending[rid]
            out.extend(self._close(p))
        while self.orphans:
            rid, evs = next(iter(self.orphans.items()))
            if not flush_all and evs[0].ts + self.window_ms > self.watermark_ms:
                break
            del self.orphans[rid]
            self.unjoinable += len(evs)
        return out

    # --- checkpointing (plain data: the learner's own checkpoint file) --------------------------

    def state(self) -> dict:
        now = self.clock()
        return {
            "pending": [
                (p.event.model_dump(mode="json"), p.rows, now - p.arrived, sorted(p.clicked), sorted(p.bought))
                for p in self.pending.values()
            ],
            "orphans": {rid: [e.model_dump(mode="json") for e in evs] for rid, evs in self.orphans.items()},
            "watermark_ms": self.watermark_ms,
            "unjoinable": self.unjoinable,
            "duplicates": self.duplicates,
            "clickless_searches": self.clickless_searches,
        }

    def load_state(self, st: dict) -> None:
        now = self.clock()
        self.pending.clear()
        for ev, rows, age, clicked, bought in st["pending"]:
            e = Event.model_validate(ev)
            offset = e.position or 0
            p = PendingImpression(e, np.asarray(rows, np.float32), now - age, set(clicked), set(bought))
            p.positions = {iid: offset + k for k, iid in enumerate(p.item_ids)}
            self.pending[p.request_id] = p
        self.orphans = OrderedDict((rid, [Event.model_validate(e) for e in evs]) for rid, evs in st["orphans"].items())
        self.watermark_ms = int(st["watermark_ms"])
        self.unjoinable = int(st["unjoinable"])
        self.duplicates = int(st["duplicates"])
        self.clickless_searches = int(st.get("clickless_searches", 0))
