"""The cockpit as a person sees it: headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium) on /dashboard. The test is ``tests/test_up.py`` (on the running `streamrec up`);
these are its browser helpers.

The README's screenshot is made by that test: ``DASHBOARD_SCREENSHOT_OUT=docs/dashboard.png pytest
tests/test_up.py`` (or, with a stack running, ``python -m tests.browser BASE_URL OUT.png``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.polling import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium / chromedriver not installed (Debian: apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install selenium)"
    return None


def browser(width: int = 1400, height: int = 1900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


# Points each drawn line of a chart holds: one "M"/"L" command per point of a series' path.
PLOTTED = """return [...document.querySelectorAll(arguments[0] + ' path.series')].map(
  p => (p.getAttribute('d').match(/[ML]/g) || []).length)"""

# chart -> (lines it must draw, points each of them at least): the model, traffic, click-rate and
# lag charts, and one KS line per drift-watched feature (the default five)
CHARTS = {"#c_auc": (1, 2), "#c_rate": (1, 2), "#c_ctr": (2, 2), "#c_lag": (4, 2), "#c_fdrift": (5, 2)}


def plotted(driver, chart: str) -> list[int]:
    """Points on each line drawn in ``chart`` (an svg selector)."""
    return list(driver.execute_script(PLOTTED, chart))


def open_dashboard_with_data(driver, base: str, min_points: int = 12, timeout_s: float = 300) -> None:
    """Open /dashboard and return once its history has ``min_points`` points and every chart in
    :data:`CHARTS` draws its lines with real points (the feature-distance lines need a full
    reference and latest window of labelled examples first)."""
    driver.get(f"{base}/dashboard")
    assert "Drift events" in driver.page_source
    missing: dict[str, list[int]] = {}

    def charted() -> bool:
        points = int(driver.execute_script("return Number(document.body.dataset.points || 0)"))
        missing.clear()
        for chart, (lines, each) in CHARTS.items():
            drawn = [n for n in plotted(driver, chart) if n >= each]
            if len(drawn) < lines:
                missing[chart] = plotted(driver, chart)
        return points >= min_points and not missing

    try:
        wait_for(charted, f"{min_points} history points and data on every chart", timeout_s, every_s=1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}; charts short of data (points per line drawn): {missing}") from None
    threshold = driver.execute_script("return document.querySelectorAll('#c_fdrift path.threshold').length")
    assert threshold == 1, "the KS critical value is drawn beside the feature distances"


def capture(base: str, out: Path) -> None:
    """The README screenshot: the cockpit of a running stack, once its charts hold data."""
    driver = browser()
    try:
        open_dashboard_with_data(driver, base)
        time.sleep(1)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def inject_shift_until_detected(http: httpx.Client, timeout_s: float) -> dict:
    """A shift through the public API: shoppers suddenly click the *last* item of every
    recommendation list. Returns the first drift event detected after the shift began."""
    started_ms = int(time.time() * 1000)
    deadline = time.monotonic() + timeout_s
    next_check = 0.0
    i = 0
    while time.monotonic() < deadline:
        user = f"shifted-{i % 40}"
        i += 1
        result = http.get("/recommend", params={"user_id": user, "k": 10}).json()
        if result["items"]:
            last = len(result["items"]) - 1
            click = {
                "event_id": uuid.uuid4().hex,
                "type": "click",
                "user_id": user,
                "item_id": result["items"][last]["item_id"],
                "ts": int(time.time() * 1000),
                "request_id": result["request_id"],
                "position": last,
            }
            assert http.post("/events", json=click).status_code == 202
        if time.monotonic() > next_check:
            next_check = time.monotonic() + 5
            drift = http.get("/dashboard/data").json()["drift"]
            after = [e for e in drift if e.get("detector") and e.get("detected_ms", 0) >= started_ms]
            if after:
                return after[-1]
    raise AssertionError(f"no drift detected within {timeout_s:.0f}s of the shift ({i} shifted clicks)")


def rollback_through_the_page(driver) -> None:
    """Click "Roll back", answer the confirm and the admin-key prompt (empty: keyless loopback), and
    check the page reports the served version moved back."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "rollback").click()
    driver.switch_to.alert.accept()  # confirm
    prompt = wait_for(lambda: _alert(driver), "the admin-key prompt", 10, every_s=0.2)
    prompt.send_keys("")
    prompt.accept()
    text = wait_for(lambda: driver.find_element(By.ID, "action").text, "the rollback answer", 20, every_s=0.5)
    answer = json.loads(text)
    assert answer["action"] == "rollback" and answer["serving_version"] < answer["previous_version"], answer
    # the action is drawn as a marker on the model-quality charts and listed under operator actions
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#c_auc line.marker-rollback"),
        "a rollback marker",
        20,
        every_s=1.0,
    )
    assert "rollback" in driver.find_element(By.ID, "actions").text


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None


if __name__ == "__main__":  # python -m tests.browser BASE_URL OUT.png
    capture(sys.argv[1], Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
