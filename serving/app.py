"""The HTTP API the storefront calls (FastAPI). Routes are thin: validation here, work in Engine;
timing is a middleware and readiness a dependency, so no route repeats either."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.admin import admin_routes
from serving.auth import install as install_access_control
from serving.cockpit import cockpit_routes
from serving.dashboard import render_dashboard
from serving.engine import Engine
from serving.recommend import RecommendVariant
from streamrec import bus
from streamrec.schemas import (
    PublishRejection,
    PublishResult,
    Rejected,
    ResultList,
    encode,
    validate_catalog,
    validate_event,
)
from streamrec.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024

K = Annotated[int, Query(ge=1, le=100, description="number of results")]
UserId = Annotated[str, Query(min_length=1, max_length=128)]
Impression = Annotated[
    bool,
    Query(
        description="false: the list is not logged as an impression (no impression event, no served "
        "features), so it never trains the ranker — for offline evaluation and QA traffic"
    ),
]
SearchVariant = Annotated[
    Literal["full", "bm25", "dense", "rrf", "fused"],
    Query(
        description="full: fused retrieval + ranking head + diversity; fused: the weighted lexical+dense "
        "fusion alone; rrf: reciprocal-rank fusion; bm25: lexical only; dense: vector only"
    ),
]
RecommendVariantParam = Annotated[
    RecommendVariant,
    Query(
        description="full: fused session candidates + ranking head + diversity at their /recommend settings; "
        "fused: the fusion alone; stan, vsknn, covis, repeat, popular: one candidate family alone"
    ),
]


def create_app(s: Settings, engine: Engine, producer: KafkaProducer) -> FastAPI:
    app = FastAPI(title="streamrec", version="0.1.0", description="Streaming search and recommendations; see README.")
    app.add_middleware(RequestMetrics)
    app.include_router(query_routes(engine))
    app.include_router(publish_routes(s, producer))
    app.include_router(operations_routes(s, engine))
    app.include_router(admin_routes(s))  # /admin/models/…: admin key (serving/auth.py)
    app.include_router(cockpit_routes(s, engine))  # /dashboard/data
    app.add_exception_handler(redis.RedisError, store_unavailable(s))
    install_access_control(app, s)  # keys, loopback rule, rate limit, CORS (outermost)
    return app


class RequestMetrics:
    """Counts and times every request by route and status (``streamrec_serving_requests_total``,
    ``..._request_duration_seconds``), so routes carry no timing code of their own.

    The ``endpoint`` label is the route's name ("search", "recommend", "similar", …): one value per
    route template, as before for dashboards. Requests matching no route are not recorded (their
    paths are unbounded). A pure ASGI middleware: it sits outside FastAPI's exception handlers, so
    it sees the status an HTTPException became, and an unhandled error counts as 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")  # set by the router on a match
            if route is not None:
                endpoint = getattr(route, "name", None) or getattr(route, "path", "?")
                metrics.REQUESTS.labels(endpoint, str(status)).inc()
                metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def store_unavailable(s: Settings) -> Callable[[Request, Exception], Response]:
    """A route that cannot answer without Redis (/recommend's session, the cockpit's history)
    answers a fast 503 with Retry-After while Redis is down, never a 500 with a traceback.
    /search and /similar degrade instead (Engine._assemble)."""

    def handler(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: feature store unreachable: %r", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": f"feature store unreachable ({type(exc).__name__}); retry later"},
            status_code=503,
            headers={"Retry-After": str(s.serving_retry_after_s)},
        )

    return handler


def readiness(engine: Engine) -> Callable[[], None]:
    """A dependency answering 503 (with the engine's status) until an index and a model are loaded."""

    def require_ready() -> None:
        if not engine.ready():
            raise HTTPException(503, detail={"error": "not ready", **engine.status()})

    return require_ready


