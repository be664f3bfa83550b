"""A small Python client of the HTTP API, for storefront back ends and scripts.

Why it exists: the API's guarantees need the caller's half. A write answered 503 (backpressure, a
broker that did not acknowledge in time) or 429 (rate limit) published nothing or may land later,
so it must be resent *with the same* ``event_id``s (the engine then counts it once), after the
``Retry-After`` the answer names, not at once. A read answered 503 was shed because serving is
past capacity: the storefront should fall back, not hammer it. This client does both:

* ``send_events`` / ``send_catalog`` give every event an ``event_id`` before the first attempt,
  split into batches of at most 1,000 objects, and retry a batch on 429 / 503 (waiting its
  ``Retry-After``) and on connection errors (exponential back-off), with the same body each time;
* ``search`` / ``recommend`` / ``similar`` raise :class:`Overloaded` at once on 429 / 503 unless
  asked to retry (``read_attempts``), and :class:`ApiError` on any other refusal, with the
  server's ``detail``.

    with Client("http://127.0.0.1:8080", api_key="…") as api:
        page = api.search("cordless drill", user_id="u1")
        api.send_events([{"type": "click", "user_id": "u1", "item_id": page.items[0].item_id,
                          "request_id": page.request_id, "position": 0, "ts": now_ms}])
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from streamrec.schemas import PublishResult, ResultList, SuggestionList

MAX_BATCH = 1000  # the API's limit of objects per POST (serving/app.py)


class ApiError(Exception):
    """A refusal that retrying the same request will not change (4xx other than 429)."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class Overloaded(Exception):
    """429 or 503: nothing was done; retry after ``retry_after_s`` seconds (or fall back)."""

    def __init__(self, status: int, retry_after_s: float, detail: Any):
        super().__init__(f"{status}, retry after {retry_after_s:g}s: {detail}")
        self.status, self.retry_after_s, self.detail = status, retry_after_s, detail


class Client:
    """``base_url`` of serving; ``api_key`` sent as ``Authorization: Bearer`` (serving/auth.py)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 5.0,
        write_attempts: int = 8,
        read_attempts: int = 1,
        max_wait_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self.write_attempts, self.read_attempts, self.max_wait_s = write_attempts, read_attempts, max_wait_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- reads ---------------------------------------------------------------------------------
    def search(self, q: str, k: int = 10, user_id: str | None = None, **params: Any) -> ResultList:
        return self._read("/search", {"q": q, "k": k, "user_id": user_id, **params})

    def recommend(self, user_id: str, k: int = 10, **params: Any) -> ResultList:
        return self._read("/recommend", {"user_id": user_id, "k": k, **params})

    def similar(self, item_id: str, k: int = 10, **params: Any) -> ResultList:
        return self._read(f"/similar/{item_id}", {"k": k, **params})

    def bought_together(self, item_ids: Sequence[str], k: int = 10, **params: Any) -> ResultList:
        return self._read("/bought-together", {"item_id": list(item_ids), "k": k, **params})

    def suggest(self, q: str, k: int = 8) -> SuggestionList:
        return SuggestionList.model_validate(self._get("/suggest", {"q": q, "k": k}).json())

    def _read(self, path: str, params: Mapping[str, Any]) -> ResultList:
        """Filters go as keyword arguments (``brand=["Acme"]``, ``attr=["volts:12..18"]``, ``facets="brand"``)."""
        return ResultList.model_validate(self._get(path, params).json())

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        query = {name: _param(v) for name, v in params.items() if v is not None}
        return self._with_retries(self.read_attempts, lambda: self._call("GET", path, params=query))

    # --- writes --------------------------------------------------------------------------------
    def send_events(self, events: Iterable[BaseModel | Mapping[str, Any]]) -> PublishResult:
        """Publish ``events`` (an ``event_id`` is added where missing, once, so a retry is the same
        event); returns the accepted count and the rejected ones, indexed over all of ``events``."""
        return self._publish("/events", [_with_event_id(e) for e in events])

    def send_catalog(self, ops: Iterable[BaseModel | Mapping[str, Any]]) -> PublishResult:
        """Catalog upserts and deletes (idempotent by item and ``ts``: a retry changes nothing)."""
        return self._publish("/catalog", [_as_dict(op) for op in ops])

    def _publish(self, path: str, objects: list[dict[str, Any]]) -> PublishResult:
        accepted, rejected = 0, []
        for start in range(0, len(objects), MAX_BATCH):
            batch = objects[start : start + MAX_BATCH]
            response = self._with_retries(self.write_attempts, lambda b=batch: self._call("POST", path, json=b))
            result = PublishResult.model_validate(response.json())
            accepted += result.accepted
            rejected += [r.model_copy(update={"index": r.index + start}) for r in result.rejected]
        return PublishResult(accepted=accepted, rejected=rejected)

    # --- one request ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code in (429, 503):
            raise Overloaded(response.status_code, _retry_after(response), _detail(response))
        if response.status_code == 422 and method == "POST":  # every object rejected: a result, not an error
            return httpx.Response(202, json=response.json()["detail"], request=response.request)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def _with_retries(self, attempts: int, call) -> httpx.Response:
        """``call`` until it answers, at most ``attempts`` times: after an Overloaded, waiting what the
        server asked (capped at ``max_wait_s``); after a transport error, backing off exponentially."""
        backoff = wait_exponential(multiplier=0.2, max=self.max_wait_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, Overloaded):
                return min(error.retry_after_s, self.max_wait_s)
            return backoff(state)

        retrying = Retrying(
            stop=stop_after_attempt(max(1, attempts)),
            wait=wait,
            retry=retry_if_exception_type((Overloaded, httpx.TransportError)),
            reraise=True,
        )
        return retrying(call)


def _param(value: Any) -> Any:
    return str(value).lower() if isinstance(value, bool) else value


def _as_dict(obj: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_none=True)
    return dict(obj)


def _with_event_id(event: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    out = _as_dict(event)
    if not out.get("event_id"):
        out["event_id"] = uuid.uuid4().hex
    return out


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text
