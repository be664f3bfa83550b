"""The ops cockpit page (``/dashboard``): charts of the bounded history, model versions with
promote / roll back, drift events; its data is ``/dashboard/data`` (serving/cockpit.py).

The page is serving/dashboard.html: HTML, CSS and a small script drawing inline SVG; no CDN, so
it works offline.

Grafana (docker-compose) is the full dashboard; this page works with no extra infrastructure,
including under `streamrec up`.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from streamrec import bus
from streamrec.settings import Settings


def recent_drift_events(s: Settings, limit: int = 20, timeout_ms: int = 300) -> list[dict]:
    """The last ``limit`` records of the drift topic (it is small: one record per detection)."""
    consumer = bus.make_consumer(s, group_id=None, consumer_timeout_ms=timeout_ms)
    try:
        tps = bus.all_partitions(consumer, s.topic.drift, timeout_s=2)
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


def render_dashboard(s: Settings, engine) -> str:
    """The cockpit page: static HTML + inline script drawing inline SVG from ``/dashboard/data``."""
    title = html.escape(f"streamrec cockpit · {engine.status().get('encoder', '')}")
    page = (Path(__file__).parent / "dashboard.html").read_text()
    return page.replace("__TITLE__", title).replace("__REFRESH_MS__", str(REFRESH_MS))


REFRESH_MS = 5000
