"""The HTTP API the storefront calls (FastAPI). Routes are thin: validation here, work in Engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from kafka import KafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import metrics
from serving.dashboard import render_dashboard
from serving.engine import Engine
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

MAX_BATCH = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024

K = Annotated[int, Query(ge=1, le=100, description="number of results")]
UserId = Annotated[str, Query(min_length=1, max_length=128)]


def create_app(s: Settings, engine: Engine, producer: KafkaProducer) -> FastAPI:
    app = FastAPI(title="streamrec", version="0.1.0",
                  description="Streaming search and recommendations; see README.")

    def timed(endpoint: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        status = "200"
        try:
            return fn()
        except HTTPException as e:
            status = str(e.status_code)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            metrics.REQUESTS.labels(endpoint, status).inc()
            metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)

    def not_ready() -> None:
        if not engine.ready():
            raise HTTPException(503, detail={"error": "not ready", **engine.status()})

    @app.get("/search", response_model=ResultList)
    def search(q: Annotated[str, Query(min_length=1, max_length=512)], k: K = 10,
               user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None) -> ResultList:
        def run():
            not_ready()
            if not q.strip():
                raise HTTPException(422, detail="q must contain a non-space character")
            return engine.search(q.strip(), user_id, k)
        return timed("search", run)

    @app.get("/recommend", response_model=ResultList)
    def recommend(user_id: UserId, k: K = 10) -> ResultList:
        def run():
            not_ready()
            return engine.recommend(user_id, k)
        return timed("recommend", run)

    @app.get("/similar/{item_id}", response_model=ResultList)
    def similar(item_id: Annotated[str, Path(min_length=1, max_length=128)], k: K = 10) -> ResultList:
        def run():
            not_ready()
            result = engine.similar(item_id, k)
            if result is None:
                raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
            return result
        return timed("similar", run)

    async def publish(request: Request, validate, topic: str, key_of) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, detail=f"body is {len(body)} bytes; limit {MAX_BODY_BYTES}")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPException(400, detail=f"body is not JSON: {e}") from None
        objects = payload if isinstance(payload, list) else [payload]
        if len(objects) > MAX_BATCH:
            raise HTTPException(413, detail=f"{len(objects)} objects; at most {MAX_BATCH} per request")
        rejected: list[PublishRejection] = []
        accepted: list[bus.Outgoing] = []
        for i, obj in enumerate(objects):
            try:
                model = validate(obj)
            except Rejected as e:
                rejected.append(PublishRejection(index=i, error=f"{e.reason}: {e.error}"))
                continue
            accepted.append((topic, key_of(model), encode(model)))
        try:  # 202 means every accepted object is on the broker
            bus.publish_confirmed(producer, accepted, timeout_s=10)
        except bus.PublishError as e:
            metrics.PUBLISHED.labels(topic, "failed").inc()
            raise HTTPException(503, detail=f"broker did not acknowledge: {e.__cause__!r}") from None
        metrics.PUBLISHED.labels(topic, "accepted").inc(len(accepted))
        metrics.PUBLISHED.labels(topic, "rejected").inc(len(rejected))
        result = PublishResult(accepted=len(accepted), rejected=rejected)
        return JSONResponse(result.model_dump(), status_code=202)

    @app.post("/events", status_code=202, response_model=PublishResult)
    async def post_events(request: Request):
        return await publish(request, validate_event, s.topic_events, lambda e: e.user_id)

    @app.post("/catalog", status_code=202, response_model=PublishResult)
    async def post_catalog(request: Request):
        return await publish(request, validate_catalog, s.topic_catalog, lambda c: c.item_id)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **engine.status()}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = engine.ready()
        return JSONResponse({"ready": ready, **engine.status()}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        status = engine.status()
        metrics.INDEX_ITEMS.set(status["index_items"])
        metrics.INDEX_VERSION.set(status["index_version"])
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/dashboard", response_class=HTMLResponse)
    def dashboard() -> str:
        return render_dashboard(s, engine)

    return app
