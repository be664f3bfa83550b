"""Several serving processes on one port (``serving.workers``), on the real stack: every worker
answers, each request's impression is logged exactly once whichever worker took it, a newly
published model reaches every worker, and a killed worker is restarted while the others answer."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from launcher.embedded import free_port
from launcher.stack import LocalStack, worker_count
from streamrec.model_store import ModelStore
from streamrec.ranking import RankingHead
from streamrec.settings import Settings
from tests.conftest import isolated_settings
from tests.polling import wait_for
from tests.topics import events_on_topic

WORKERS = 2
TS = 1_700_000_000_000
TITLES = [f"{kind} {size} inch" for kind in ("cordless drill", "garden hose", "paint roller") for size in range(10)]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(kafka_broker, redis_server, tmp_path_factory):
    s = isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path_factory.mktemp("workers"),
        http={"port": free_port()},
        serving={"workers": WORKERS, "model_poll_s": 0.1},
        search={"explore_share": 0.0, "swap_share": 0.0},
    )
    with LocalStack(s, metrics_base_port=0) as running:
        catalog = [{"op": "upsert", "item_id": f"w{j}", "ts": TS, "title": t} for j, t in enumerate(TITLES)]
        with httpx.Client(base_url=running.base_url, timeout=10) as http:
            wait_for(lambda: _accepted(http, catalog), timeout_s=120, what="serving to take the catalogue")
            wait_for(lambda: _all_workers(http, len(TITLES)), timeout_s=240, what="every worker to index it")
        yield running


def _accepted(http: httpx.Client, catalog: list[dict]) -> bool:
    try:
        return http.post("/catalog", json=catalog).status_code == 202
    except httpx.HTTPError:
        return False


def _statuses(http: httpx.Client, n: int = 40) -> dict[int, dict]:
    """pid → /healthz of each worker that answered one of ``n`` fresh connections."""
    seen: dict[int, dict] = {}
    for _ in range(n):
        with httpx.Client(base_url=http.base_url, timeout=10) as fresh:  # a new connection each time
            try:
                status = fresh.get("/healthz").json()
            except httpx.HTTPError:
                continue
        seen[status["pid"]] = status
    return seen


def _all_workers(http: httpx.Client, items: int) -> bool:
    seen = _statuses(http)
    ready = [st for st in seen.values() if st["index_items"] >= items and st["model_version"] > 0]
    return len(ready) == WORKERS


def _impressions(s, request_ids: set[str]) -> list[str]:
    """Request ids of the impression events on the topic, read until every one of ``request_ids`` is
    there and a second longer (anything logged twice would follow within it)."""

    def ours(events) -> list[str]:
        return [e.request_id for e in events if e.type == "impression" and e.request_id in request_ids]

    found = events_on_topic(
        s, lambda es: request_ids <= set(ours(es)), "every impression on the events topic", settle_s=1.0
    )
    return ours(found)


def test_every_worker_answers_and_each_impression_is_logged_once(stack):
    request_ids, workers = set(), set()
    for j in range(60):
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:  # new connections spread over workers
            r = http.get("/search", params={"q": TITLES[j % len(TITLES)], "user_id": f"shopper{j}"})
            assert r.status_code == 200, r.text
            request_ids.add(r.json()["request_id"])
            workers.add(http.get("/healthz").json()["worker"])
    assert workers == set(range(WORKERS))
    found = _impressions(stack.settings, request_ids)
    assert len(found) == len(request_ids) == 60  # once each: none lost, none doubled


def test_a_published_model_reaches_every_worker(stack):
    store = ModelStore.from_settings(stack.settings)
    version = store.publish(RankingHead(), {"note": "test_serving_workers"})
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:

        def everywhere() -> bool:
            seen = _statuses(http)
            return len(seen) == WORKERS and all(st["model_version"] == version for st in seen.values())

        wait_for(everywhere, timeout_s=30, what=f"model v{version} in every worker")


def test_a_killed_worker_is_restarted_and_the_others_keep_answering(stack):
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        victim = next(st for st in _statuses(http).values() if st["worker"] == 0)
        os.kill(victim["pid"], signal.SIGKILL)
        answered = 0
        for _ in range(20):  # the other worker takes the connections the kernel gives it
            with httpx.Client(base_url=stack.base_url, timeout=10) as fresh:
                try:
                    answered += fresh.get("/search", params={"q": "garden hose"}).status_code == 200
                except httpx.HTTPError:
                    pass
        assert answered > 0

        def restarted() -> bool:
            seen = _statuses(http)
            return any(st["worker"] == 0 and st["pid"] != victim["pid"] for st in seen.values())

        wait_for(restarted, timeout_s=180, what="worker 0 back under a new pid")


@pytest.mark.parametrize(("cores", "setting", "workers"), [(1, 0, 1), (2, 0, 1), (6, 0, 3), (40, 0, 8), (2, 5, 5)])
def test_the_worker_count_is_sized_to_the_host_unless_set(monkeypatch, cores, setting, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert worker_count(Settings(serving={"workers": setting})) == workers
