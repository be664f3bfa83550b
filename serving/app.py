"""The HTTP API the storefront calls (FastAPI). Routes are thin: validation here, work in Engine;
timing is a middleware and readiness a dependency, so no route repeats either."""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.admin import admin_routes
from serving.auth import install as install_access_control
from serving.backpressure import RETRY_AFTER_S, PublishGate, ReadShedding
from serving.catalog.facets import NAMES_PATTERN, check_names
from serving.catalog.filters import ATTR_PATTERN, Availability, Filter
from serving.cockpit import cockpit_routes
from serving.dashboard import render_dashboard
from serving.engine import Engine
from serving.search.pages import Sort
from streamrec import bus
from streamrec.schemas import (
    ID_PATTERN,
    BodySchema,
    CatalogShape,
    ErrorMessage,
    EventShape,
    PublishRejection,
    PublishResult,
    Rejected,
    ResultList,
    SuggestionList,
    batch_json_schema,
    encode,
    validate_catalog,
    validate_event,
    validation_message,
)
from streamrec.sessions.fusion import RecommendVariant
from streamrec.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# The write routes read their bodies object by object (``publish``), so FastAPI never sees their
# models; their schemas come from the shape models, which join the document's components.
EVENTS_BODY = batch_json_schema(EventShape, MAX_BATCH)
CATALOG_BODY = batch_json_schema(CatalogShape, MAX_BATCH)
MAX_BODY_BYTES = 8 * 1024 * 1024
STOREFRONT_PAGE = (pathlib.Path(__file__).parent / "storefront.html").read_text(encoding="utf-8")
NOT_READY_RETRY_S = 5

K = Annotated[int, Query(ge=1, le=100, description="number of results")]
# a search text holds a character that is not whitespace. \s differs between the validator (Rust's
# regex: U+0085 is whitespace) and JSON Schema's ECMAScript (U+FEFF is), so both are named: a client
# reading the schema and the server then agree on every text
SEARCH_TEXT_PATTERN = r"[^\s\u0085\ufeff]"
SearchText = Annotated[
    str, Query(min_length=1, max_length=512, pattern=SEARCH_TEXT_PATTERN, description="the search text")
]
# ids in parameters obey the wire rule (streamrec.schemas.Id): they reach impression events as is
UserId = Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)]
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


def filters(
    category: Annotated[
        str | None,
        Query(
            max_length=200, description="a category path: products in it or below it ('Tools' admits 'Tools > Drills')"
        ),
    ] = None,
    brand: Annotated[
        list[str] | None, Query(max_length=50, description="any of these brands (repeat the parameter)")
    ] = None,
    price_min: Annotated[float | None, Query(ge=0, allow_inf_nan=False, description="inclusive")] = None,
    price_max: Annotated[float | None, Query(ge=0, allow_inf_nan=False, description="inclusive")] = None,
    availability: Annotated[
        Availability | None, Query(description="in_stock, out_of_stock or any; unset: catalog.default_availability")
    ] = None,
    attr: Annotated[
        list[Annotated[str, StringConstraints(max_length=300, pattern=ATTR_PATTERN)]] | None,
        Query(
            max_length=50,
            description="attribute conditions, repeatable: name:value (keyword or number) or name:lo..hi (an end may "
            "be empty); several on one attribute are alternatives, different attributes must all hold",
        ),
    ] = None,
) -> Filter:
    """The filter of /search, /recommend and /similar (serving/catalog/filters.py); 422 when malformed."""
    try:
        return Filter.parse(category, brand, price_min, price_max, availability, attr)
    except ValidationError as e:
        raise invalid_query(validation_message(e)) from None
    except ValueError as e:
        raise invalid_query(str(e)) from None


