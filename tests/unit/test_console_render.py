"""The console's pure parts: charts (svg.py), pages (pages.py) and the feed's bounds
(feed.py). Charts are checked as XML, with hypothesis for any text a client can send."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.console import pages, svg
from mabeamd.console.feed import MAX_ANSWERS, Feed, p95
from mabeamd.observe.opstats import BUCKETS

NS = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(NS + tag) if cls in (e.get("class") or "").split()]


def test_depth_has_one_mark_per_level_with_its_cumulative_height() -> None:
    root = parse(svg.depth([[9, 2], [8, 3]], [[11, 3], [12, 3], [13, 1]]))
    levels = marks(root, "rect", "level")
    assert sorted((e.get("data-side"), e.get("data-price"), e.get("data-quantity"))
                  for e in levels) == [("ask", "11", "3"), ("ask", "12", "3"),
                                       ("ask", "13", "1"), ("bid", "8", "3"), ("bid", "9", "2")]
    height = {e.get("data-price"): float(e.get("height") or 0) for e in levels}
    assert height["8"] > height["9"]  # cumulative away from the spread
    assert height["11"] < height["12"] < height["13"]


def test_sequence_draws_one_arrow_per_message_and_groups_extra_lanes() -> None:
    lanes = ["boss", "mabeamd", *[f"a{i}" for i in range(40)]]
    msgs = [svg.Message(0.0, "boss", "mabeamd", "start", "start")]
    msgs += [svg.Message(0.001, "mabeamd", f"a{i}", "invite", "invite") for i in range(40)]
    msgs += [svg.Message(0.002 + i / 1000, f"a{i}", "mabeamd", "answer", "x") for i in range(40)]
    root = parse(svg.sequence(lanes, msgs))
    assert len(marks(root, "line", "msg")) == len(msgs)
    drawn = [g.get("data-lane") for g in marks(root, "g", "lane")]
    assert len(drawn) == svg.MAX_LANES + 3 and drawn[-1] == "others (16)"


def test_curves_mark_the_clearing_point() -> None:
    root = parse(svg.curves([[10, 2], [8, 3]], [[5, 1], [9, 4]], 9.0, 3.0))
    (point,) = marks(root, "circle", "clearing")
    assert (point.get("data-price"), point.get("data-quantity")) == ("9", "3")
    assert {p.get("class") for p in root.iter(NS + "polyline")} == {"curve demand",
                                                                   "curve supply"}


def test_empty_charts_say_so() -> None:
    for markup in (svg.depth([], []), svg.curves([], [], None, None),
                   svg.series([], "t", "x", "y"), svg.bars([], "t", "y"), svg.timeline([])):
        assert "empty" in parse(markup).get("class", "")


text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(text, text, text), max_size=12), text)
def test_any_text_makes_well_formed_svg(rows: list[tuple[str, str, str]], title: str) -> None:
    """Names, labels and titles come from agents: whatever they are, the markup parses and
    carries them as text."""
    lanes = ["boss", "mabeamd", *[r[0] for r in rows]]
    msgs = [svg.Message(float(k), r[0], r[1], "answer", r[2]) for k, r in enumerate(rows)]
    for markup in (svg.sequence(lanes, msgs, title),
                   svg.bars([(r[0], float(k)) for k, r in enumerate(rows)], title, "y"),
                   svg.series([(float(k), 1.0) for k in range(len(rows))], title, "x", "y",
                              labels=[r[2] for r in rows]),
                   svg.timeline([(float(k), k, r[1]) for k, r in enumerate(rows)], title)):
        # XML 1.0 cannot carry most control characters at all; the daemon refuses them
        # in names, and the parser is the check that nothing else breaks the markup.
        if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in markup):
            continue
        assert parse(markup).tag == NS + "svg"


def kept(**over: Any) -> dict[str, Any]:
    base = {"session": "s1", "protocol": "vote", "initiator": "boss", "state": "applied",
            "participants": ["a", "b"], "elapsed": 0.01,
            "rounds": [{"kind": "ballot", "asked": ["a", "b"], "at": 0.001,
                        "answers": [{"agent": "b", "value": {"vote": "x"}, "at": 0.004},
                                    {"agent": "a", "value": {"vote": "y"}, "at": 0.002}]}]}
    return {**base, **over}


def test_messages_in_time_order_and_answers_only_when_shown() -> None:
    lanes, msgs = pages.messages(kept(), show_answers=False)
    assert lanes == ["boss", "mabeamd", "a", "b"]
    assert [(m.kind, m.src, m.dst) for m in msgs] == [
        ("start", "boss", "mabeamd"), ("invite", "mabeamd", "a"), ("invite", "mabeamd", "b"),
        ("answer", "a", "mabeamd"), ("answer", "b", "mabeamd"), ("result", "mabeamd", "boss")]
    assert not any("vote" in m.label for m in msgs)
    _, shown = pages.messages(kept(), show_answers=True)
    assert any('"vote":"y"' in m.label for m in shown)


def test_pages_escape_what_agents_send() -> None:
    evil = "<img src=x onerror=alert(1)>"
    sections = pages.agents_page([{"id": "a", "status": "healthy", "capabilities": [evil],
                                   "metadata": {"k": evil}}], {}, "")
    html = "".join(sections.values())
    assert "<img" not in html and "&lt;img" in html
    page = pages.session_page({"session": evil, "protocol": evil, "state": "applied",
                               "params": {evil: evil}, "result": {"x": evil}},
                              None, None, False)
    assert "<img" not in "".join(page.values())


def test_the_feed_is_bounded() -> None:
    feed = Feed(keep=3, stats=dict)
    for k in range(10):
        rounds = [{"kind": "trade", "asked": ["a"], "stream": True,
                   "answers": [{"agent": "a", "value": 1, "at": 0.0}] * (MAX_ANSWERS + 5)}]
        feed.on_session_ended({"session": f"s{k}", "transcript": rounds})
        feed.on_event("session.trade", {"session": f"s{k}", "protocol": "cda",
                                        "price": 1, "quantity": 1})
    assert list(feed.sessions) == ["s7", "s8", "s9"]
    assert sum(len(r["answers"]) for r in feed.sessions["s9"]["rounds"]) == MAX_ANSWERS
    assert feed.sessions["s9"]["answers_cut"] == 5
    assert len(feed.markets) == 3


def test_p95_is_the_bound_of_the_bucket_holding_the_95th_percentile() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    # 100 observations: 90 in the first bucket, 10 in the fourth
    for k in range(len(counts)):
        counts[k] = 90 if k < 3 else 100
    assert p95(counts, 100) == BUCKETS[3]
    assert p95(counts, 0) is None


def test_agents_come_in_pages_and_the_search_spans_them() -> None:
    agents = [{"id": f"a{i:03d}", "status": "healthy", "capabilities": ["even" if i % 2 else
                                                                        "odd"]}
              for i in range(450)]
    first = "".join(pages.agents_page(agents, {}, "").values())
    assert first.count("<tr><td>a") == pages.AGENTS_PAGE and "page 1 of 3" in first
    last = "".join(pages.agents_page(agents, {}, "", page=9).values())  # past the end: last
    assert last.count("<tr><td>a") == 50 and "page 3 of 3" in last
    odd = "".join(pages.agents_page(agents, {}, "odd").values())
    assert odd.count("<tr><td>a") == 200 and "225 matching" in odd


# --- market charts from the real mechanisms' outcomes -----------------------------------------

def answers(*values: Any) -> dict[str, Any]:
    return {"rounds": [{"kind": "order", "asked": [], "answers": [
        {"agent": f"t{k}", "value": v, "at": 0.0} for k, v in enumerate(values)]}]}


def test_call_market_curves_and_clearing_from_its_outcome() -> None:
    from mabeam_markets.callmarket import CallMarket

    orders = [{"side": "buy", "price": 10, "quantity": 2},
              {"orders": [{"side": "buy", "price": 8, "quantity": 1},
                          {"side": "sell", "price": 7, "quantity": 2}]},
              {"side": "sell", "price": 9, "quantity": 2}]
    result = CallMarket().decide({"params": {}, "participants": [{"id": f"t{i}"} for i in
                                                                 range(3)],
                                  "responses": [{"agent": f"t{i}", "seq": i, "value": v}
                                                for i, v in enumerate(orders)]})
    record = {"protocol": "call_market", "result": result}
    root = parse(pages.market_charts(record, answers(*orders), None, True).split("<table")[0])
    steps = {p.get("class"): p.get("data-steps") for p in root.iter(NS + "polyline")}
    assert steps == {"curve demand": "2", "curve supply": "2"}
    (point,) = marks(root, "circle", "clearing")
    assert float(point.get("data-quantity") or 0) == result["quantity"]
    hidden = pages.market_charts(record, answers(*orders), None, False)
    assert "<svg" not in hidden and "show_answers" in hidden


def test_supply_demand_curves() -> None:
    from mabeam_markets.stepcurve import SupplyDemand

    vals = [{"demand": [[10, 2], [6, 2]]}, {"supply": [[4, 3], [8, 3]]}]
    result = SupplyDemand().decide({"params": {}, "participants": [{"id": "t0"},
                                                                   {"id": "t1"}],
                                    "responses": [{"agent": f"t{i}", "seq": i, "value": v}
                                                  for i, v in enumerate(vals)]})
    html = pages.market_charts({"protocol": "supply_demand", "result": result},
                               answers(*vals), None, True)
    root = parse(html.split("<table")[0])
    (point,) = marks(root, "circle", "clearing")
    assert float(point.get("data-price") or 0) == result["price"]


def test_english_clock_prices_per_round_and_who_stayed_in() -> None:
    from mabeam_auctions.clock import English

    result = English().decide({"params": {"start": 10, "increment": 5},
                               "participants": [{"id": a} for a in ("a", "b", "c")],
                               "values": {"a": 12, "b": 31, "c": 24}})
    html = pages.market_charts({"protocol": "english", "result": result}, None, None, False)
    root = parse(html.split("<table")[0])
    points = marks(root, "circle", "point")
    assert [float(p.get("data-y") or 0) for p in points] == \
        [h["price"] for h in result["history"]]
    assert "round 1: 10" in html and "a, b, c" in html  # all three in at the start price


def test_fisher_prices_and_allocations() -> None:
    from mabeam_markets.fisher import FisherMarket

    result = FisherMarket().decide({
        "params": {"goods": {"a": 2, "b": 1}, "utility": "cobb_douglas"},
        "participants": [{"id": "x"}, {"id": "y"}],
        "responses": [{"agent": "x", "value": {"budget": 4, "utilities": {"a": 1, "b": 3}}},
                      {"agent": "y", "value": {"budget": 6, "utilities": {"a": 1}}}]})
    html = pages.market_charts({"protocol": "fisher_market", "result": result}, None, None,
                               False)
    root = parse(html.split("<table")[0])
    assert {(b.get("data-label"), b.get("data-value")) for b in marks(root, "rect", "bar")} \
        == {("a", "3.5"), ("b", "3")}
    assert html.count("<tr><td>") == 2  # x and y's allocations
