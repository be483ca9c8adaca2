"""supply_demand with linear and piecewise-linear curves against an independent exact scan:
each curve evaluated from its definition here (not by the plugin), min(D, S) scanned over a
rational grid; the answer's price must reach the best traded quantity exactly."""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mabeam_markets.stepcurve import SupplyDemand

from mabeamd.protocol import ProtocolError

SD = SupplyDemand()


def q_of(kind: str, c: dict[str, Any], p: Fraction) -> Fraction:
    """The curve's quantity at price p, straight from the documented definition."""
    if "intercept" in c or "through" in c:
        if "through" in c:
            (p1, q1), (p2, q2) = sorted(c["through"])
            b = Fraction(q2 - q1) / (p2 - p1)
            a = q1 - b * p1
        else:
            a, b = Fraction(c["intercept"]), Fraction(c["slope"])
        return max(Fraction(0), a + b * p)
    pts = [(Fraction(x), Fraction(y)) for x, y in c["points"]]
    if p <= pts[0][0]:
        return pts[0][1]
    if p >= pts[-1][0]:
        return pts[-1][1]
    for (x0, y0), (x1, y1) in pairwise(pts):
        if x0 <= p <= x1:
            return y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    raise AssertionError


def points(kind: str) -> Any:
    """A monotone piecewise-linear curve on integer points."""
    def build(xs: list[int], ys: list[int]) -> dict[str, Any]:
        xs = sorted(set(xs))
        ys = sorted(ys[:len(xs)], reverse=kind == "demand")
        if kind == "demand":
            ys[-1] = 0
        return {"points": [[x, y] for x, y in zip(xs, ys, strict=False)]}
    return st.builds(build, st.lists(st.integers(0, 30), min_size=2, max_size=5),
                     st.lists(st.integers(0, 20), min_size=5, max_size=5))


def line(kind: str) -> Any:
    if kind == "demand":
        return st.builds(lambda a, b: {"intercept": a, "slope": -b}, st.integers(1, 40),
                         st.integers(1, 5))
    return st.one_of(
        st.builds(lambda a, b: {"intercept": a, "slope": b}, st.integers(-20, 20),
                  st.integers(1, 5)),
        st.builds(lambda p, q, d: {"through": [[p, q], [p + d, q + d]]}, st.integers(0, 9),
                  st.integers(0, 9), st.integers(1, 4)))


def curve(kind: str) -> Any:
    return st.one_of(points(kind), line(kind))


@settings(max_examples=60, deadline=None)
@given(st.lists(curve("demand"), min_size=1, max_size=3),
       st.lists(curve("supply"), min_size=1, max_size=3))