def invalid_query(message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (the documented HTTPValidationError), for checks across parameters."""
    return RequestValidationError([{"type": "value_error", "loc": ("query",), "msg": message, "input": None}])


Filters = Annotated[Filter, Depends(filters)]


class NotReady(BaseModel):
    detail: dict[str, Any] = Field(description='{"error": "not ready", …engine status}')


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the engine's status fields (GET /healthz)
    ready: bool


class BatchRejected(BaseModel):
    detail: PublishResult = Field(description="every object of the request was invalid; nothing was published")


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def create_app(s: Settings, engine: Engine, producer: KafkaProducer) -> FastAPI:
    app = FastAPI(title="streamrec", version="0.1.0", description="Streaming search and recommendations; see README.")
    app.add_middleware(ReadShedding, max_inflight=s.serving.max_inflight_reads)
    app.add_middleware(RequestMetrics)  # routed requests only: a shed read never reaches a route (READS_SHED)
    app.include_router(query_routes(engine))
    app.include_router(suggest_routes(engine))
    app.include_router(publish_routes(s, producer))
    app.include_router(operations_routes(s, engine))
    app.include_router(admin_routes(s))  # /admin/models/…: admin key (serving/auth.py)
    app.include_router(cockpit_routes(s, engine))  # /dashboard/data
    app.add_exception_handler(redis.RedisError, store_unavailable(s))
    app.add_exception_handler(StarletteHTTPException, allow_every_method(app))
    declare_components(app, EVENTS_BODY, CATALOG_BODY)
    install_access_control(app, s)  # keys, loopback rule, rate limit, CORS (outermost)
    return app


def declare_components(app: FastAPI, *bodies: BodySchema) -> None:
    """Add the models the request bodies refer to (``$ref``) to ``app``'s OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI; adding the same components again changes nothing
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for body in bodies:
            for name, model in body.components.items():
                components.setdefault(name, model)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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
            headers={"Retry-After": str(s.serving.retry_after_s)},
        )

    return handler


def allow_every_method(app: FastAPI) -> Callable[[Request, Exception], Awaitable[Response]]:
    """A 405's ``Allow`` lists the methods of every route of the path: Starlette names only the
    first route's, and /admin/rules has one route per method."""

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            methods = {
                m
                for route in app.routes
                if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
                for m in route.methods or ()
            }
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    return handler


def readiness(engine: Engine) -> Callable[[], Awaitable[None]]:
    """A dependency answering 503 (with the engine's status) until an index and a model are loaded.
    Async because it only reads two attributes: a sync dependency costs each read a threadpool hop."""

    async def require_ready() -> None:
        if not engine.ready():
            raise HTTPException(
                503, detail={"error": "not ready", **engine.status()}, headers={"Retry-After": str(NOT_READY_RETRY_S)}
            )

    return require_ready


def suggest_routes(engine: Engine) -> APIRouter:
    """/suggest: answered from memory, with or without an index or model (an empty list at first)."""
    router = APIRouter()

    @router.get("/suggest", response_model=SuggestionList)
    def suggest(
        q: Annotated[str, Query(min_length=1, max_length=200, description="what the shopper has typed so far")],
        k: Annotated[int, Query(ge=1, le=20, description="number of suggestions")] = 8,
        category: Annotated[
            str | None,
            Query(max_length=200, description="only searches that led to products of this category (any level)"),
        ] = None,
    ) -> SuggestionList:
        """Searches other shoppers made and then chose a result of, completing ``q``: by prefix, by a
        later word's start, or with a typo fixed (serving/suggest.py)."""
        return engine.suggest(q, k, category.strip() if category and category.strip() else None)

    return router


def query_routes(engine: Engine) -> APIRouter:
    """/search, /recommend, /similar: each needs a ready engine."""
    router = APIRouter(
        dependencies=[Depends(readiness(engine))],
        responses={503: {"model": NotReady, "headers": RETRY_AFTER, "description": "no index or no model loaded yet"}},
    )

    @router.get("/search", response_model=ResultList)
    def search(
        narrow: Filters,
        # the schema says what the route refuses: a query of spaces only is invalid, not empty results
        q: SearchText,
        k: K = 10,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN)] = None,
        variant: SearchVariant = "full",
        impression: Impression = True,
        facets: Annotated[
            list[Annotated[str, StringConstraints(max_length=500, pattern=NAMES_PATTERN)]] | None,
            Query(
                max_length=60,
                description="facets to count over the matching products: category, brand, price, availability, "
                "attr.<name> (repeat the parameter or separate with commas)",
            ),
        ] = None,
        sort: Annotated[
            Sort,
            Query(
                description="relevance (default), price_asc, price_desc, newest (first upsert) or best_selling "
                "(decayed purchases); the others reorder the candidates at least catalog.sort_min_relevance as "
                "relevant as the best"
            ),
        ] = "relevance",
        offset: Annotated[int, Query(ge=0, le=2000, description="position of the page's first product")] = 0,
        page_of: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                pattern=ID_PATTERN,
                description="request_id of an earlier page: this page is cut from the same ranking, so pages "
                "neither repeat nor skip while the catalogue changes (kept catalog.page_ttl_s; else ranked again, "
                "and degraded says so)",
            ),
        ] = None,
    ) -> ResultList:
        try:
            names = check_names(n for value in facets or () for n in value.split(","))
        except ValueError as e:
            raise invalid_query(str(e)) from None
        return engine.search(
            q.strip(),
            user_id,
            k,
            variant=variant,
            impression=impression,
            filters=narrow,
            facets=names,
            sort=sort,
            offset=offset,
            page_of=page_of,
        )

    @router.get("/recommend", response_model=ResultList)
    def recommend(
        narrow: Filters,
        user_id: UserId,
        k: K = 10,
        variant: RecommendVariantParam = "full",
        exclude_seen: Annotated[bool | None, Query(description="skip this session's items; unset = setting")] = None,
        impression: Impression = True,
    ) -> ResultList:
        return engine.recommend(
            user_id, k, variant=variant, exclude_seen=exclude_seen, impression=impression, filters=narrow
        )

    @router.get(
        "/similar/{item_id}",
        response_model=ResultList,
        responses={404: {"model": ErrorMessage, "description": "no such item in the index"}},
    )
    def similar(
        narrow: Filters,
        item_id: Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)],
        k: K = 10,
        impression: Impression = True,
    ) -> ResultList:
        result = engine.similar(item_id, k, impression=impression, filters=narrow)
        if result is None:
            raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
        return result

    @router.get("/bought-together", response_model=ResultList)
    def bought_together(
        narrow: Filters,
        item_id: Annotated[
            list[Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]],
            Query(min_length=1, max_length=50, description="the cart's items, or one product (repeat the parameter)"),
        ],
        k: K = 10,
        impression: Impression = True,
    ) -> ResultList:
        """Products added to cart or bought in one basket with these (from the stream)."""
        return engine.bought_together(item_id, k, impression=impression, filters=narrow)

    return router


