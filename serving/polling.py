"""What the serving followers share: a daemon thread that calls ``poll()`` every ``poll_s``.

The query-log expansions, the autocomplete suggestions and the merchandising rules are each kept in
Redis by another part and followed here the same way: a failed read is logged and the last state
kept (serving goes on answering with it), the next poll tries again.
"""

from __future__ import annotations

import logging
import threading

import redis

log = logging.getLogger(__name__)


class Follower:
    """Subclasses implement ``poll``; ``start`` runs it every ``poll_s`` until ``stop``."""

    what = "state"  # for the log line of a failed read

    def __init__(self, poll_s: float, name: str):
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def poll(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (redis.RedisError, ValueError) as e:  # keep serving what was read before
                log.warning("could not read %s: %r", self.what, e)
            self._stop.wait(self.poll_s)
