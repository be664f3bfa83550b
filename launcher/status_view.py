"""`streamrec status` as an operator reads it: one rich table per part (``--json`` prints the report
itself). Every part may be an ``{"error": …}`` instead of its data; that is shown, not hidden."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from streamrec.memory import policy_warning


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:120]
    return str(v)


def _when(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "–"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _kv(title: str, rows: dict, keys: list[str] | None = None) -> Table:
    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k in keys or list(rows):
        if k in rows:
            t.add_row(k.replace("_", " "), _fmt(rows[k]))
    return t


def _error(title: str, part: Any) -> Table | None:
    if isinstance(part, dict) and "error" in part and len(part) == 1:
        t = Table(title=title, title_justify="left", show_header=False, box=None)
        t.add_row(f"[red]{part['error']}[/red]")
        return t
    return None


def _keyspaces(rows: list[dict]) -> Table:
    """The feature keyspaces and their masters; an unsafe eviction policy in red, with why."""
    t = Table(title="Feature keyspaces", title_justify="left")
    for col in ("keyspace", "master", "events partitions", "used memory", "eviction policy"):
        t.add_column(col)
    for row in rows:
        policy = _fmt(row.get("maxmemory_policy"))
        if policy_warning(row):
            policy = f"[red]{policy} (unsafe: README, Memory)[/red]"
        used = row.get("used_memory")
        t.add_row(
            _fmt(row.get("keyspace")),
            _fmt(row.get("master")),
            ", ".join(str(p) for p in row.get("events_partitions", [])),
            f"{used / 2**20:.1f} MiB" if isinstance(used, int) else "–",
            policy,
        )
    return t


def tables(report: dict) -> list[Table]:
    out: list[Table] = [_kv("Deployment", report.get("settings", {}))]

    serving = report.get("serving", {})
    shown = [k for k in serving if k != "vector_offsets"]  # its lag is a row of the lag table
    out.append(_error("Serving", serving) or _kv("Serving", serving, shown))

    if "lag" in report:
        lag = Table(title="Consumer lag (records)", title_justify="left")
        for col in ("service", "topic", "partitions", "total lag"):
            lag.add_column(col, justify="right" if col == "total lag" else "left")
        for service, topics in report["lag"].items():
            if "error" in topics:
                lag.add_row(service, "", "", f"[red]{topics['error']}[/red]")
                continue
            for topic, parts in topics.items():
                per = ", ".join(f"{p}:{n}" for p, n in sorted(parts.items()))
                total = sum(parts.values())
                lag.add_row(service, topic, per, f"[red]{total}[/red]" if total > 1000 else str(total))
        out.append(lag)

    models = report.get("models", {})
    err = _error("Models", models)
    if err:
        out.append(err)
    else:
        t = Table(title=f"Models (serving version {models.get('serving_version')})", title_justify="left")
        for col in ("version", "created", "reason", "parent", "click AUC", "log-loss", "examples"):
            t.add_column(col, no_wrap=col in ("version", "created"))
        for m in reversed(models.get("recent", [])):
            metrics = m.get("metrics") or {}
            mark = " *" if m.get("current") else ""
            t.add_row(
                f"v{m.get('version')}{mark}",
                _when(m.get("created_ms")),
                _fmt(m.get("reason")),
                _fmt(m.get("parent")),
                _fmt(metrics.get("click_auc")),
                _fmt(metrics.get("click_logloss")),
                _fmt(metrics.get("examples")),
            )
        out.append(t)

    consumers = report.get("consumers", {})
    err = _error("Ingestion (consumers)", consumers)
    if err:
        out.append(err)
    else:
        bot = consumers.get("bot_filter", {})
        dead = consumers.get("dead_letters", {})
        t = Table(title=f"Ingestion (group {consumers.get('group')})", title_justify="left")
        for col in ("partition", "lag", "applied offset", "outbox pending"):
            t.add_column(col)
        for name, p in consumers.get("partitions", {}).items():
            t.add_row(name, _fmt(p.get("lag")), _fmt(p.get("applied_offset")), _fmt(p.get("outbox_pending")))
        out.append(t)
        counts = Table(title="Dead letters and quarantine", title_justify="left")
        counts.add_column("kind")
        counts.add_column("reason")
        counts.add_column("count", justify="right")
        for reason, n in sorted(dead.get("counts", {}).items(), key=lambda kv: -kv[1]):
            counts.add_row(f"dead letter ({dead.get('topic')})", reason, str(n))
        for reason, n in sorted(bot.get("quarantined", {}).items(), key=lambda kv: -kv[1]):
            counts.add_row(f"quarantined ({bot.get('topic')})", reason, str(n))
        if not counts.row_count:
            counts.add_row("–", "none", "0")
        out.append(counts)
        out.append(_keyspaces(consumers.get("keyspaces", [])))
        out.append(_kv("Stream", {"stream_clock": _when(consumers.get("stream_clock_ms"))}))

    index = report.get("index", {})
    out.append(
        _error("Index", index)
        or _kv(
            "Index",
            index,
            [
                "size",
                "index_factory",
                "metric",
                "model_id",
                "snapshot_version",
                "snapshot_age_s",
                "snapshot",
                "snapshot_error",
            ],
        )
    )
    return out


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    for t in tables(report):
        console.print(t)
        console.print()