def test_curves_meet_at_the_best_quantity(demand: list[Any], supply: list[Any]) -> None:
    rs = [{"agent": f"d{k}", "seq": k, "value": {"demand": c}} for k, c in enumerate(demand)]
    rs += [{"agent": f"s{k}", "seq": 10 + k, "value": {"supply": c}}
           for k, c in enumerate(supply)]
    r = SD.decide({"params": {}, "participants": [{"id": x["agent"]} for x in rs],
                   "responses": rs})

    def both(p: Fraction) -> tuple[Fraction, Fraction]:
        return (sum((q_of("demand", c, p) for c in demand), Fraction(0)),
                sum((q_of("supply", c, p) for c in supply), Fraction(0)))
    grid = [Fraction(k, 8) for k in range(0, 8 * 60)]
    best = max(min(both(p)) for p in grid)
    if r["price"] is None:
        assert best == 0
        return
    ex = r["exact"]
    price, q = Fraction(ex["price"]), Fraction(ex["quantity"])
    lo, hi = (Fraction(x) for x in ex["interval"])
    assert q >= best and min(both(price)) == q  # no grid price trades more; this one does
    assert min(both(lo)) == q == min(both(hi)) and price == (lo + hi) / 2
    eps = Fraction(1, 10**6)
    if lo > 0:
        assert min(both(lo - eps)) < q
    assert min(both(hi + eps)) < q
    assert Fraction(ex["residual"]) == 0
    bought = sum(Fraction(b["exact"]) for b in r["buys"])
    sold = sum(Fraction(s["exact"]) for s in r["sells"])
    assert bought == sold == q
    d, s = both(price)
    for b, c in zip(r["buys"], [c for c in demand if q_of("demand", c, price) > 0],
                    strict=True):  # the short or balanced side gets its curve quantity
        assert Fraction(b["exact"]) == q_of("demand", c, price) * min(1, q / d)
    for x, c in zip(r["sells"], [c for c in supply if q_of("supply", c, price) > 0],
                    strict=True):
        assert Fraction(x["exact"]) == q_of("supply", c, price) * min(1, q / s)
    # Welfare: each buyer's value of its units (the area under its curve's inverse, here
    # as the integral over prices of min(q(p), x)) less each seller's cost, by a plain
    # trapezoid rule on a fine grid; exact where the grid meets every kink, close elsewhere.
    grid_w = 0.0
    h = Fraction(1, 64)
    ps = [h * k for k in range(64 * 80 + 1)]
    for fills, kind, cs, sign in ((r["buys"], "demand", demand, 1),
                                  (r["sells"], "supply", supply, -1)):
        traders = [c for c in cs if q_of(kind, c, price) > 0]
        for f, c in zip(fills, traders, strict=True):
            x = Fraction(f["exact"])
            if kind == "demand":
                ys = [float(min(q_of(kind, c, p), x)) for p in ps]
            else:
                ys = [float(max(Fraction(0), x - q_of(kind, c, p))) for p in ps]
            grid_w += sign * sum((a + b) / 2 for a, b in pairwise(ys)) / 64
    assert r["welfare"] == pytest.approx(grid_w, abs=0.05) and r["welfare"] >= 0
    assert r["welfare"] == pytest.approx(float(Fraction(ex["welfare"])), abs=1e-9)  # money


def test_a_worked_example_and_the_flat_overlap() -> None:
    r = SD.decide({"params": {}, "participants": [{"id": "u"}, {"id": "g"}], "responses": [
        {"agent": "u", "value": {"demand": {"points": [[0, 4], [2, 4], [6, 2], [8, 0]]}}},
        {"agent": "g", "value": {"supply": {"points": [[1, 0], [3, 2], [7, 2], [9, 5]]}}}]})
    # D: 4 up to 2, then down to 2 at 6. S: 0 at 1, up to 2 at 3, flat to 7. They meet at
    # 6 with Q = 2, but supply reaches 2 already at 3: prices [3, 6] trade 2, midpoint 9/2,
    # where demand would take 13/4 and is scaled to 2.
    assert r["exact"] == {"price": "9/2", "quantity": "2", "interval": ["3", "6"],
                          "residual": "0", "welfare": "10"}
    # u's t-th unit is worth 8 - t (demand falls from 2 to 0 over [6, 8]): 2 units, 14;
    # g's t-th costs 1 + t (supply rises from 0 to 2 over [1, 3]): 2 units, 4.
    assert r["welfare"] == 10.0
    assert r["buys"] == [{"agent": "u", "quantity": 2.0, "exact": "2"}]
    assert r["sells"] == [{"agent": "g", "quantity": 2.0, "exact": "2"}]


@pytest.mark.parametrize(("value", "message"), [
    ({"demand": {"intercept": 5, "slope": 1}}, "slope < 0"),
    ({"supply": {"intercept": 5, "slope": -1}}, "slope >= 0"),
    ({"demand": {"points": [[0, 3], [2, 1]]}}, "must be 0"),
    ({"demand": {"points": [[0, 1], [2, 3], [3, 0]]}}, "not rise"),
    ({"supply": {"points": [[2, 1], [1, 3]]}}, "increase"),
    ({"supply": {"through": [[1, 1], [1, 2]]}}, "different prices"),
    ({"supply": {"slope": 1}}, "expected"),
    ({"supply": {"points": [[1, float("inf")]]}}, "finite"),
])
def test_bad_curves_are_refused(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        SD.check_response("curve", value, {})


def test_steps_and_curves_are_not_mixed() -> None:
    with pytest.raises(ProtocolError, match="not both"):
        SD.decide({"params": {}, "participants": [{"id": "a"}, {"id": "b"}], "responses": [
            {"agent": "a", "value": {"demand": [[5, 1]]}},
            {"agent": "b", "value": {"supply": {"intercept": 0, "slope": 1}}}]})