def publish_responses() -> dict[int | str, dict[str, Any]]:
    return {
        202: {"description": "the valid objects are on the broker; invalid ones are listed by index"},
        400: {"model": ErrorMessage, "description": "the body is not JSON"},
        413: {"model": ErrorMessage, "description": f"body over {MAX_BODY_BYTES} bytes or over {MAX_BATCH} objects"},
        422: {"model": BatchRejected, "description": "no object was valid (each error names its field)"},
        503: {
            "model": ErrorMessage,
            "headers": RETRY_AFTER,
            "description": "the broker did not acknowledge in time, or too many writes are in flight "
            "(backpressure: nothing of this request was published)",
        },
    }


def publish_routes(s: Settings, producer: KafkaProducer) -> APIRouter:
    """POST /events and /catalog: validate each object, publish the valid ones, answer 202 once the
    broker has them. The body is read on the event loop; validating and publishing (which blocks on
    the broker's acknowledgements) run in the threadpool, so a slow broker never stalls the loop.
    At most ``serving.publish_max_inflight`` requests (and their bytes) do so at once
    (serving/backpressure.py); the rest are answered 503 with Retry-After, unread."""
    router = APIRouter()
    gate = PublishGate.from_settings(s)

    async def publish(
        request: Request, validate: Callable[[Any], Any], topic: str, key_of: Callable[[Any], str]
    ) -> JSONResponse:
        declared = declared_length(request)
        if not gate.try_enter(declared):
            metrics.PUBLISH_SHED.labels(topic).inc()
            raise overloaded(gate)
        held = declared
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise HTTPException(413, detail=f"body is over {MAX_BODY_BYTES} bytes")
                if size > held:
                    if not gate.grow(size - held):
                        metrics.PUBLISH_SHED.labels(topic).inc()
                        raise overloaded(gate)
                    held = size
                chunks.append(chunk)
            objects = parse_batch(b"".join(chunks))
            del chunks
            limits = (s.consumers.max_event_bytes, s.serving.publish_timeout_s)
            result = await run_in_threadpool(publish_batch, producer, objects, validate, topic, key_of, *limits)
        finally:
            gate.leave(held)
        if result.rejected and not result.accepted:
            raise HTTPException(422, detail=result.model_dump())
        return JSONResponse(result.model_dump(), status_code=202)

    def body_of(body: BodySchema) -> dict[str, Any]:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": body.schema}}}}

    @router.post(
        "/events",
        status_code=202,
        response_model=PublishResult,
        responses=publish_responses(),
        openapi_extra=body_of(EVENTS_BODY),
    )
    async def post_events(request: Request):
        """Events: one object or an array of at most 1000. Each object is validated on its own: the
        valid ones are published (partitioned by user_id), the invalid ones reported by index."""
        return await publish(request, validate_event, s.topic.events, lambda e: e.user_id)

    @router.post(
        "/catalog",
        status_code=202,
        response_model=PublishResult,
        responses=publish_responses(),
        openapi_extra=body_of(CATALOG_BODY),
    )
    async def post_catalog(request: Request):
        """Catalog upserts and deletes: one object or an array of at most 1000, validated one by one."""
        return await publish(request, validate_catalog, s.topic.catalog, lambda c: c.item_id)

    return router


