"""One vocabulary across the economic mechanisms (docs/protocols.md, "Outcome vocabulary"):
every outcome carries allocation, payments, revenue, price and welfare with the same
meaning, whatever else it reports. Random rounds of each protocol, checked against the
definitions, not against the code that builds them."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mabeam_auctions.clock import Dutch, English
from mabeam_markets.cda import ContinuousDoubleAuction

from mabeamd.protocol import Participant, terms
from mabeamd.testing import ROOT, both_ways
from tests.unit.test_typed_decide import CASES, ORDER, a_round

TERMS = ("allocation", "payments", "revenue", "price", "welfare")
# The one-round economic protocols whose rounds test_typed_decide's CASES generate.
ONE_ROUND = ("sealed_bid", "call_market", "combinatorial", "supply_demand", "fisher_market",
             "exchange_market")


def check_terms(name: str, r: dict[str, Any]) -> None:
    assert set(TERMS) <= set(r), (name, sorted(r))
    pays, alloc = r["payments"], r["allocation"]
    assert isinstance(pays, dict) and isinstance(alloc, dict)
    assert set(pays) <= set(alloc), name  # whoever pays or is paid got or gave something
    assert r["revenue"] == pytest.approx(sum(pays.values()), abs=1e-6), name
    assert r["price"] is None or (math.isfinite(r["price"]) and r["price"] >= 0), name
    assert r["welfare"] is None or math.isfinite(r["welfare"]), name
    assert list(pays) == sorted(pays) and list(alloc) == sorted(alloc), name  # stable order


@pytest.mark.parametrize("name", ONE_ROUND)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_one_round_outcomes_speak_the_vocabulary(name: str, data: st.DataObject) -> None:
    proto, params_of, answer = CASES[name]
    params = data.draw(params_of)
    n = data.draw(st.integers(1, 5))
    ps = [Participant(f"a{i}") for i in range(n)]
    kept, dropped = a_round(proto, params, data.draw(st.lists(
        st.tuples(st.integers(0, n - 1), answer), max_size=10)))
    r, _ = both_ways(proto, params, ps, kept, dropped)
    if isinstance(r, tuple):  # refused input: nothing to check
        return
    check_terms(name, r)
    if name == "sealed_bid":
        sold = r["winner"] is not None
        assert r["allocation"] == ({r["winner"]: ["item"]} if sold else {})
        assert r["revenue"] == (r["price"] if sold else 0)
        # welfare: the winner's own bid, the highest
        assert r["welfare"] == (max(b["bid"] for b in r["bids"]) if sold else None)
    elif name == "combinatorial":
        assert r["price"] is None  # bundles are priced one by one
        assert r["allocation"] == {w["agent"]: w["items"] for w in r["winners"]}
        assert r["payments"] == {w["agent"]: w["payment"] for w in r["winners"]}
        assert r["welfare"] == pytest.approx(sum(w["bid"] for w in r["winners"]))
        assert r["welfare"] == r["value"] and r["revenue"] <= r["welfare"] + 1e-9
    elif name == "supply_demand":
        assert sum(r["allocation"].values()) == pytest.approx(0, abs=1e-6)
        if r["price"] is not None:
            for a, q in r["allocation"].items():
                assert r["payments"].get(a, 0) == pytest.approx(q * r["price"], abs=1e-6)
    elif name in ("fisher_market", "exchange_market"):
        assert r["price"] is None and r["welfare"] is None  # prices per good; utils not money
        if name == "fisher_market":  # buyers pay what they spend
            assert r["payments"] == pytest.approx(r["spent"])
        else:  # each pays with its endowment's value: nothing changes hands net
            assert all(abs(v) <= 1e-6 for v in r["payments"].values()), r["payments"]
    else:  # call market: units balance, buyers pay what sellers get plus the market's take
        assert sum(r["allocation"].values()) == 0
        assert r["revenue"] >= -1e-9 and r["revenue"] == pytest.approx(r["surplus"])
        if r["quantity"]:
            fills = r["fills"]
            gains = sum((f["limit"] if f["side"] == "buy" else -f["limit"]) * f["quantity"]
                        for f in fills)
            assert r["welfare"] == pytest.approx(gains) and r["welfare"] >= -1e-9
            if params["rule"] == "k_double":
                assert r["revenue"] == 0 and r["buy_price"] == r["sell_price"] == r["price"]
        else:
            assert r["allocation"] == {} and r["price"] is None and r["welfare"] == 0
            if params["rule"] == "k_double":
                assert r["buy_price"] is None


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from("abcde"), st.integers(0, 40), min_size=1),
       st.booleans())
def test_clock_outcomes_speak_the_vocabulary(values: dict[str, int], english: bool) -> None:
    proto = English() if english else Dutch()
    params = {"item": "lot"} if english else {"item": "lot", "start": 45, "decrement": 2}
    r = proto.decide({"params": params, "participants": [{"id": a} for a in values],
                      "values": values})
    check_terms(proto.name, r)
    assert r["welfare"] is None  # a clock never learns the winner's value
    if r["winner"] is not None:
        assert r["allocation"] == {r["winner"]: ["lot"]}
        assert r["payments"] == {r["winner"]: r["price"]} and r["revenue"] == r["price"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), ORDER), max_size=12))
def test_continuous_double_auction_speaks_the_vocabulary(log: list[tuple[str, Any]]) -> None:
    r = ContinuousDoubleAuction().decide({
        "params": {"good": "kWh"}, "participants": [{"id": a} for a in "abc"],
        "orders": [{"agent": a, "value": {"order": o}} for a, o in log]})
    check_terms("continuous_double_auction", r)
    assert r["revenue"] == 0 and r["price"] is None and r["welfare"] is None
    assert sum(r["allocation"].values()) == 0
    for a, pos in r["positions"].items():  # the old keys, kept one release, agree
        assert (r["allocation"][a], r["payments"][a]) == (pos["quantity"],
                                                          pytest.approx(-pos["cash"]))


def test_the_vocabulary_table_documents_exactly_the_shared_terms() -> None:
    doc = (ROOT / "docs" / "protocols.md").read_text()
    section = doc.split("## Outcome vocabulary", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`") for line in section.splitlines()
            if line.startswith("| `")}
    assert rows == set(terms({}, {}, None, None))
