"""The web console in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) through every page of a daemon that ran a vote, a
sealed-bid auction and a continuous double auction with live SDK agents. Asserts on the
DOM and saves a screenshot of each page ($MABEAM_ARTEFACTS, default .artefacts/console).

Without the browser the tests are skipped, except where MABEAM_REQUIRE_BROWSER=1 (.ci/run
sets it after installing the browser): there they fail."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from mabeamd.client import Client
from mabeamd.testing import Daemon
from tests.e2e.console_scenario import console_daemon, hold_streams, run_scenario

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTEFACTS = Path(os.environ.get("MABEAM_ARTEFACTS")
                 or Path(__file__).resolve().parents[2] / ".artefacts") / "console"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    if not CHROMIUM or not DRIVER:
        return "no chromium and chromedriver (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    why = _missing()
    if why is not None:
        if os.environ.get("MABEAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MABEAM_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(pred: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = pred()
        except Exception:  # an element mid-swap: look again
            out = None
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shot(driver: Any, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(800, int(height) + 40), 4000))
    driver.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def test_every_page_in_a_real_browser(make_daemon: Callable[..., Daemon], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    css = By.CSS_SELECTOR
    d, port = console_daemon(make_daemon)
    with run_scenario(d, port) as s:
        base = s.base
        browser.get(base + "/console/")
        wait(lambda: browser.find_element(By.ID, "live-state").text == "live",
             "the live stream to connect")
        assert len(browser.find_elements(css, "table.workers tbody tr")) == 2
        count = browser.find_element(css, '[data-field="agents"]')
        assert count.text == "9"
        shot(browser, "overview")

        # Live: an agent registers, and the page shows it without a reload.
        browser.execute_script("window.notReloaded = true")
        with Client(d.agent_endpoint) as c:
            c.register("newcomer", capabilities=["console-late"])
            wait(lambda: browser.find_element(css, '[data-field="agents"]').text == "10",
                 "the overview to count the new agent")
        assert browser.execute_script("return window.notReloaded") is True

        browser.get(base + "/console/agents")
        box = browser.find_element(By.ID, "agent-search")
        box.send_keys("bidder")
        wait(lambda: [r for r in browser.find_elements(css, "table.agents tbody tr")
                      if r.is_displayed()].__len__() == 3, "the search to filter")
        assert browser.find_element(css, '[data-field="count"]').text == "3"
        shot(browser, "agents")

        browser.get(base + "/console/sessions")
        rows = browser.find_elements(css, "table.sessions tbody tr")
        assert len(rows) == 3
        shot(browser, "sessions")

        vote = s.sessions["vote"]["session"]
        browser.get(f"{base}/console/sessions/{vote}")
        arrows = browser.find_elements(css, "svg.sequence line.msg")
        kinds = sorted(a.get_attribute("data-kind") for a in arrows)
        assert kinds == sorted(["start", *["invite"] * 3, *["answer"] * 3, "result"])
        times = [float(a.get_attribute("data-at")) for a in arrows]
        assert times == sorted(times)  # drawn in time order
        lanes = {g.get_attribute("data-lane") for g in
                 browser.find_elements(css, "svg.sequence g.lane")}
        assert lanes == {"boss", "mabeamd", "voter-0", "voter-1", "voter-2"}
        shot(browser, "session-vote")

        bids = s.sessions["sealed_bid"]["session"]
        browser.get(f"{base}/console/sessions/{bids}")
        answers = browser.find_elements(css, "table.answers tbody tr")
        assert len(answers) == 3  # shown after the close ([console] show_answers)
        shot(browser, "session-sealed-bid")

        cda = s.sessions["cda"]["session"]
        browser.get(f"{base}/console/sessions/{cda}")
        levels = sorted((e.get_attribute("data-side"), e.get_attribute("data-price"),
                         e.get_attribute("data-quantity"))
                        for e in browser.find_elements(css, "svg.depth rect.level"))
        assert levels == [("ask", "11", "3"), ("ask", "12", "3"), ("bid", "8", "3"),
                          ("bid", "9", "2")]
        assert len(browser.find_elements(css, "svg.trades circle.point")) == 2
        shot(browser, "session-cda")

        browser.get(base + "/console/markets")
        assert browser.find_elements(css, "article.market svg.depth")
        shot(browser, "markets")

        browser.get(base + "/console/variables?prefix=" + quote("{con}"))
        assert len(browser.find_elements(css, "table.variables tbody tr")) == 3
        shot(browser, "variables")
        browser.get(base + "/console/variables/" + quote("{con}colour", safe=""))
        assert len(browser.find_elements(css, "svg.timeline circle.version")) == 2
        shot(browser, "variable")
        # No script error on any page (the console has no inline code: CSP would block it).
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors

        # Every live stream taken: the page is told 503, says so, and goes live by itself
        # once a place is free (a browser's EventSource gives up on a 503 for good).
        browser.get("about:blank")
        held = hold_streams(port, 8)
        try:
            browser.get(base + "/console/sessions")
            wait(lambda: browser.find_element(By.ID, "live-state").text.startswith("busy"),
                 "the page to say every stream is taken")
        finally:
            for sock in held:
                sock.close()
        wait(lambda: browser.find_element(By.ID, "live-state").text == "live",
             "the page to go live once a place is free")
