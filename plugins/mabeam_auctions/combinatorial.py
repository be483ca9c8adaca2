"""Combinatorial auction: bundle bids, XOR within a bidder, optimal winner determination
(wdp.py), VCG payments, per-item reserve prices.

Round `bids`: every participant gets {items, reserve} and answers
{"bids": [{"items": [ITEM, ...], "price": AMOUNT}, ...]} (at most one of its bids wins) or
{"pass": true}. Reserves act as the seller's own bids on single items: a bundle's surplus is
its price minus the reserves of its items, and only bids with a positive surplus can win.
Winner determination maximises the total surplus. VCG: winner i pays the reserves of its
bundle plus the surplus the others lose because i takes part, W(-i) - (W - surplus_i); so
nobody pays more than it bid and truthful bidding is a dominant strategy. `pay_as_bid`
charges each winner its bid instead.

`surplus` is the total surplus over reserves of the allocation, `bound` a proven upper bound on
the best possible surplus and `gap` their difference (0 when `optimal`).

Bids are numbered in submission order (answers by arrival, then position in the answer);
that order settles ties between allocations of equal value (see wdp.py).
"""

from __future__ import annotations

from typing import Any

from mabeam_auctions.cats import parse_cats
from mabeam_auctions.wdp import Bid, milp_available, solve
from mabeamd.protocol import (
    OneRound,
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    Trade,
    by_arrival,
    cents,
    choice,
    integer,
    money,
    number,
    only,
    participants_of,
    responses_of,
    terms,
    write_all,
)

PARAMS = {"items", "reserve", "payment", "time_limit", "solver", "max_bids"}


def bids_of(value: Any, items: set[str], max_bids: int) -> list[dict[str, Any]]:
    if isinstance(value, dict) and value == {"pass": True}:
        return []
    if not isinstance(value, dict) or set(value) != {"bids"} or \
            not isinstance(value["bids"], list):
        raise ProtocolError('answer with {"bids": [{"items": [...], "price": N}, ...]} or '
                            '{"pass": true}')
    if len(value["bids"]) > max_bids:
        raise ProtocolError(f"at most {max_bids} bids per bidder")
    out = []
    for k, b in enumerate(value["bids"]):
        if not isinstance(b, dict) or set(b) != {"items", "price"} or \
                not isinstance(b["items"], list) or not b["items"]:
            raise ProtocolError(f"bid {k}: expected {{items: [ITEM, ...], price: N}}")
        unknown = [i for i in b["items"] if i not in items]
        if unknown or len(set(b["items"])) != len(b["items"]):
            raise ProtocolError(f"bid {k}: items must be distinct names from params.items "
                                f"(unknown: {unknown})")
        out.append({"items": sorted(b["items"], key=str), "price": money(b, "price", None)})
    return out


