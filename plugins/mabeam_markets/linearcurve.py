"""supply_demand with linear and piecewise-linear curves, solved exactly (fractions.Fraction).

A curve answer is an object instead of a list of steps:
  * {"intercept": A, "slope": B}: q(p) = max(0, A + B p) (demand: A > 0, B < 0; supply:
    B >= 0);
  * {"through": [[P1, Q1], [P2, Q2]]}: the same line through two points;
  * {"points": [[P, Q], ...]}: breakpoints by increasing price, linear in between, flat
    beyond both ends (demand non-increasing and ending at quantity 0, supply non-decreasing).
Inputs are binary floats, so Fraction(x) is exact: the result is the exact intersection of
the curves as given, reported as exact fractions too (`exact`).

Aggregate demand D and supply S are then continuous, so the excess E = D - S is continuous,
non-increasing and piecewise linear. The traded quantity Q = max over prices of min(D, S):
D at the zero of E (or D(0) if supply already covers demand at price 0). The prices trading
Q are those where both sides would trade at least Q, an interval [lo, hi] (a horizontal
overlap when lo < hi: a curve flat at Q); the price is its midpoint, as for steps. A side
that would trade more than Q there (a vertical overlap) is scaled pro rata - curves have no
step limits to rank buyers or sellers by. Steps and curves are not mixed in
one market: a continuous curve has no limit to rank against a step's.

Welfare is the gains from trade by the curves as reported, exact like the rest: a buyer's
curve q(p) says the t-th unit is worth sup{p : q(p) >= t} to it, so x units are worth
integral_0^x of that = integral_0^inf min(q(p), x) dp (the same area, cut the other way);
a seller's y units cost it integral_0^inf max(0, y - s(p)) dp. Both integrands are piecewise
linear in p (kinks at the breakpoints and where the curve crosses x or y), so the areas are
sums of trapezoids. When neither side is scaled (each trader takes its curve's quantity at
the price) this is the area between the aggregate inverse curves up to Q; pro-rata rationing
gives the scaled side less than that, and the figure says so.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import pairwise
from typing import Any

from mabeamd.protocol import ProtocolError, cents

Curve = tuple[list[tuple[Fraction, Fraction]], Fraction]  # breakpoints, slope past the last


def _num(x: Any, what: str) -> Fraction:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ProtocolError(f"{what} must be a finite number")
    return Fraction(x)


def _line(kind: str, a: Fraction, b: Fraction) -> Curve:
    if kind == "demand":
        if not (a > 0 and b < 0):
            raise ProtocolError("a linear demand needs intercept > 0 and slope < 0")
        return [(Fraction(0), a), (-a / b, Fraction(0))], Fraction(0)
    if b < 0:
        raise ProtocolError("a linear supply needs slope >= 0")
    if a >= 0:
        return [(Fraction(0), a)], b
    if b == 0:
        raise ProtocolError("a linear supply with slope 0 needs intercept >= 0")
    return [(Fraction(0), Fraction(0)), (-a / b, Fraction(0))], b


def curve_of(kind: str, value: Any) -> Curve:
    if not isinstance(value, dict) or \
            set(value) not in ({"intercept", "slope"}, {"through"}, {"points"}):
        raise ProtocolError(f'{kind} curve: expected {{"intercept": A, "slope": B}}, '
                            '{"through": [[P, Q], [P, Q]]} or {"points": [[P, Q], ...]}')
    if "intercept" in value:
        return _line(kind, _num(value["intercept"], "intercept"), _num(value["slope"], "slope"))
    pts = value.get("through", value.get("points"))
    if not isinstance(pts, list) or not pts or len(pts) > 10_000 or not all(
            isinstance(p, list) and len(p) == 2 for p in pts):
        raise ProtocolError(f"{kind} curve: points must be a list of [PRICE, QTY] (at most "
                            "10,000)")
    xy = [(_num(p, "price"), _num(q, "quantity")) for p, q in pts]
    if any(p < 0 or q < 0 for p, q in xy):
        raise ProtocolError(f"{kind} curve: prices and quantities must be >= 0")
    if "through" in value:
        if len(xy) != 2 or xy[0][0] == xy[1][0]:
            raise ProtocolError("through needs two points at different prices")
        (p1, q1), (p2, q2) = sorted(xy)
        b = (q2 - q1) / (p2 - p1)
        return _line(kind, q1 - b * p1, b)
    if any(xy[k][0] >= xy[k + 1][0] for k in range(len(xy) - 1)):
        raise ProtocolError(f"{kind} curve: prices must increase from point to point")
    step = -1 if kind == "demand" else 1
    if any(step * (xy[k + 1][1] - xy[k][1]) < 0 for k in range(len(xy) - 1)):
        raise ProtocolError(f"{kind} curve: quantities must "
                            f"{'not rise' if kind == 'demand' else 'not fall'} with the price")
    if kind == "demand" and xy[-1][1] != 0:
        raise ProtocolError("demand curve: the last point's quantity must be 0")
    return xy, Fraction(0)


def at(c: Curve, p: Fraction) -> Fraction:
    pts, tail = c
    if p <= pts[0][0]:
        return pts[0][1]
    for (p0, q0), (p1, q1) in pairwise(pts):
        if p <= p1:
            return q0 + (q1 - q0) * (p - p0) / (p1 - p0)
    return pts[-1][1] + tail * (p - pts[-1][0])


def equilibrium(demand: list[tuple[str, Curve]], supply: list[tuple[str, Curve]],
                ) -> dict[str, Any]:
    """demand / supply: (agent, curve) in arrival order."""
    def D(p: Fraction) -> Fraction:
        return sum((at(c, p) for _, c in demand), Fraction(0))

    def S(p: Fraction) -> Fraction:
        return sum((at(c, p) for _, c in supply), Fraction(0))

    none: dict[str, Any] = {"price": None, "quantity": 0.0, "interval": None, "buys": [],
                            "sells": [], "welfare": 0.0, "exact": None}
    if not demand or not supply:
        return none
    xs = sorted({Fraction(0)} | {p for _, c in demand + supply for p, _ in c[0]})
    e = [D(x) - S(x) for x in xs]
    if e[0] <= 0:  # supply covers demand at price 0
        q = D(xs[0])
    else:  # E is linear between breakpoints; e[-1] <= 0 (demand ends at 0)
        k = next(k for k in range(len(xs)) if e[k] <= 0)
        q = D(xs[k - 1] + e[k - 1] * (xs[k] - xs[k - 1]) / (e[k - 1] - e[k]))
    if q <= 0:
        return none
    # The prices trading Q: where both sides would trade at least Q.
    # Some breakpoint has S >= Q: the last demand breakpoint (D = 0 there) is past the
    # crossing, and S does not fall.
    k = next(k for k in range(len(xs)) if S(xs[k]) >= q)
    lo = xs[0] if k == 0 else \
        xs[k - 1] + (q - S(xs[k - 1])) * (xs[k] - xs[k - 1]) / (S(xs[k]) - S(xs[k - 1]))
    k = max(k for k in range(len(xs)) if D(xs[k]) >= q)  # D(xs[-1]) = 0 < q
    hi = xs[k] + (D(xs[k]) - q) * (xs[k + 1] - xs[k]) / (D(xs[k]) - D(xs[k + 1]))
    price = (lo + hi) / 2
    d_at, s_at = D(price), S(price)
    buys = _fill(demand, price, q / d_at)
    sells = _fill(supply, price, q / s_at)
    gains = welfare(demand, supply, q / d_at, q / s_at, price)
    return {"price": cents(float(price)), "quantity": cents(float(q)),
            "interval": [float(lo), float(hi)], "buys": buys[0], "sells": sells[0],
            "welfare": float(gains),
            "exact": {"price": str(price), "quantity": str(q),
                      "interval": [str(lo), str(hi)],
                      "residual": str(abs(buys[1] - sells[1])), "welfare": str(gains)}}


def welfare(demand: list[tuple[str, Curve]], supply: list[tuple[str, Curve]],
            d_scale: Fraction, s_scale: Fraction, price: Fraction) -> Fraction:
    """The traders' gains at `price`, each side's curve quantities scaled by min(1, scale)
    (the fills of equilibrium()): buyers' values less sellers' costs (module docstring)."""
    total = Fraction(0)
    for _, c in demand:
        x = at(c, price) * min(d_scale, Fraction(1))
        if x > 0:  # demand ends at 0 at its last breakpoint: the area is finite
            total += clipped_area(c, Fraction(0), max(price, c[0][-1][0]), x)
    for _, c in supply:
        y = at(c, price) * min(s_scale, Fraction(1))
        if y > 0:  # s(p) >= y from the price on: nothing to add past it
            total -= y * price - clipped_area(c, Fraction(0), price, y)
    return total


def clipped_area(c: Curve, lo: Fraction, hi: Fraction, cap: Fraction) -> Fraction:
    """The integral of min(q(p), cap) over [lo, hi] for the curve q: exact trapezoids
    between the breakpoints, a segment split where it crosses cap."""
    cuts = sorted({lo, hi} | {p for p, _ in c[0] if lo < p < hi})
    area = Fraction(0)
    for u, v in pairwise(cuts):
        qu, qv = at(c, u), at(c, v)
        if (qu - cap) * (qv - cap) < 0:  # crosses cap inside: split there
            w = u + (cap - qu) * (v - u) / (qv - qu)
            area += _trapezoid(u, w, min(qu, cap), cap) + _trapezoid(w, v, cap, min(qv, cap))
        else:
            area += _trapezoid(u, v, min(qu, cap), min(qv, cap))
    return area


def _trapezoid(u: Fraction, v: Fraction, a: Fraction, b: Fraction) -> Fraction:
    return (a + b) * (v - u) / 2


def _fill(side: list[tuple[str, Curve]], price: Fraction, scale: Fraction,
          ) -> tuple[list[dict[str, Any]], Fraction]:
    out, total = [], Fraction(0)
    for agent, c in side:
        x = at(c, price) * min(scale, Fraction(1))
        if x > 0:
            total += x
            out.append({"agent": agent, "quantity": cents(float(x)), "exact": str(x)})
    return out, total
