"""The `streamrec` command: the whole stack (`up`), one service each, replay, status, models."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launcher.stack import serving_workers, worker_count
from streamrec import bus
from streamrec.lifecycle import default_threads, limit_cpu_threads, setup_logging, stop_on_signals
from streamrec.metrics import serve_metrics
from streamrec.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="streamrec: streaming search and recommendations that learn from every click.",
)
model_app = typer.Typer(no_args_is_help=True, help="Published ranking-head versions.")
app.add_typer(model_app, name="model")
console = Console(stderr=True)
log = logging.getLogger("launcher.cli")  # not __name__: run as `-m launcher.cli` that is "__main__"


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as e:  # pydantic's message names the bad variable
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from None


def _inspect_settings() -> Settings:
    """Settings for read-only commands: those of a running `streamrec up` when none are given."""
    from launcher.stack import running_settings

    return running_settings(_settings())


# --- one service each (as docker-compose runs them) ---------------------------------------------

# A service's entry point (docs/CONTRACTS.md): returns once `stop` is set and the batch in hand is committed.
ServiceRun = Callable[[Settings, threading.Event], None]


def _run_service(name: str, load: Callable[[], ServiceRun], own_metrics: bool = True) -> None:
    """Run the service ``load()`` imports; its heavy libraries load after the thread defaults are set."""
    s = _settings()
    setup_logging(name if s.serving.worker is None or name != "serving" else f"serving-{s.serving.worker}")
    default_threads(s.cpu_threads)
    run = load()
    stop = stop_on_signals()
    limit_cpu_threads(s.cpu_threads)
    if own_metrics:
        serve_metrics(s.metrics_port)
    try:
        bus.wait_for_broker(s.require_kafka(), options=s.kafka.client_options())
        bus.ensure_topics(s)  # idempotent: whichever service starts first creates them
        _check_redis_policy(s)
        run(s, stop)
    except (RuntimeError, TimeoutError) as e:  # configuration problems read best as one line
        console.print(f"[red]{name}:[/red] {e}")
        raise typer.Exit(1) from None


def _check_redis_policy(s: Settings) -> None:
    """Warn (once, at start-up) when Redis would fail writes or evict offsets at maxmemory."""
    from streamrec.memory import warn_if_unsafe
    from streamrec.store import connect

    r = connect(s, timeout_s=2.0)
    try:
        warn_if_unsafe(r)
    finally:
        r.close()


# Each command imports its own service when it runs, not at the top of this module: every child of
# `up` runs one service, and importing all four would cost each of them seconds (torch, transformers).


@app.command()
def consume() -> None:
    """Ingest events and catalog changes into Redis features (consumers/)."""
    _run_service("consumers", lambda: import_module("consumers.service").run)


@app.command()
def learn() -> None:
    """Train the ranking head online and publish versions (learner/)."""
    _run_service("learner", lambda: import_module("learner.service").run)


@app.command()
def index() -> None:
    """Embed catalog changes and publish vectors + index snapshots (index_updater/)."""
    _run_service("index-updater", lambda: import_module("index_updater.service").run)


@app.command()
def serve(
    workers: Annotated[
        int | None, typer.Option(help="serving processes on the port (default serving.workers; 0 = half the cores)")
    ] = None,
) -> None:
    """Answer /search, /recommend, /similar over HTTP (serving/)."""
    if workers is not None:
        os.environ["STREAMREC_SERVING_WORKERS"] = str(workers)
    s = _settings()
    if s.serving.worker is None and worker_count(s) > 1:
        _supervise_workers(s)
        return
    # a worker serves /metrics on the API port (whichever worker takes the connection) and on its own port
    own_metrics = s.serving.worker is not None and s.metrics_port > 0
    _run_service("serving", lambda: import_module("serving.service").run, own_metrics=own_metrics)


def _supervise_workers(s: Settings) -> None:
    """Run ``serving.workers`` serving processes, restart any that dies, drain them all on SIGTERM."""
    from launcher.supervisor import Supervisor

    setup_logging("serving")
    stop = stop_on_signals()
    supervisor = Supervisor(serving_workers(s, dict(os.environ), s.state_dir / "logs", s.metrics_port))
    supervisor.start()
    log.info("serving: %d workers on port %d", worker_count(s), s.http.port)
    stop.wait()
    supervisor.stop()


# --- the main job ---------------------------------------------------------------------------------


@app.command()
def up(
    rate: Annotated[float, typer.Option(help="demo shopper actions per second (0 = no demo traffic)")] = 20.0,
    demo: Annotated[bool, typer.Option(help="index the demo catalog and replay demo shoppers")] = True,
    wait_s: Annotated[float, typer.Option(help="give up if the demo catalog is not indexed by then")] = 900.0,
    catalog_limit: Annotated[int, typer.Option(help="index only the first N demo items (0 = all)")] = 0,
) -> None:
    """Run everything: embedded broker + Redis (unless configured), all four services, demo data."""
    from launcher.stack import LocalStack

    setup_logging("up")
    stack = LocalStack(_settings())
    stop = stop_on_signals()
    try:
        stack.start()
        s = stack.settings
        if not stack.requested.kafka.bootstrap:
            console.print(f"embedded Kafka-compatible broker (Tansu, [bold]memory only[/bold]) at {s.kafka.bootstrap}")
        if not stack.requested.redis.url:
            console.print(f"embedded Redis (no persistence) at {s.redis.url}")
        base = stack.base_url
        for line in _access_notes(s):
            console.print(line, soft_wrap=True)  # one line each: greppable in logs
        if demo:
            _index_demo_catalog(s, base, stop, wait_s, catalog_limit)
        console.print(
            f"\n[bold green]streamrec is up[/bold green]\n"
            f"  search     {base}/search?q=ink+cartridge&k=5\n"
            f"  recommend  {base}/recommend?user_id=A994\n"
            f"  similar    {base}/similar/0\n"
            f"  dashboard  {base}/dashboard   API docs {base}/docs   metrics {base}/metrics\n"
            f"  service metrics " + ", ".join(f":{p} {n}" for n, p in stack.metrics_ports.items()) + "\n"
            f"  logs       {stack.log_dir}\n"
            f"Ctrl-C stops everything."
        )
        if demo and rate > 0:
            from launcher.demo import DemoShopper

            shopper = DemoShopper(base, s.require_data_dir(), rate, stop)
            threading.Thread(target=shopper.run, name="demo", daemon=True).start()
            console.print(f"replaying demo shoppers at {rate:g} actions/s")
        while not stop.wait(1.0):
            pass
    finally:
        console.print("shutting down: draining services…")
        stack.stop()
        console.print("stopped.")


def _access_notes(s: Settings) -> list[str]:
    """What `up` says about access control at start-up (serving/auth.py applies it)."""
    notes = []
    if not s.api.producer_keys:
        notes.append(
            "[yellow]no producer API key configured:[/yellow] POST /events and /catalog are accepted from "
            "loopback clients only (set STREAMREC_API_PRODUCER_KEYS to accept keyed writes from elsewhere)"
        )
    if not s.api.admin_keys:
        notes.append(
            "[yellow]no admin API key configured:[/yellow] model promote / roll back (/admin) from loopback only "
            "(STREAMREC_API_ADMIN_KEYS)"
        )
    if s.api.require_read_key:
        notes.append("reads require an API key (STREAMREC_API_REQUIRE_READ_KEY)")
    return notes


def _index_demo_catalog(s: Settings, base: str, stop: threading.Event, wait_s: float, limit: int) -> None:
    """Publish the demo catalog, then show progress until serving can search all of it."""
    from itertools import islice

    from streamrec.datasets import sources
    from streamrec.schemas import encode

    ops = list(islice(sources.load(f"{s.demo_catalog}:catalog", s.require_data_dir()), limit or None))
    producer = bus.make_producer(s)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Without a terminal rich shows no live bar, so progress also goes to the log every few seconds.
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"publishing {s.demo_catalog} catalog", total=len(ops))
        for op in ops:
            producer.send(s.topic.catalog, key=op.item_id, value=encode(op))
            progress.advance(task)
        producer.flush()
        producer.close()
        log.info("published %d catalog items; embedding and indexing them", len(ops))
        task = progress.add_task("embedding + indexing (serving replica)", total=len(ops))
        started = time.monotonic()
        deadline = started + wait_s
        next_log = started + 5
        indexed = 0
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                try:
                    indexed = http.get(f"{base}/healthz").json().get("index_items", 0)
                    progress.update(task, completed=min(len(ops), indexed))
                    if indexed >= len(ops) and http.get(f"{base}/readyz").status_code == 200:
                        log.info("demo catalog indexed: %d items in %.0fs", indexed, time.monotonic() - started)
                        return
                except httpx.HTTPError:
                    pass  # serving is still loading the encoder
                now = time.monotonic()
                if now >= next_log:
                    rate = indexed / (now - started)
                    log.info("indexed %d/%d items (%.0f items/s)", indexed, len(ops), rate)
                    next_log = now + 5
                if now > deadline:
                    raise RuntimeError(f"demo catalog not indexed within {wait_s:.0f}s; see the logs")
                stop.wait(0.5)


# --- replay ---------------------------------------------------------------------------------------


@app.command()
def replay(
    source: Annotated[
        str,
        typer.Argument(
            help="a JSONL file of events and/or catalog ops, or dataset:NAME:KIND (see `streamrec replay --list`)"
        ),
    ] = "",
    rate: Annotated[float, typer.Option(help="messages per second; 0 = as fast as possible")] = 0.0,
    raw: Annotated[
        bool, typer.Option(help="send lines untouched (invalid ones are dead-lettered by the consumers)")
    ] = False,
    list_sources: Annotated[bool, typer.Option("--list", help="list dataset sources")] = False,
) -> None:
    """Produce events / catalog ops from a file or a public dataset, at a fixed rate."""
    from streamrec.datasets import sources
    from streamrec.schemas import CatalogOp, Rejected, decode_catalog, decode_event, encode

    setup_logging("replay")
    s = _settings()
    if list_sources or not source:
        for name, doc in sources.describe().items():
            console.print(f"  dataset:{name:32s} {doc}")
        raise typer.Exit(0 if list_sources else 2)
    stop = stop_on_signals()
    producer = bus.make_producer(s)
    sent = rejected = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()

    def send(topic: str, key: str | None, value: bytes) -> None:
        nonlocal sent, next_at
        producer.send(topic, key=key, value=value)
        sent += 1
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    with Progress(
        TextColumn("{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(f"replaying {source}", total=None)
        if source.startswith("dataset:"):
            for model in sources.load(source.removeprefix("dataset:"), s.require_data_dir()):
                if stop.is_set():
                    break
                is_catalog = isinstance(model, CatalogOp)
                send(
                    s.topic.catalog if is_catalog else s.topic.events,
                    model.item_id if isinstance(model, CatalogOp) else model.user_id,
                    encode(model),
                )
                progress.advance(task)
        else:
            path = Path(source)
            if not path.is_file():
                console.print(f"[red]no such file:[/red] {path}")
                raise typer.Exit(2)
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if stop.is_set():
                        break
                    line = line.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    is_catalog = b'"op"' in line
                    topic = s.topic.catalog if is_catalog else s.topic.events
                    if raw:
                        send(topic, None, line)
                    else:
                        try:
                            model = (decode_catalog if is_catalog else decode_event)(line, s.consumers.max_event_bytes)
                        except Rejected as e:
                            rejected += 1
                            console.print(f"[yellow]{path}:{lineno}[/yellow] {e.reason}: {e.error}")
                            continue
                        send(topic, model.item_id if isinstance(model, CatalogOp) else model.user_id, encode(model))
                    progress.advance(task)
    producer.flush()
    producer.close()
    console.print(f"sent {sent}, rejected {rejected}")
    if rejected:
        raise typer.Exit(1)


# --- status and models -------------------------------------------------------------------------


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Versions, consumer lag, counts and filter decisions of a running deployment."""
    s = _inspect_settings()
    report: dict = {
        "settings": {
            "kafka": s.kafka.bootstrap or "(embedded, via streamrec up)",
            "redis": s.redis.url or "(embedded, via streamrec up)",
            "index_factory": s.index.factory,
            "encoder_precision": s.encoder.precision,
        }
    }
    try:
        report["serving"] = httpx.get(f"http://{s.http.host}:{s.http.port}/healthz", timeout=2).json()
    except httpx.HTTPError as e:
        report["serving"] = {"error": f"not reachable: {e!r}"}
    if s.kafka.bootstrap:
        lag: dict[str, dict[str, Any]] = {}
        groups = {
            "consumers": (s.consumers.group, [s.topic.events, s.topic.catalog]),
            "index-updater": (s.index.updater_group, [s.topic.catalog]),
            "learner": (s.learner.group, [s.topic.events]),
        }
        for name, (group, topics) in groups.items():
            try:
                lag[name] = {topic: bus.group_lag(s, group, topic) for topic in topics}
            except Exception as e:
                lag[name] = {"error": repr(e)}
        follower = report["serving"].get("vector_offsets")  # serving's replica of the vectors topic
        if isinstance(follower, dict):
            try:
                positions = {int(p): int(o) for p, o in follower.items()}
                lag["serving (vector follower)"] = {s.topic.vectors: bus.positions_lag(s, s.topic.vectors, positions)}
            except Exception as e:
                lag["serving (vector follower)"] = {"error": repr(e)}
        report["lag"] = lag
    try:
        from streamrec.model_store import ModelStore

        store = ModelStore.from_settings(s)
        report["models"] = {"serving_version": store.latest_version(), "recent": store.list()[-5:]}
    except Exception as e:
        report["models"] = {"error": repr(e)}
    from consumers.status import summary as consumers_summary
    from index_updater.status import summary as index_summary

    summaries: dict[str, Callable[[Settings], dict]] = {"consumers": consumers_summary, "index": index_summary}
    for section, summary in summaries.items():
        try:
            report[section] = summary(s)
        except Exception as e:  # one unreachable part must not hide the others
            report[section] = {"error": repr(e)}
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        from launcher.status_view import print_report

        print_report(report, Console())


