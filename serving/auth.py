"""Access control of the HTTP API: API keys, loopback-only writes when keyless, CORS, rate limit.

Roles, decided by the request alone (before any route runs, so a refused request publishes nothing):

================================  ==========  ==================================================
request                           role        accepted keys (``Authorization: Bearer <key>``)
================================  ==========  ==================================================
``POST /events``, ``/catalog``    producer    ``api.producer_keys``
``/admin/…``                      admin       ``api.admin_keys``
``/healthz``, ``/readyz``,        (open)      probes and Prometheus scrapes never need a key
``/metrics``
anything else (reads)             read        open, unless ``api.require_read_key``: then read,
                                              producer or admin keys
================================  ==========  ==================================================

A role with no key configured is granted to loopback clients only (``streamrec up`` on a laptop
stays two commands; anything reaching the port from elsewhere is refused). No key → 401, a key
that matches nothing → 401, a valid key of another role → 403; each with a JSON ``detail``.
Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit),
so response time does not tell how much of a key was right.

Rate limit (``api.rate_limit_per_s`` > 0): a token bucket per key, or per client IP when the
request carries no valid key; an empty bucket answers 429 with ``Retry-After`` (seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import threading
import time
from typing import Any

from cachetools import LRUCache
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from streamrec.schemas import ErrorMessage
from streamrec.settings import Settings

PRODUCER, ADMIN, READ, OPEN = "producer", "admin", "read", "open"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
WRITE_PATHS = frozenset({"/events", "/catalog"})


def install(app: FastAPI, s: Settings) -> None:
    """Add access control (and CORS, outermost, when origins are configured) to ``app``."""
    app.add_middleware(AccessControl, settings=s)
    document(app)
    if s.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(s.api.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )


def document(app: FastAPI) -> None:
    """Declare in ``app``'s OpenAPI schema what this middleware can answer on each operation: 401
    and 429 on every one that is not open, 403 on producer and admin ones (the loopback rule, a
    key of another role), whatever the configuration, so the contract does not change with it."""
    generate = app.openapi
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}}
    responses: dict[str, dict[str, Any]] = {
        "401": {"description": "no key, or one matching none", "headers": _header("WWW-Authenticate", "string")},
        "403": {"description": "a key of another role, or keyless and not from loopback"},
        "429": {"description": "rate limit (api.rate_limit_per_s)", "headers": _header("Retry-After", "integer")},
    }

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI; the additions below are idempotent
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "ErrorMessage", ErrorMessage.model_json_schema()
        )
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                role = required_role(method.upper(), path)
                if role == OPEN:
                    continue
                codes = ("401", "403", "429") if role in (PRODUCER, ADMIN) else ("401", "429")
                for code in codes:
                    operation["responses"].setdefault(code, {**responses[code], "content": error})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _header(name: str, kind: str) -> dict:
    return {name: {"schema": {"type": kind}}}


def required_role(method: str, path: str) -> str:
    if path in OPEN_PATHS:
        return OPEN
    if path.startswith("/admin/") or path == "/admin":
        return ADMIN
    if method == "POST" and path in WRITE_PATHS:
        return PRODUCER
    if method in ("GET", "HEAD", "OPTIONS"):
        return READ
    return PRODUCER  # any other write: producers only


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time membership: every key is compared, whatever matched before."""
    given = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class TokenBuckets:
    """One token bucket per identity (key or client IP), the least recently used forgotten past ``cap``.

    Ours rather than a rate-limit library's: ``limits`` and ``pyrate-limiter`` count hits in
    windows (whole seconds for ``limits``), not a bucket refilling at a fractional rate, so a client
    that spends its burst would wait for the window instead of for one token; and neither bounds the
    number of identities held, which the LRU below does."""

    def __init__(self, rate: float, burst: int, cap: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.buckets: LRUCache[str, tuple[float, float]] = LRUCache(cap)  # identity -> (tokens, at)
        self.lock = threading.Lock()

    def take(self, identity: str) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = self.clock()
        with self.lock:
            tokens, at = self.buckets.get(identity, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self.buckets[identity] = (tokens, now)
            return wait


class AccessControl:
    """Pure ASGI middleware enforcing the table in this module's docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = {
            PRODUCER: list(settings.api.producer_keys),
            ADMIN: list(settings.api.admin_keys),
            READ: list(settings.api.read_keys),
        }
        self.require_read_key = settings.api.require_read_key
        rate = settings.api.rate_limit_per_s
        self.buckets = TokenBuckets(rate, settings.api.rate_limit_burst) if rate > 0 else None

    def role_of(self, token: str) -> str | None:
        """The role a key grants (admin > producer > read); every list is compared in full."""
        matches = {role: key_matches(token, keys) for role, keys in self.keys.items()}
        for role in (ADMIN, PRODUCER, READ):
            if matches[role]:
                return role
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = required_role(scope["method"], scope["path"])
        if need == OPEN:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else None
        token = bearer(scope.get("headers", []))
        role = self.role_of(token) if token else None
        refusal = self.refuse(need, token, role, host)
        if refusal is not None:
            await _json(send, *refusal)
            return
        if self.buckets is not None:
            identity = f"key:{hashlib_digest(token)}" if role else f"ip:{host}"
            wait = self.buckets.take(identity)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _json(
                    send, 429, f"rate limit exceeded; retry in {retry}s", [(b"retry-after", str(retry).encode())]
                )
                return
        await self.app(scope, receive, send)

    def refuse(self, need: str, token: str | None, role: str | None, host: str | None) -> tuple[int, str] | None:
        """``(status, message)`` when the request may not proceed, else None."""
        if token is not None and role is None:
            return 401, "invalid API key"
        if need == READ:
            if not self.require_read_key or role is not None:
                return None
            return 401, "this API requires a key for reads: send Authorization: Bearer <key>"
        if role == need or (role == ADMIN and need == PRODUCER):
            return None
        if not self.keys[need]:  # keyless role: loopback clients only
            if is_loopback(host):
                return None
            return 403, (
                f"no {need} API key is configured, so {need} requests are accepted from loopback only; "
                f"set STREAMREC_API_{need.upper()}_KEYS and send Authorization: Bearer <key>"
            )
        if role is None:
            return 401, f"{need} API key required: send Authorization: Bearer <key>"
        return 403, f"this API key has the {role} role; this request needs a {need} key"


def hashlib_digest(token: str | None) -> str:
    """A short, non-reversible name of a key for the rate-limit table (keys are not kept in clear)."""
    return hashlib.sha256((token or "").encode()).hexdigest()[:16]


async def _json(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
