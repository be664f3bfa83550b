"""How fresh is streamrec? p50/p99 of
  (a) catalog upsert (POST /catalog)  → the item is in /search top-10 for its title,
  (b) click (POST /events)           → visible in that user's /recommend, and
  (c) stock patch (POST /catalog, op patch, in_stock false, then true) → the item leaves /search
      for its title, then comes back; the index updater's encoder calls are counted meanwhile
      (a patch that leaves the text alone must not embed), and
  (d) a click after a search nobody made before → the search is suggested by GET /suggest for its
      first word and the start of the next (autocomplete; issue 19 asks ≤ 5 s),
on the running embedded stack (Tansu + Redis + the four services as processes).

Baselines measured in the same run, on the same broker and API, so the figures read as ratios:
a bare Kafka produce→consume round trip, and one /search request.

    python -m bench.freshness --trials 200 --catalog 1000
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from launcher.embedded import free_port
from launcher.stack import LocalStack
from streamrec import bus
from streamrec.datasets import amazon18
from streamrec.settings import Settings


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def line(name: str, xs: list[float], baseline: float | None = None) -> str:
    text = f"{name:44s} n={len(xs):4d}  p50={pct(xs, 50) * 1000:8.1f} ms  p99={pct(xs, 99) * 1000:8.1f} ms"
    if baseline:
        text += f"  p50/baseline={pct(xs, 50) / baseline:6.1f}x"
    return text


def wait_until(check, timeout_s: float, every_s: float = 0.01) -> float | None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if check():
            return time.perf_counter() - start
        time.sleep(every_s)
    return None


def run_trials(name: str, n: int, start_trial, timeout_s: float) -> tuple[list[float], int]:
    """Seconds from each trial's action (``start_trial(i)``, which returns its visibility check)
    until that check passes; a trial slower than ``timeout_s`` counts as a miss."""
    took, misses = [], 0
    for i in range(n):
        started = time.perf_counter()
        visible = start_trial(i)
        if wait_until(visible, timeout_s) is None:
            misses += 1
        else:
            took.append(time.perf_counter() - started)
        if (i + 1) % 50 == 0:
            print(f"  {name} trials {i + 1}/{n}: p50 so far {pct(took, 50) * 1000:.0f} ms", flush=True)
    return took, misses


def new_titles(data_dir: Path, n: int) -> list[str]:
    """Real product titles the demo catalog does not hold (Home Depot), as 'new arrivals'."""
    import csv

    with open(data_dir / "homedepot" / "products.csv", newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.DictReader(f)
        titles = [r["product_title"].strip() for r in itertools.islice(rows, n * 3)]
    return list(dict.fromkeys(t for t in titles if len(t.split()) >= 3))[:n]


def kafka_round_trip(s: Settings, n: int) -> list[float]:
    producer = bus.make_producer(s, linger_ms=0)
    consumer = bus.make_consumer(s, group_id=None)
    tps = bus.all_partitions(consumer, s.topic.drift)
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    consumer.poll(100)
    out = []
    for _ in range(n):
        marker = uuid.uuid4().hex.encode()
        start = time.perf_counter()
        producer.send(s.topic.drift, key="bench", value=b'{"bench":"' + marker + b'"}')
        producer.flush()
        seen = False
        while not seen and time.perf_counter() - start < 10:
            for records in consumer.poll(5).values():
                seen = seen or any(marker in r.value for r in records)
        out.append(time.perf_counter() - start)
    producer.close()
    consumer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--catalog", type=int, default=1000, help="demo catalog items indexed first")
    ap.add_argument("--timeout", type=float, default=20.0, help="a trial slower than this counts as a miss")
    args = ap.parse_args()

    base = Settings()
    data_dir = base.require_data_dir()
    state = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    s = base.replace(state_dir=state, kafka={"bootstrap": ""}, redis={"url": ""}, http={"port": free_port()})
    print(
        f"freshness bench: {args.trials} trials, catalog {args.catalog} items, index factory "
        f"{s.index.factory!r}, encoder precision {s.encoder.precision}",
        flush=True,
    )
    with (
        LocalStack(s, metrics_base_port=free_port()) as stack,
        httpx.Client(base_url=stack.base_url, timeout=10) as http,
    ):
        catalog = [
            op.model_dump(exclude_none=True) for op in itertools.islice(amazon18.catalog(data_dir), args.catalog)
        ]
        wait_until(lambda: _try_post(http, "/catalog", catalog), timeout_s=180, every_s=0.5)
        stack.wait_ready(timeout_s=600, min_items=len(catalog))
        print(f"stack ready: {http.get('/healthz').json()}", flush=True)

        kafka_rt = kafka_round_trip(stack.settings, 50)
        search_rt = []
        for i in range(50):
            t = time.perf_counter()
            http.get("/search", params={"q": catalog[i]["title"][:40], "k": 10}).raise_for_status()
            search_rt.append(time.perf_counter() - t)

        titles = new_titles(data_dir, args.trials)

        def upsert_trial(i: int):
            item_id, title = f"fresh-{uuid.uuid4().hex[:10]}", titles[i]
            http.post(
                "/catalog", json={"op": "upsert", "item_id": item_id, "ts": int(time.time() * 1000), "title": title}
            ).raise_for_status()
            return lambda: item_id in _ids(http.get("/search", params={"q": title, "k": 10}))

        def click_trial(i: int):
            user, item = f"fresh-user-{uuid.uuid4().hex[:10]}", catalog[(i * 7) % len(catalog)]
            http.post(
                "/events",
                json={
                    "event_id": uuid.uuid4().hex,
                    "type": "click",
                    "user_id": user,
                    "item_id": item["item_id"],
                    "ts": int(time.time() * 1000),
                },
            ).raise_for_status()
            return lambda: _mentions(
                http.get("/recommend", params={"user_id": user, "k": 10}), item["item_id"], item["title"]
            )

        findable = [op for op in catalog[:300] if op["item_id"] in _ids(_search(http, op["title"]))]

        def stock_trial(i: int):
            op = findable[(i // 2) % len(findable)]
            gone = i % 2 == 0  # out of stock, then back in stock
            patch = {"op": "patch", "item_id": op["item_id"], "ts": int(time.time() * 1000), "in_stock": not gone}
            http.post("/catalog", json=patch).raise_for_status()
            return lambda: (op["item_id"] in _ids(_search(http, op["title"]))) != gone

        def suggest_trial(i: int):
            op = catalog[(i * 11) % len(catalog)]
            query = f"{op['title'].split()[0]} zq{uuid.uuid4().hex[:6]}"  # a search nobody made before
            click = {
                "event_id": uuid.uuid4().hex,
                "type": "click",
                "user_id": f"fresh-searcher-{uuid.uuid4().hex[:10]}",
                "item_id": op["item_id"],
                "ts": int(time.time() * 1000),
                "query": query,
            }
            http.post("/events", json=click).raise_for_status()
            typed, wanted = query[: len(query) - 3], query.lower()
            return lambda: (
                wanted in [x["text"] for x in http.get("/suggest", params={"q": typed}).json()["suggestions"]]
            )

        upsert, upsert_miss = run_trials("upsert", len(titles), upsert_trial, args.timeout)
        click, click_miss = run_trials("click", args.trials, click_trial, args.timeout)
        embedded_before = _embedded(stack)
        stock, stock_miss = run_trials("stock patch", 2 * (args.trials // 2), stock_trial, args.timeout)
        patch_embeds = _embedded(stack) - embedded_before
        suggested, suggest_miss = run_trials("suggest", args.trials, suggest_trial, args.timeout)
        suggest_rt = []
        for i in range(200):
            t = time.perf_counter()
            http.get("/suggest", params={"q": catalog[i % len(catalog)]["title"][: 1 + i % 8]}).raise_for_status()
            suggest_rt.append(time.perf_counter() - t)

    kafka_p50 = statistics.median(kafka_rt)
    print()
    print(f"index factory {s.index.factory!r} · encoder {s.encoder.precision} · catalog {len(catalog)} items")
    print(line("baseline: Kafka produce→consume round trip", kafka_rt))
    print(line("baseline: GET /search", search_rt))
    print(line("(a) catalog upsert → found by /search", upsert, kafka_p50) + f"  misses={upsert_miss}")
    print(line("(b) click → visible in /recommend", click, kafka_p50) + f"  misses={click_miss}")
    print(
        line("(c) stock patch → hidden / shown by /search", stock, kafka_p50)
        + f"  misses={stock_miss}  encoder calls during the patches: {patch_embeds:.0f}"
    )
    print(line("(d) click after a new search → suggested", suggested, kafka_p50) + f"  misses={suggest_miss}")
    print(line("GET /suggest (prefixes of titles, 1-8 chars)", suggest_rt))
    return 0 if not (upsert_miss or click_miss or stock_miss or patch_embeds or suggest_miss) else 1


def _search(http: httpx.Client, title: str) -> httpx.Response:
    return http.get("/search", params={"q": title, "k": 10, "impression": "false"})


def _embedded(stack: LocalStack) -> float:
    """Items the index updater has run through its encoder (its Prometheus counter)."""
    port = stack.metrics_ports["index-updater"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(row.split()[-1]) for row in text.splitlines() if row.startswith("streamrec_index_items_embedded_total")
    )


def _try_post(http: httpx.Client, path: str, body) -> bool:
    try:
        return http.post(path, json=body).status_code == 202
    except httpx.HTTPError:
        return False


def _ids(r: httpx.Response) -> list[str]:
    return [it["item_id"] for it in r.json().get("items", [])] if r.status_code == 200 else []


def _mentions(r: httpx.Response, item_id: str, title: str) -> bool:
    """The click reached the user's features: the session's recommendations hold the clicked item
    (repeats are allowed by default) or are explained by it."""
    if r.status_code != 200:
        return False
    items = r.json()["items"]
    return any(it["item_id"] == item_id or any(title in reason for reason in it["reasons"]) for it in items)


if __name__ == "__main__":
    sys.exit(main())