class Combinatorial(OneRound):
    name = "combinatorial"
    summary = ("combinatorial auction: bundle bids (XOR per bidder), optimal winner "
               "determination, VCG payments, per-item reserve prices")
    kind = "bids"
    default_deadline = 30.0
    heavy = True  # winner determination and VCG: up to time_limit per solve

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, PARAMS)
        items = params.get("items")
        if not isinstance(items, list) or not items or not all(
                isinstance(i, str) for i in items) or len(set(items)) != len(items):
            raise ProtocolError("items must be a non-empty list of distinct item names")
        reserve = params.get("reserve", {})
        if not isinstance(reserve, dict) or set(reserve) - set(items):
            raise ProtocolError("reserve must map item names (from items) to amounts")
        solver = choice(params, "solver", "auto", ("auto", "bnb", "milp"))
        if solver == "milp" and not milp_available():
            raise ProtocolError("solver milp needs scipy (pip install mabeamd[milp]); use bnb "
                                "(or auto: milp when scipy is there)")
        return {"items": list(items),
                "reserve": {i: money(reserve, i, None) for i in sorted(reserve)},
                "payment": choice(params, "payment", "vcg", ("vcg", "pay_as_bid")),
                "time_limit": number(params, "time_limit", 5.0, lo=0.001, hi=3600),
                "solver": solver, "max_bids": integer(params, "max_bids", 256, lo=1,
                                                      hi=100_000)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        bids_of(value, set(params["items"]), params["max_bids"])

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"items": params["items"], "reserve": params["reserve"]}

    def parse_input(self, text: str) -> Any:
        if text.lstrip().startswith("{"):
            return Protocol.parse_input(self, text)
        return parse_cats(text)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        p = self.decide_params(inputs)
        ps = participants_of(inputs)
        return self.decide_typed(p, ps, by_arrival(responses_of(inputs, ps)))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        # bids_of checked each answer at arrival; here it also turns it into the bid table.
        rs = sorted(responses, key=lambda r: (r.seq, r.agent))
        items = params["items"]
        bit = {name: 1 << k for k, name in enumerate(items)}
        agents = sorted({r.agent for r in rs})
        number_of = {a: k for k, a in enumerate(agents)}
        table: list[dict[str, Any]] = []  # every bid, in submission order
        for r in rs:
            for b in bids_of(r.value, set(items), params["max_bids"]):
                floor = sum(params["reserve"].get(i, 0.0) for i in b["items"])
                table.append({"agent": r.agent, **b, "floor": floor})
        solver_bids = [Bid(number_of[b["agent"]], sum(bit[i] for i in b["items"]),
                           b["price"] - b["floor"]) for b in table]
        best = solve(solver_bids, len(items), params["time_limit"], params["solver"])
        winners = []
        exact = best.optimal
        for k in best.chosen:
            b = table[k]
            surplus = solver_bids[k].value
            if params["payment"] == "pay_as_bid":
                pay = b["price"]
            else:
                without = solve(solver_bids, len(items), params["time_limit"], params["solver"],
                                skip_bidder=number_of[b["agent"]])
                exact = exact and without.optimal
                pay = b["floor"] + min(surplus, max(0.0, without.value - (best.value - surplus)))
            winners.append({"agent": b["agent"], "items": b["items"], "bid": b["price"],
                            "payment": cents(pay)})
        winners.sort(key=lambda w: w["agent"])
        sold = {i for w in winners for i in w["items"]}
        welfare = sum(w["bid"] for w in winners)
        return {"items": items, "reserve": params["reserve"], "payment": params["payment"],
                **terms({w["agent"]: w["items"] for w in winners},
                        {w["agent"]: w["payment"] for w in winners}, None, welfare),
                "winners": winners, "unsold": [i for i in items if i not in sold],
                "value": cents(sum(w["bid"] for w in winners)),
                "revenue": cents(sum(w["payment"] for w in winners)),
                "surplus": cents(best.value), "optimal": best.optimal,
                "bound": cents(best.bound), "gap": cents(best.gap),
                "payments_exact": exact, "solver": best.solver, "nodes": best.nodes,
                "bids": len(table),
                "below_reserve": sum(1 for b in table if b["price"] <= b["floor"]),
                "missing": sorted(x.id for x in participants if x.id not in number_of)}

    def trade(self, result: dict[str, Any]) -> Trade | None:
        """The payments (VCG or as bid); no single clearing price: bundles are priced one
        by one."""
        if not result.get("winners"):
            return None
        return Trade(float(result["revenue"]))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        if not result["winners"]:
            return {}
        value = {"allocation": {i: w["agent"] for w in result["winners"] for i in w["items"]},
                 "payments": {w["agent"]: w["payment"] for w in result["winners"]}}
        return write_all(session.variables, value)

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        verify_allocation(outcome.result)


def verify_allocation(r: dict[str, Any]) -> None:
    """Feasibility (no item sold twice, one bundle per bidder, only known items), individual
    rationality (payment <= bid), reserves respected, non-negative payments."""
    seen: set[str] = set()
    agents: set[str] = set()
    known = set(r["items"])
    for w in r["winners"]:
        if w["agent"] in agents:
            raise ProtocolError(f"{w['agent']} wins twice (bids are XOR)")
        agents.add(w["agent"])
        twice = seen & set(w["items"])
        if twice or set(w["items"]) - known:
            raise ProtocolError(f"items sold twice or unknown: {sorted(twice)}")
        seen |= set(w["items"])
        floor = sum(r["reserve"].get(i, 0.0) for i in w["items"])
        if not (0 <= w["payment"] <= w["bid"] + 1e-9 and w["payment"] >= floor - 1e-9):
            raise ProtocolError(f"{w['agent']} pays {w['payment']}: not within [reserve "
                                f"{floor}, bid {w['bid']}]")



