"""Rows for the web console: page loads and live updates in a real browser (headless
Chromium through selenium) with 1,000 agents registered, and the same pages fetched over
plain HTTP (the server's share). Issue 19's goals: a page loads in <= 200 ms, a change shows
within 1 s of its event.

- page load: Navigation Timing's loadEventEnd of a fresh navigation (request, HTML, the
  script and stylesheet, layout), `loads` times per page;
- live update: an agent registers (the event); the time until the overview's agents
  section, swapped in by the live stream, says so: the bench's wall clock before the
  register against the browser's Date.now() at the swap (one machine, one clock).
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from typing import Any

from benchkit import Row
from benchkit.econ_rows import shared_bidders
from benchkit.session_rows import with_agents
from benchkit.stats import pick_median_rep, summary

PAGES = ("/console/", "/console/agents", "/console/sessions", "/console/markets",
         "/console/variables", "SESSION")  # SESSION: a sealed-bid auction's, 1,000 bidders


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(shutil.which("chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=opts)


def missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (scripts/setup --bench)"
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "no chromium/chromedriver (apt-get install chromium chromium-driver)"
    return None


def rows(agents: int, loads: int, updates: int, reps: int) -> list[Row]:
    from mabeamd.testing import free_port

    port = free_port()
    extra = f'[metrics]\nlisten = "127.0.0.1:{port}"\n[console]\nenabled = true\n'
    why = missing()

    def measure(endpoint: str, ids: list[str]) -> dict[str, Any]:
        from mabeamd.client import Client

        base = f"http://127.0.0.1:{port}"
        with Client(endpoint, heartbeat=False, timeout=60) as c:
            c.register("console-auctioneer")
            c.create_var("console-auctioneer", "bench/console", None)
            auction = c.start_session("console-auctioneer", "sealed_bid", participants=ids,
                                      variables=["bench/console"], deadline=30,
                                      params={"item": 1})
        session_page = f"/console/sessions/{auction['session']}"
        http: dict[str, list[list[float]]] = {p: [] for p in PAGES}
        for page in PAGES:
            for _ in range(reps):
                lat = []
                for _ in range(loads):
                    t0 = time.perf_counter()
                    url = base + (session_page if page == "SESSION" else page)
                    with urllib.request.urlopen(url, timeout=30) as r:
                        r.read()
                    lat.append((time.perf_counter() - t0) * 1e3)
                http[page].append(lat)
        out: dict[str, Any] = {"http": http}
        if why is not None:
            return out
        driver = _browser()
        try:
            browser: dict[str, list[list[float]]] = {p: [] for p in PAGES}
            for page in PAGES:
                url = base + (session_page if page == "SESSION" else page)
                driver.get(url)  # warm: the static files cached as a user's are
                for _ in range(reps):
                    lat = []
                    for _ in range(loads):
                        driver.get(url)
                        lat.append(float(driver.execute_script(
                            "return performance.getEntriesByType('navigation')[0]"
                            ".loadEventEnd")))
                    browser[page].append(lat)
            out["browser"] = browser
            live: list[list[float]] = []
            driver.get(base + "/console/")
            deadline = time.monotonic() + 30
            while driver.execute_script(
                    "return document.getElementById('live-state').textContent") != "live":
                if time.monotonic() > deadline:
                    raise RuntimeError("the console's live stream did not connect")
                time.sleep(0.02)
            with Client(endpoint, heartbeat=False, timeout=30) as c:
                n = len(ids)
                for rep in range(reps):
                    lat = []
                    for k in range(updates):
                        n += 1
                        t0 = time.time() * 1e3
                        c.register(f"late-{rep}-{k}")
                        deadline = time.monotonic() + 10
                        while True:
                            got = driver.execute_script(
                                "const s = document.querySelector('section[data-live=\"agents\"]');"
                                "const f = s.querySelector('[data-field=\"agents\"]');"
                                "return [f ? f.textContent : '', Number(s.dataset.updated || 0)]")
                            if got[0] == str(n):
                                lat.append(got[1] - t0)
                                break
                            if time.monotonic() > deadline:
                                raise RuntimeError(f"update {k}: the overview never showed {n}")
                            time.sleep(0.005)
                    live.append(lat)
            out["live"] = live
        finally:
            driver.quit()
        return out

    got = with_agents([(shared_bidders, "console-bidder-", agents)], measure,
                      f"max_agents = {agents + 1000}", extra)
    result: list[Row] = []
    for page in PAGES:
        shown = "a sealed-bid session's page (1 round, every bidder)" if page == "SESSION" \
            else page
        for kind, unit_note in (("browser", "Navigation Timing loadEventEnd in headless "
                                 "Chromium: request, HTML, script, stylesheet, layout"),
                                ("http", "the HTML over plain HTTP (urllib): the server's "
                                 "share")):
            name = f"console page load {shown} ({kind}), {agents} agents"
            if kind not in got:
                result.append(Row(name, "ms", goal="<= 200", status="not run", note=str(why)))
                continue
            runs = got[kind][page]
            i, spread = pick_median_rep(runs)
            p50, p95, p99 = summary(runs[i])
            result.append(Row(name, "ms", goal="<= 200" if kind == "browser" else "-",
                              p50=p50, p95=p95, p99=p99, spread=spread,
                              samples=len(runs[i]), reps=len(runs), note=unit_note))
    name = f"console live update, agent registers -> overview shows it, {agents} agents"
    if "live" not in got:
        result.append(Row(name, "ms", goal="<= 1000", status="not run", note=str(why)))
    else:
        i, spread = pick_median_rep(got["live"])
        p50, p95, p99 = summary(got["live"][i])
        result.append(Row(name, "ms", goal="<= 1000", p50=p50, p95=p95, p99=p99,
                          spread=spread, samples=len(got["live"][i]), reps=len(got["live"]),
                          note="event -> the live stream's section swapped in the browser; "
                               "the stream renders at most every 0.2 s (feed.WAKE_EVERY)"))
    return result
