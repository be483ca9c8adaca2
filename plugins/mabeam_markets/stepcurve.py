"""Single-good market equilibrium from supply and demand step curves.

Round `curve`: each participant answers {"demand": [[PRICE, QTY], ...]} and/or
{"supply": [[PRICE, QTY], ...]}. A demand step [p, q] means "I buy q more units at any price
up to p"; a supply step "I sell q more units at any price from p". Quantities are divisible.

Aggregate demand D(x) is the sum of demand steps with limit >= x, supply S(x) the sum of
supply steps with limit <= x. The traded quantity Q is the largest min(D(x), S(x)) over all
prices; the prices achieving it form an interval [lo, hi] whose ends are step limits.
Flat segments:
  * a horizontal overlap (a range of clearing prices) → the price is its midpoint,
    (lo + hi) / 2;
  * a vertical overlap (a price where either side could trade more) → the quantity is Q,
    the most both sides accept, and the long side is rationed: steps with better limits
    first (higher for demand, lower for supply), then the earlier answer, then agent id,
    then position in the answer.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from mabeam_markets.common import trade_terms
from mabeam_markets.linearcurve import curve_of
from mabeam_markets.linearcurve import equilibrium as linear_equilibrium
from mabeamd.protocol import (
    OneRound,
    Outcome,
    Participant,
    ProtocolError,
    Response,
    Session,
    Trade,
    by_arrival,
    cents,
    only,
    participants_of,
    responses_of,
    write_all,
)

Step = tuple[float, int, str, int, float]  # (sort key, seq, agent, index, quantity)


def steps_of(value: Any) -> dict[str, Any]:
    """Steps [(limit, qty)] per side, or a Curve (linearcurve.py) where the side is one."""
    if not isinstance(value, dict) or not value or set(value) - {"demand", "supply"}:
        raise ProtocolError('answer with {"demand": [[PRICE, QTY], ...]} and/or '
                            '{"supply": [[PRICE, QTY], ...]} (or a curve object for either)')
    out: dict[str, Any] = {}
    for kind, steps in value.items():
        if isinstance(steps, dict):  # a linear or piecewise-linear curve (linearcurve.py)
            out[kind] = curve_of(kind, steps)
            continue
        if not isinstance(steps, list) or len(steps) > 10_000:
            raise ProtocolError(f"{kind} must be a list of [PRICE, QTY] (at most 10,000)")
        parsed = []
        for s in steps:
            if not (isinstance(s, list) and len(s) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and
                    math.isfinite(v) for v in s) and s[0] >= 0 and s[1] > 0):
                raise ProtocolError(f"{kind} step {s!r}: expected [PRICE >= 0, QTY > 0]")
            parsed.append((float(s[0]), float(s[1])))
        out[kind] = parsed
    return out


def equilibrium(demand: list[Step], supply: list[Step]) -> dict[str, Any]:
    """Steps: demand keyed by -limit, supply by limit, so sorting ranks both best first."""
    demand, supply = sorted(demand), sorted(supply)
    limits = sorted({-d[0] for d in demand} | {s[0] for s in supply})
    d_up = sorted((-d[0], d[4]) for d in demand)  # demand limits ascending
    d_left = sum(q for _, q in d_up)  # D(x): demand with limit >= x
    s_in = 0.0  # S(x): supply with limit <= x
    i = j = 0
    best, at = 0.0, []
    for x in limits:
        while i < len(d_up) and d_up[i][0] < x:
            d_left -= d_up[i][1]
            i += 1
        while j < len(supply) and supply[j][0] <= x:
            s_in += supply[j][4]
            j += 1
        m = min(d_left, s_in)
        if m > best * (1 + 1e-12) + 1e-15:
            best, at = m, [x]
        elif best > 0 and m >= best * (1 - 1e-12):
            at.append(x)
    if best <= 0:
        return {"price": None, "quantity": 0.0, "interval": None, "buys": [], "sells": []}
    lo, hi = min(at), max(at)
    price = (lo + hi) / 2
    return {"price": cents(price), "quantity": cents(best), "interval": [lo, hi],
            "buys": _ration([d for d in demand if -d[0] >= price], best, -1),
            "sells": _ration([s for s in supply if s[0] <= price], best, 1)}


def _ration(steps: list[Step], q: float, sign: int) -> list[dict[str, Any]]:
    out = []
    for key, _, agent, idx, qty in steps:
        if q <= 0:
            break
        t = min(qty, q)
        q -= t
        out.append({"agent": agent, "step": idx, "limit": sign * key, "quantity": cents(t)})
    return out


def shared_terms(result: dict[str, Any], welfare: float | None) -> dict[str, Any]:
    """The shared outcome terms: every buy and sell at the clearing price."""
    price = result["price"] if result["quantity"] else None
    return trade_terms(((f["agent"], sign * float(f["quantity"]), price or 0.0)
                        for side, sign in (("buys", 1), ("sells", -1)) for f in result[side]),
                       price, welfare)


class SupplyDemand(OneRound):
    name = "supply_demand"
    summary = ("single-good market equilibrium from supply and demand step curves, with "
               "documented rules for flat segments")
    kind = "curve"

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"good"})
        return {"good": params.get("good")}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        steps_of(value)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        p = self.decide_params(inputs)
        ps = participants_of(inputs)
        rs = responses_of(inputs, ps)
        for r in rs.values():  # the first bad answer in the input's order is the one reported
            steps_of(r.value)
        return self.decide_typed(p, ps, by_arrival(rs))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        demand: list[Step] = []
        supply: list[Step] = []
        parsed = [(r, steps_of(r.value)) for r in responses]  # checked at arrival
        curves = [(r.agent, kind, c) for r, cs in parsed for kind, c in cs.items()
                  if isinstance(c, tuple)]
        if curves:
            if len(curves) != sum(len(cs) for _, cs in parsed):
                raise ProtocolError("a market takes step curves or linear / piecewise-linear "
                                    "curves, not both (a curve has no limit to rank a step "
                                    "against)")
            result = linear_equilibrium([(a, c) for a, k, c in curves if k == "demand"],
                                        [(a, c) for a, k, c in curves if k == "supply"])
            result["good"] = params["good"]
            result["residual"] = float(Fraction(result["exact"]["residual"])) \
                if result["exact"] else 0.0
            gains = result.pop("welfare")
            return {**result, **shared_terms(result, gains)}
        for r, c in parsed:
            for k, (limit, q) in enumerate(c.get("demand", [])):
                demand.append((-limit, r.seq, r.agent, k, q))
            for k, (limit, q) in enumerate(c.get("supply", [])):
                supply.append((limit, r.seq, r.agent, k, q))
        result = equilibrium(demand, supply)
        bought = sum(b["quantity"] for b in result["buys"])
        sold = sum(s["quantity"] for s in result["sells"])
        result["good"] = params["good"]
        result["residual"] = cents(abs(bought - sold))
        gains = sum(b["limit"] * b["quantity"] for b in result["buys"]) - \
            sum(s["limit"] * s["quantity"] for s in result["sells"])
        return {**result, **shared_terms(result, gains)}

    def trade(self, result: dict[str, Any]) -> Trade | None:
        if result.get("price") is None or not result.get("quantity"):
            return None
        price = float(result["price"])
        return Trade(cents(price * float(result["quantity"])), (price,))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        if not result["quantity"]:
            return {}
        return write_all(session.variables, {k: result[k] for k in (
            "good", "price", "quantity", "buys", "sells")})

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        r = outcome.result
        if r["residual"] > 1e-6 * max(1.0, r["quantity"]):
            raise ProtocolError(f"the market does not clear: residual {r['residual']}")
        for b in r["buys"]:  # curve fills (linearcurve.py) have no limit: on the curve
            if b.get("limit", math.inf) < r["price"] - 1e-9:
                raise ProtocolError(f"{b['agent']} buys above its limit")
        for s in r["sells"]:
            if s.get("limit", -math.inf) > r["price"] + 1e-9:
                raise ProtocolError(f"{s['agent']} sells below its limit")
