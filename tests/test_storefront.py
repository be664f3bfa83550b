"""The storefront demo (GET /shop) as a shopper uses it, in headless Chromium: autocomplete from
the stream, a search with facets, a brand chosen in the facet column, a sort, the next page, and a
click posted back with the search's request_id and the product's position."""

from __future__ import annotations

import httpx
import pytest

from serving.merchandising import RuleFollower, RuleStore
from serving.suggest import SuggestFollower
from streamrec import bus
from streamrec.features import ReplayFeatures
from streamrec.schemas import Event
from streamrec.store import connect
from streamrec.vector_index import ItemMeta
from tests.browser import browser, missing
from tests.live_app import build_app, serve
from tests.polling import wait_for
from tests.topics import events_on_topic

BRANDS = ["Acme", "Bolt"]


def _catalogue() -> dict[str, ItemMeta]:
    out = {}
    for k in range(24):
        kind = ["copper pipe", "copper elbow", "copper fitting"][k % 3]
        out[f"c{k}"] = ItemMeta(
            title=f"{kind} {k} in.", category="Plumbing > Copper", brand=BRANDS[k % 2], price=float(5 + k)
        )
    out["hose"] = ItemMeta(title="garden hose 50 ft.", category="Garden", brand="Bolt", price=20.0)
    return out


@pytest.fixture
def shop(kafka_broker, redis_server, tmp_path):
    from tests.conftest import isolated_settings

    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state")
    bus.ensure_topics(s)
    searches = ReplayFeatures({})
    for k, q in enumerate(["copper pipe"] * 3 + ["copper elbow"] * 2 + ["garden hose"]):
        searches.observe(
            Event(event_id=f"e{k}", type="click", user_id=f"u{k}", item_id="c0", ts=1_700_000_000_000, query=q)
        )
    follower = SuggestFollower(searches, cap=100)
    follower.poll()
    producer = bus.make_producer(s, max_block_ms=5_000)
    with serve(build_app(s, producer, items=_catalogue(), suggestions=follower)) as url:
        yield s, url
    producer.close(timeout=5)


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_a_shopper_searches_filters_sorts_pages_and_clicks(shop):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    s, url = shop
    driver = browser(1200, 1000)
    try:
        driver.get(f"{url}/shop")
        box = driver.find_element(By.ID, "q")

        def texts(selector: str) -> list[str]:  # read in one script: the page re-renders between reads
            return driver.execute_script(f"return [...document.querySelectorAll('{selector}')].map(e => e.textContent)")

        def titles() -> list[str]:
            return texts("#list .title")

        def click(selector: str) -> None:
            driver.execute_script(f"document.querySelector('{selector}').click()")

        box.send_keys("cop")
        assert wait_for(lambda: texts("#suggestions li"))
        assert texts("#suggestions li") == ["copper pipe", "copper elbow"]
        driver.find_elements(By.CSS_SELECTOR, "#suggestions li")[0].click()  # searches "copper pipe"
        assert wait_for(lambda: titles() and all(t.startswith("copper pipe") for t in titles()[:4]))
        box.clear()
        box.send_keys("copper" + Keys.ENTER)  # all 24 copper products: more than a page
        assert wait_for(lambda: "“copper”" in driver.find_element(By.ID, "summary").text and len(titles()) == 10)
        brand_values = set(
            driver.execute_script(
                "return [...document.querySelectorAll('label[data-facet=brand]')].map(e => e.dataset.value)"
            )
        )
        assert set(BRANDS) <= brand_values
        click("label[data-facet=brand][data-value=Acme] input")
        assert wait_for(lambda: texts("#list .meta") and all(m.startswith("Acme · ") for m in texts("#list .meta")))

        driver.find_element(By.CSS_SELECTOR, "#sort option[value=price_asc]").click()

        def prices() -> list[float]:
            return [float(part[1:]) for m in texts("#list .meta") for part in m.split(" · ") if part.startswith("$")]

        assert wait_for(lambda: prices() and prices() == sorted(prices()))
        first_page, first_prices = titles(), prices()
        driver.find_element(By.XPATH, "//div[@id='pager']/button[text()='Next']").click()
        assert wait_for(lambda: titles() and titles() != first_page)
        assert not set(titles()) & set(first_page)  # the next page, not the same products again
        assert prices() == sorted(prices()) and min(prices()) >= max(first_prices)

        box.clear()
        box.send_keys("gardn h")
        assert wait_for(lambda: "garden hose" in driver.find_element(By.ID, "suggestions").text)
        assert "garden h" in driver.find_element(By.ID, "corrected").text
        click("#suggestions li")  # searches "garden hose", still within the brand chosen
        assert wait_for(lambda: "“garden hose”" in driver.find_element(By.ID, "summary").text)
        assert "garden hose 50 ft." not in titles()  # a Bolt product: Acme is still chosen
        click("label[data-facet=brand][data-value=Acme] input")
        assert wait_for(lambda: titles()[:1] == ["garden hose 50 ft."])
    finally:
        driver.quit()
    driver = browser(1200, 1000)
    try:
        driver.get(f"{url}/shop")
        driver.find_element(By.ID, "q").send_keys("copper elbow" + Keys.ENTER)
        assert wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#list .title"))
        driver.find_elements(By.CSS_SELECTOR, "#list .title")[1].click()
        events = events_on_topic(s, lambda seen: any(e.type == "click" for e in seen), "the click")
    finally:
        driver.quit()
    [click] = [e for e in events if e.type == "click"]
    assert click.query == "copper elbow" and click.position == 1 and click.request_id


@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_a_merchandiser_pins_a_product_from_the_cockpit_and_removes_the_rule(kafka_broker, redis_server, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.browser import _alert
    from tests.conftest import isolated_settings

    s = isolated_settings(kafka_broker, redis_server, tmp_path / "state")
    follower = RuleFollower(RuleStore(connect(s), s.redis.prefix), poll_s=0.1)
    follower.start()
    producer = bus.make_producer(s, max_block_ms=5_000)
    driver = browser(1400, 2400)
    try:
        with (
            serve(build_app(s, producer, items=_catalogue(), rules=follower)) as url,
            httpx.Client(base_url=url) as http,
        ):

            def top(q: str) -> dict:
                return http.get("/search", params={"q": q, "k": 3, "impression": "false"}).json()["items"][0]

            assert top("copper")["item_id"] != "hose"
            driver.get(f"{url}/dashboard")
            form = wait_for(lambda: driver.find_element(By.ID, "rule_form"))
            for name, value in {"name": "Hose week", "query": "Copper", "items": "hose"}.items():
                form.find_element(By.NAME, name).send_keys(value)
            driver.find_element(By.ID, "rule_save").click()
            prompt = wait_for(lambda: _alert(driver), "the admin-key prompt", 10, every_s=0.2)
            prompt.accept()  # empty: keyless loopback
            assert wait_for(lambda: "Hose week" in driver.find_element(By.ID, "rules").text, timeout_s=20)
            pinned = wait_for(lambda: (hit := top("copper"))["item_id"] == "hose" and hit, timeout_s=5)
            assert "pinned by rule 'Hose week'" in pinned["reasons"]
            driver.find_element(By.CSS_SELECTOR, "#rules button.rule_delete").click()
            driver.switch_to.alert.accept()  # confirm
            assert wait_for(lambda: "Hose week" not in driver.find_element(By.ID, "rules").text, timeout_s=20)
            assert wait_for(lambda: top("copper")["item_id"] != "hose", timeout_s=5)
    finally:
        driver.quit()
        follower.stop()
        producer.close(timeout=5)
