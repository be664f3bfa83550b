"""`streamrec up`, the README's main command, as a user runs it: embedded broker and Redis, demo
catalog indexed, demo shoppers replayed through the API; the ops cockpit in a real browser (charts,
a drift injected through the API, a rollback through the page's button); SIGTERM drains
everything, exit 0. One `up` serves the whole story, as one test: starting it is half the cost."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from launcher.embedded import free_port
from tests.browser import (
    browser,
    inject_shift_until_detected,
    missing,
    open_dashboard_with_data,
    rollback_through_the_page,
)
from tests.polling import wait_for
from tests.prometheus_text import sample_sum

pytestmark = pytest.mark.slow
REFRESH_S = 5  # serving/dashboard.py REFRESH_MS


CATALOG_LIMIT = 150
# The banner as `up` prints it: a line of its own. A crash traceback may quote the source line that
# prints it, so a substring match would take a crash for success.
BANNER = re.compile(r"^streamrec is up$", re.MULTILINE)


def _wait_until_up(proc: subprocess.Popen, log_path, base: str, timeout_s: float) -> None:
    """Return once serving is ready with the demo catalog indexed and `up` printed its banner; fail
    at once, with the log tail, if `up` exits first (instead of a misleading connection error later)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    with httpx.Client(base_url=base, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"`streamrec up` exited with {proc.returncode} before it was up:\n" + log_path.read_text()[-3000:]
                )
            try:
                r = http.get("/readyz")
                last = (r.status_code, r.text[:200])
                ready = r.status_code == 200 and r.json().get("index_items", 0) >= CATALOG_LIMIT
            except httpx.HTTPError as e:  # serving not listening yet
                last, ready = e, False
            if ready and BANNER.search(log_path.read_text()):
                return
            time.sleep(1)
    pytest.fail(
        f"`streamrec up` not up within {timeout_s:.0f}s (last /readyz: {last!r}):\n" + log_path.read_text()[-3000:]
    )


def up_env(tmp_path, port: int, **extra: str) -> dict[str, str]:
    """The environment `streamrec up` runs with in these tests: no STREAMREC_* of the caller's but
    where the data lies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_") or k == "STREAMREC_DATA_DIR"}
    env.update(
        STREAMREC_HTTP_PORT=str(port),
        STREAMREC_STATE_DIR=str(tmp_path / "state"),
        STREAMREC_LEARNER_PUBLISH_EVERY_S="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_up(tmp_path, env: dict[str, str]) -> tuple[subprocess.Popen, Path, str]:
    """`streamrec up` with demo shoppers and the demo catalog cut to CATALOG_LIMIT, its output in
    ``up.log``: (process, log path, base URL). The caller waits for it and stops it."""
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "up", "--rate", "30", "--catalog-limit", str(CATALOG_LIMIT)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path, f"http://127.0.0.1:{env['STREAMREC_HTTP_PORT']}"


@dataclass
class Up:
    proc: subprocess.Popen
    log_path: Path
    base: str
    env: dict[str, str]
    tmp_path: Path


@contextmanager
def running_up(tmp_path: Path) -> Iterator[Up]:
    env = up_env(
        tmp_path,
        free_port(),
        STREAMREC_COCKPIT_SAMPLE_S="2",  # history points every 2 s, so the cockpit's charts fill quickly
        STREAMREC_DRIFT_WARMUP="100",  # detectors armed after 100 labelled examples, not 1000
        STREAMREC_DRIFT_FEATURE_WINDOW="100",  # the feature-distance chart draws after 200, not 1000
        STREAMREC_LEARNER_LABEL_WINDOW_S="5",  # an impression is a labelled example after 5 s, not 30
    )
    proc, log_path, base = start_up(tmp_path, env)
    try:
        _wait_until_up(proc, log_path, base, timeout_s=300)
        yield Up(proc, log_path, base, env, tmp_path)
    finally:
        if proc.poll() is None:  # the drain check stops it; a failure before it must not leave it running
            proc.send_signal(signal.SIGTERM)  # `up` stops its services; a SIGKILL would orphan them
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serves_demo_traffic(up: Up) -> None:
    output = up.log_path.read_text()
    assert "memory only" in output  # the user is told the embedded broker keeps nothing
    assert "accepted from loopback clients only" in " ".join(output.split())
    with httpx.Client(base_url=up.base, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        assert http.get("/search", params={"q": "ink cartridge"}).json()["items"]

        def accepted() -> float:
            return sample_sum(http.get("/metrics").text, "streamrec_serving_published_total", outcome="accepted")

        first = accepted()
        wait_for(lambda: accepted() > first, "demo shoppers sending events", timeout_s=30, every_s=0.5)
        assert "Drift events" in http.get("/dashboard").text
    # read-only commands in another shell find the running embedded stack by themselves
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", "--json"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["serving"]["index_items"] >= CATALOG_LIMIT
    assert report["models"]["serving_version"] >= 1
    assert set(report["lag"]) == {"consumers", "index-updater", "learner", "serving (vector follower)"}
    models = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "model", "list"], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert models.returncode == 0 and "*" in models.stdout, models.stderr


def dashboard_in_a_real_browser_shows_live_charts_and_rolls_back(up: Up) -> None:
    """Headless Chromium opens /dashboard, waits until the charts hold data from demo traffic, saves
    a screenshot, injects a shift through the public API (shoppers click the last recommended item)
    until the learner detects drift, sees it as a marker and a row, and rolls back with the button."""
    from selenium.webdriver.common.by import By

    tmp_path = up.tmp_path
    driver = browser()
    try:
        open_dashboard_with_data(driver, up.base)
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        with httpx.Client(base_url=up.base, timeout=10) as http:
            wait_for(
                lambda: len(http.get("/dashboard/data").json()["models"]) >= 2,
                "two model versions",
                120,
                every_s=1.0,
            )
            detected = inject_shift_until_detected(http, timeout_s=240)
        # the detection appears on the page as a marker on the model-quality charts and as a row
        wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#c_auc line.marker-drift"),
            "a drift marker",
            30,
            every_s=1.0,
        )
        shown = lambda: detected["detector"] in driver.find_element(By.ID, "drift").text  # noqa: E731
        wait_for(shown, f"{detected['detector']} in the drift-event table", 30, every_s=1.0)  # refreshes every 5 s
        driver.save_screenshot(str(tmp_path / "dashboard-drift.png"))
        rollback_through_the_page(driver)
        after = tmp_path / "dashboard-after-rollback.png"
        time.sleep(REFRESH_S)  # one more refresh, so the page shows the action
        driver.save_screenshot(str(after))
        if os.environ.get("DASHBOARD_SCREENSHOT_OUT"):  # how docs/dashboard.png is made
            shutil.copyfile(after, os.environ["DASHBOARD_SCREENSHOT_OUT"])
    finally:
        driver.quit()


def sigterm_drains_every_service_and_exits_0(up: Up) -> None:
    up.proc.send_signal(signal.SIGTERM)
    code = up.proc.wait(90)
    output = up.log_path.read_text()
    assert code == 0, output[-3000:]
    assert "stopped." in output
    for service in ("consumers", "index-updater", "learner", "serving"):
        assert re.search(rf"{service} stopped \(exit 0\)", output), f"{service} did not drain cleanly"


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_up_serves_the_demo_shows_the_cockpit_in_a_browser_and_drains_on_sigterm(tmp_path):
    with running_up(tmp_path) as up:
        serves_demo_traffic(up)
        dashboard_in_a_real_browser_shows_live_charts_and_rolls_back(up)
        sigterm_drains_every_service_and_exits_0(up)