def query_routes(engine: Engine) -> APIRouter:
    """/search, /recommend, /similar: each needs a ready engine."""
    router = APIRouter(dependencies=[Depends(readiness(engine))])

    @router.get("/search", response_model=ResultList)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=512)],
        k: K = 10,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        variant: SearchVariant = "full",
        impression: Impression = True,
    ) -> ResultList:
        if not q.strip():
            raise HTTPException(422, detail="q must contain a non-space character")
        return engine.search(q.strip(), user_id, k, variant=variant, impression=impression)

    @router.get("/recommend", response_model=ResultList)
    def recommend(
        user_id: UserId,
        k: K = 10,
        variant: RecommendVariantParam = "full",
        exclude_seen: Annotated[bool | None, Query(description="skip this session's items; unset = setting")] = None,
        impression: Impression = True,
    ) -> ResultList:
        return engine.recommend(user_id, k, variant=variant, exclude_seen=exclude_seen, impression=impression)

    @router.get("/similar/{item_id}", response_model=ResultList)
    def similar(
        item_id: Annotated[str, Path(min_length=1, max_length=128)], k: K = 10, impression: Impression = True
    ) -> ResultList:
        result = engine.similar(item_id, k, impression=impression)
        if result is None:
            raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
        return result

    return router


def publish_routes(s: Settings, producer: KafkaProducer) -> APIRouter:
    """POST /events and /catalog: validate each object, publish the valid ones, answer 202 once the
    broker has them. The body is read on the event loop; validating and publishing (which blocks on
    the broker's acknowledgements) run in the threadpool, so a slow broker never stalls the loop."""
    router = APIRouter()

    async def publish(
        request: Request, validate: Callable[[Any], Any], topic: str, key_of: Callable[[Any], str]
    ) -> JSONResponse:
        objects = parse_batch(await request.body())
        result = await run_in_threadpool(publish_batch, producer, objects, validate, topic, key_of)
        return JSONResponse(result.model_dump(), status_code=202)

    @router.post("/events", status_code=202, response_model=PublishResult)
    async def post_events(request: Request):
        return await publish(request, validate_event, s.topic_events, lambda e: e.user_id)

    @router.post("/catalog", status_code=202, response_model=PublishResult)
    async def post_catalog(request: Request):
        return await publish(request, validate_catalog, s.topic_catalog, lambda c: c.item_id)

    return router


def parse_batch(body: bytes) -> list:
    """A JSON object or array of objects → list; 413 past the body or batch limit, 400 if not JSON."""
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, detail=f"body is {len(body)} bytes; limit {MAX_BODY_BYTES}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, detail=f"body is not JSON: {e}") from None
    objects = payload if isinstance(payload, list) else [payload]
    if len(objects) > MAX_BATCH:
        raise HTTPException(413, detail=f"{len(objects)} objects; at most {MAX_BATCH} per request")
    return objects


def publish_batch(
    producer: KafkaProducer, objects: list, validate: Callable[[Any], Any], topic: str, key_of: Callable[[Any], str]
) -> PublishResult:
    """Publish the valid objects and report the invalid ones by index; 503 if the broker does not
    acknowledge them all (202 means every accepted object is on the broker). Blocks: call it off
    the event loop."""
    rejected: list[PublishRejection] = []
    accepted: list[bus.Outgoing] = []
    for i, obj in enumerate(objects):
        try:
            model = validate(obj)
        except Rejected as e:
            rejected.append(PublishRejection(index=i, error=f"{e.reason}: {e.error}"))
            continue
        accepted.append((topic, key_of(model), encode(model)))
    try:
        bus.publish_confirmed(producer, accepted, timeout_s=10)
    except bus.PublishError as e:
        metrics.PUBLISHED.labels(topic, "failed").inc()
        raise HTTPException(503, detail=f"broker did not acknowledge: {e.__cause__!r}") from None
    metrics.PUBLISHED.labels(topic, "accepted").inc(len(accepted))
    metrics.PUBLISHED.labels(topic, "rejected").inc(len(rejected))
    return PublishResult(accepted=len(accepted), rejected=rejected)


def operations_routes(s: Settings, engine: Engine) -> APIRouter:
    """Health, readiness, Prometheus metrics and the HTML dashboard: answered even when not ready."""
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **engine.status()}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        ready = engine.ready()
        return JSONResponse({"ready": ready, **engine.status()}, status_code=200 if ready else 503)

    @router.get("/metrics")
    def prometheus() -> Response:
        status = engine.status()
        metrics.INDEX_ITEMS.set(status["index_items"])
        metrics.INDEX_VERSION.set(status["index_version"])
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/dashboard", response_class=HTMLResponse)
    def dashboard() -> str:
        return render_dashboard(s, engine)

    return router
