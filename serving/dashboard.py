"""A one-page HTML view for ops: what is served, model history with online metrics, drift events.

Grafana (docker-compose) is the full dashboard; this page works with no extra infrastructure,
including under `streamrec up`.
"""

from __future__ import annotations

import html
import json
import time

from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.settings import Settings


def recent_drift_events(s: Settings, limit: int = 20, timeout_ms: int = 300) -> list[dict]:
    """The last ``limit`` records of the drift topic (it is small: one record per detection)."""
    consumer = bus.make_consumer(s, group_id=None, consumer_timeout_ms=timeout_ms)
    try:
        tps = bus.all_partitions(consumer, s.topic_drift, timeout_s=2)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_ms / 1000 * 3
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=timeout_ms)
            if not batch:
                break
            for records in batch.values():
                for rec in records:
                    try:
                        out.append(json.loads(rec.value))
                    except (ValueError, TypeError):
                        out.append({"unreadable": repr(rec.value)[:200]})
        return out[-limit:]
    except Exception as e:  # the page must render even when the broker is away
        return [{"error": f"drift topic unavailable: {e!r}"}]
    finally:
        consumer.close()


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none yet</em></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:300]
    return "" if v is None else str(v)


def render_dashboard(s: Settings, engine) -> str:
    status = engine.status()
    models = ModelStore.from_settings(s).list()[-20:][::-1]
    drift = recent_drift_events(s)[::-1]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>streamrec</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}th{{background:#f4f4f4}}</style></head><body>
<h1>streamrec</h1>
<h2>Serving</h2>{_table([status])}
<h2>Drift events (newest first)</h2>{_table(drift)}
<h2>Model versions (newest first)</h2>{_table(models)}
<p>Prometheus metrics: <a href="/metrics">/metrics</a> · API docs: <a href="/docs">/docs</a></p>
</body></html>"""