@model_app.command("list")
def model_list() -> None:
    """Every published version with its online metrics; * marks the one being served."""
    from streamrec.model_store import ModelStore

    store = ModelStore.from_settings(_inspect_settings())
    current = store.latest_version()
    for entry in store.list():
        mark = "*" if entry.get("version") == current else " "
        print(mark, json.dumps(entry, default=str))


@model_app.command("rollback")
def model_rollback(
    version: Annotated[int | None, typer.Argument(help="default: the served version's parent")] = None,
) -> None:
    """Serve VERSION again (serving hot-swaps within serving.model_poll_s); the same as the cockpit's button
    (POST /admin/models/rollback)."""
    from streamrec.model_store import ModelStore

    store = ModelStore.from_settings(_inspect_settings())
    if version is None:
        version = store.previous_version()
        if version is None:
            console.print("[red]no earlier model version to roll back to[/red]")
            raise typer.Exit(1)
    try:
        store.rollback(version)
    except (KeyError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]cannot roll back to {version}:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"now serving version {store.latest_version()}")


@model_app.command("query-encoder")
def model_query_encoder(
    version: Annotated[int | None, typer.Argument(help="serve this version; 0 = the pretrained encoder")] = None,
) -> None:
    """The learner's fine-tuned query-encoder versions with their held-out verdicts (* = served); with
    VERSION, serve it instead (serving follows within query_tuning.poll_s; the next training starts from it)."""
    from streamrec.query_versions import QueryVersions

    store = QueryVersions(_inspect_settings().query_encoders_dir)
    if version is None:
        current = store.current()
        print("*" if current == 0 else " ", json.dumps({"version": 0, "what": "pretrained"}))
        for v in store.versions():
            print("*" if v == current else " ", json.dumps(store.meta(v), default=str))
        print("tuner:", json.dumps(store.status()))  # training now, and the last candidate's verdict
        return
    if version != 0 and store.path(version) is None:
        console.print(f"[red]no query-encoder version {version}[/red] (kept: {store.versions() or 'none'})")
        raise typer.Exit(1)
    store.point(version)
    console.print(f"now serving query-encoder version {version}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