def declared_length(request: Request) -> int:
    """The Content-Length, 413 past the body limit (before reading a byte), 0 when absent."""
    value = request.headers.get("content-length")
    if value is None:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise HTTPException(400, detail=f"Content-Length {value!r} is not a number") from None
    if n > MAX_BODY_BYTES:
        raise HTTPException(413, detail=f"body is {n} bytes; limit {MAX_BODY_BYTES}")
    return max(n, 0)


def overloaded(gate: PublishGate) -> HTTPException:
    requests, nbytes = gate.in_flight
    return HTTPException(
        503,
        detail=f"too many writes in flight ({requests} requests, {nbytes} bytes waiting for the broker); "
        f"nothing was published, retry in {RETRY_AFTER_S}s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def parse_batch(body: bytes) -> list:
    """A JSON object or array of objects → list; 413 past the body or batch limit, 400 if not JSON
    (nesting too deep for the parser included: a RecursionError must not become a 500)."""
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, detail=f"body is {len(body)} bytes; limit {MAX_BODY_BYTES}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, detail=f"body is not JSON: {e}") from None
    except RecursionError:
        raise HTTPException(400, detail="body is not JSON this API accepts: nested too deeply") from None
    objects = payload if isinstance(payload, list) else [payload]
    if len(objects) > MAX_BATCH:
        raise HTTPException(413, detail=f"{len(objects)} objects; at most {MAX_BATCH} per request")
    return objects


def publish_batch(
    producer: KafkaProducer,
    objects: list,
    validate: Callable[[Any], Any],
    topic: str,
    key_of: Callable[[Any], str],
    max_object_bytes: int = 64 * 1024,
    timeout_s: float = 10.0,
) -> PublishResult:
    """Publish the valid objects and report the invalid ones by index; 503 if the broker does not
    acknowledge them all within ``timeout_s`` (202 means every accepted object is on the broker).
    An object whose canonical bytes exceed ``max_object_bytes`` is rejected here (the consumers
    would dead-letter it). Blocks: call it off the event loop."""
    rejected: list[PublishRejection] = []
    accepted: list[bus.Outgoing] = []
    for i, obj in enumerate(objects):
        try:
            model = validate(obj)
            value = encode(model)
            if len(value) > max_object_bytes:
                raise Rejected("oversize", f"the object is {len(value)} bytes encoded; limit {max_object_bytes}")
        except Rejected as e:
            rejected.append(PublishRejection(index=i, error=f"{e.reason}: {e.error}"))
            continue
        accepted.append((topic, key_of(model), value))
    try:
        bus.publish_confirmed(producer, accepted, timeout_s=timeout_s)
    except KafkaError as e:  # bus.PublishError, or send() refused (buffer full past max_block_ms)
        metrics.PUBLISHED.labels(topic, "failed").inc()
        cause = e.__cause__ if isinstance(e, bus.PublishError) and e.__cause__ is not None else e
        raise HTTPException(
            503, detail=f"broker did not acknowledge: {cause!r}", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    metrics.PUBLISHED.labels(topic, "accepted").inc(len(accepted))
    metrics.PUBLISHED.labels(topic, "rejected").inc(len(rejected))
    return PublishResult(accepted=len(accepted), rejected=rejected)


def operations_routes(s: Settings, engine: Engine) -> APIRouter:
    """Health, readiness, Prometheus metrics and the HTML dashboard: answered even when not ready."""
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **engine.status()}

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready: no index or no model loaded yet"}},
    )
    def readyz() -> JSONResponse:
        ready = engine.ready()
        return JSONResponse({"ready": ready, **engine.status()}, status_code=200 if ready else 503)

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    )
    def prometheus() -> Response:
        status = engine.status()
        metrics.INDEX_ITEMS.set(status["index_items"])
        metrics.INDEX_VERSION.set(status["index_version"])
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/dashboard", response_class=HTMLResponse)
    def dashboard() -> str:
        return render_dashboard(s, engine)

    @router.get("/shop", response_class=HTMLResponse)
    def storefront() -> str:
        """A storefront demo on the public API: autocomplete, search with facets, filters, sorts and
        pages, clicks posted back (its clicks need a producer key unless from loopback)."""
        return STOREFRONT_PAGE

    return router
