"""Backpressure: a bound on the writes (and their bytes) publishing at once, and on the reads
being answered at once (``ReadShedding``).

A write request holds its body, its parsed objects and a threadpool worker until the broker
acknowledges it (``serving.publish_timeout_s`` at most). Without a bound, a broker slower than the
clients lets those pile up until serving runs out of memory or of workers for reads. With it,
a request past ``serving.publish_max_inflight`` requests or ``serving.publish_max_inflight_bytes``
bytes is answered ``503`` with ``Retry-After`` at once, before its body is read: it published
nothing, and retrying it later is safe.

>>> gate = PublishGate(max_requests=2, max_bytes=100)
>>> gate.try_enter(60), gate.try_enter(60), gate.in_flight
(True, False, (1, 60))
>>> gate.leave(60); gate.try_enter(150)  # alone, one body may exceed the byte bound
True
"""

from __future__ import annotations

import json
import threading

from starlette.types import ASGIApp, Receive, Scope, Send

from serving import metrics
from streamrec.settings import Settings

RETRY_AFTER_S = 1
READ_ROUTES = ("/search", "/recommend", "/similar/", "/bought-together")


class PublishGate:
    """Non-blocking admission: ``try_enter(nbytes)`` is True (then ``leave(nbytes)`` once done) or
    False when the request must be refused. Thread-safe."""

    def __init__(self, max_requests: int, max_bytes: int):
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests = self.bytes = 0
        self.lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: Settings) -> PublishGate:
        return cls(s.serving.publish_max_inflight, s.serving.publish_max_inflight_bytes)

    def try_enter(self, nbytes: int) -> bool:
        with self.lock:
            if self.requests >= self.max_requests:
                return False
            if self.requests and self.bytes + nbytes > self.max_bytes:
                return False
            self.requests += 1
            self.bytes += nbytes
            return True

    def grow(self, nbytes: int) -> bool:
        """Account ``nbytes`` more to a request already in (a body without Content-Length);
        False (nothing added) when that would pass the byte bound with other requests in flight."""
        with self.lock:
            if self.requests > 1 and self.bytes + nbytes > self.max_bytes:
                return False
            self.bytes += nbytes
            return True

    def leave(self, nbytes: int) -> None:
        with self.lock:
            self.requests -= 1
            self.bytes -= nbytes

    @property
    def in_flight(self) -> tuple[int, int]:
        """(requests, bytes) admitted and not yet left."""
        with self.lock:
            return self.requests, self.bytes


class ReadShedding:
    """Reads past ``serving.max_inflight_reads`` in flight in this process are answered ``503`` with
    ``Retry-After`` at once, on the event loop, without touching the engine.

    Why a bound and not a queue: a read is CPU work under one interpreter lock, so every admitted
    request slows every other; past capacity a queue only makes all of them late (measured: p99
    above a second at twice the sustainable rate). With the bound, an answered read waits for at
    most the others in flight, and the storefront learns at once that it should retry or fall back.
    A pure ASGI middleware: it runs on the event loop, so the counter needs no lock.
    """

    def __init__(self, app: ASGIApp, max_inflight: int) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(READ_ROUTES) or path.rstrip("/") == "/similar":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            metrics.READS_SHED.labels(path.split("/")[1]).inc()
            await _overloaded(send, self.inflight)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _overloaded(send: Send, inflight: int) -> None:
    body = json.dumps(
        {"detail": f"overloaded: {inflight} reads in flight in this process; retry in {RETRY_AFTER_S}s"}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
