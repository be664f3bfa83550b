"""Demo traffic for `streamrec up`: real shopper histories replayed through the live HTTP API.

Each Amazon Office user's history (oldest first) is walked step by step. At each step the shopper
asks for recommendations or searches with the first words of the title of the item they really
chose next (the data holds no queries); when that item was shown they click it with the
impression's ``request_id`` and position, otherwise they view and click it as if found elsewhere.
The last item is added to cart and purchased. So the learner sees labelled impressions, and every
label is a real choice from the data; only timing and queries are synthesised.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from streamrec.datasets import amazon18

log = logging.getLogger(__name__)


def query_from_title(title: str, words: int = 3) -> str:
    tokens = re.findall(r"[A-Za-z][A-Za-z0-9\-]+", title)
    return " ".join(tokens[:words]).lower()


class DemoShopper:
    def __init__(
        self,
        base_url: str,
        data_dir: Path,
        rate: float,
        stop: threading.Event,
        concurrent_users: int = 16,
        titles: dict[str, str] | None = None,
    ):
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.data_dir = data_dir
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = stop
        self.concurrent_users = concurrent_users
        self.titles = titles or {op.item_id: op.title for op in amazon18.catalog(data_dir) if op.title is not None}
        self.sent = 0
        self.clicks_on_shown = 0
        self.steps = 0

    def _post(self, **event) -> None:
        event.setdefault("event_id", uuid.uuid4().hex)
        event.setdefault("ts", int(time.time() * 1000))
        self.http.post("/events", json=event).raise_for_status()
        self.sent += 1
        self._pace()

    def _pace(self) -> None:
        if self.interval:
            self.stop.wait(self.interval)

    def _walks(self) -> Iterator[Iterator[tuple[str, str, bool]]]:
        for split in ("valid", "test"):
            for h in amazon18.histories(self.data_dir, split):
                yield ((h.user_id, item, i == len(h.item_ids) - 1) for i, item in enumerate(h.item_ids))

    def run(self) -> None:
        """Interleave ``concurrent_users`` walks until the data or ``stop`` runs out."""
        walks = self._walks()
        active = list(itertools.islice(walks, self.concurrent_users))
        turn = 0
        while active and not self.stop.is_set():
            walk = active[turn % len(active)]
            step = next(walk, None)
            if step is None:
                active.remove(walk)
                active.extend(itertools.islice(walks, 1))
                continue
            turn += 1
            try:
                self._step(*step, use_search=turn % 3 == 0)
            except httpx.HTTPError as e:
                log.warning("demo step failed (%r); retrying shortly", e)
                self.stop.wait(1.0)
        log.info("demo replay finished: %d events sent", self.sent)

    def _step(self, user_id: str, item_id: str, is_last: bool, use_search: bool) -> None:
        self.steps += 1
        if use_search and item_id in self.titles:
            shown = self.http.get(
                "/search", params={"q": query_from_title(self.titles[item_id]), "user_id": user_id, "k": 10}
            )
        else:
            shown = self.http.get("/recommend", params={"user_id": user_id, "k": 10})
        self._pace()
        result = shown.json() if shown.status_code == 200 else {"items": []}
        ids = [it["item_id"] for it in result.get("items", [])]
        if item_id in ids:
            self.clicks_on_shown += 1
            self._post(
                type="click",
                user_id=user_id,
                item_id=item_id,
                request_id=result["request_id"],
                position=ids.index(item_id),
            )
        else:
            self._post(type="view", user_id=user_id, item_id=item_id)
            self._post(type="click", user_id=user_id, item_id=item_id)
        if is_last:
            self._post(
                type="add_to_cart",
                user_id=user_id,
                item_id=item_id,
                request_id=result.get("request_id") if item_id in ids else None,
            )
            self._post(type="purchase", user_id=user_id, item_id=item_id)
