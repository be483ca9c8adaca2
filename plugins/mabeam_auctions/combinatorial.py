"""Combinatorial auction: bundle bids, XOR within a bidder, optimal winner determination
(wdp.py; wdp_multi.py when items have several units), VCG payments, reserve prices.

Round `bids`: every participant gets {items, reserve} and answers
{"bids": [{"items": [ITEM, ...], "price": AMOUNT}, ...]} (at most one of its bids wins) or
{"pass": true}. Items given as a map {ITEM: UNITS} have that many identical units, and a bid
may then ask for several: {"items": {ITEM: UNITS, ...}, "price": AMOUNT} (a list still asks
one unit of each). Reserves act as the seller's own bids on single units: a bundle's surplus
is its price minus the reserves of its units, and only bids with a positive surplus can win.
Winner determination maximises the total surplus. VCG: winner i pays the reserves of its
bundle plus the surplus the others lose because i takes part, W(-i) - (W - surplus_i); so
nobody pays more than it bid and truthful bidding is a dominant strategy. Only winners need
W(-i) (without a loser the best allocation stays best), so VCG costs at most winners + 1
solves, each "without i" solve started from the best allocation less i's bid (bnb).
`pay_as_bid` charges each winner its bid instead.

`surplus` is the total surplus over reserves of the allocation, `bound` a proven upper bound on
the best possible surplus and `gap` their difference (0 when `optimal`).

Bids are numbered in submission order (answers by arrival, then position in the answer);
that order settles ties between allocations of equal value (see wdp.py, wdp_multi.py).
"""

from __future__ import annotations

from typing import Any

from mabeam_auctions.cats import parse_cats
from mabeam_auctions.wdp import Bid, Solution, milp_available, solve
from mabeam_auctions.wdp_multi import MultiBid, solve_multi
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
MAX_UNITS = 1_000_000  # per item: units are counted one by one nowhere, but keep them sane


def units_of(items: list[str] | dict[str, int]) -> dict[str, int]:
    """The units of each item: 1 each for a list of names."""
    return dict(items) if isinstance(items, dict) else dict.fromkeys(items, 1)


def bids_of(value: Any, units: dict[str, int], max_bids: int) -> list[dict[str, Any]]:
    """The bids of one answer, each {"items", "units": {ITEM: N}, "price"}; `items` as the
    bid gave them, names sorted (a list, or a map of units)."""
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
                not isinstance(b["items"], (list, dict)) or not b["items"]:
            raise ProtocolError(f"bid {k}: expected {{items: [ITEM, ...] or {{ITEM: UNITS}}, "
                                "price: N}")
        asked = b["items"]
        unknown = [i for i in asked if i not in units]
        if unknown or (isinstance(asked, list) and len(set(asked)) != len(asked)):
            raise ProtocolError(f"bid {k}: items must be distinct names from params.items "
                                f"(unknown: {unknown})")
        if isinstance(asked, dict):
            for name, n in asked.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ProtocolError(f"bid {k}: units of {name!r} must be an integer >= 1")
            need = {i: asked[i] for i in sorted(asked, key=str)}
            shown: list[str] | dict[str, int] = need
        else:
            need = dict.fromkeys(sorted(asked, key=str), 1)
            shown = list(need)
        over = [f"{n} of {i!r} (there are {units[i]})" for i, n in need.items()
                if n > units[i]]
        if over:
            raise ProtocolError(f"bid {k} asks for more units than exist: {', '.join(over)}")
        out.append({"items": shown, "units": need, "price": money(b, "price", None)})
    return out


def check_items(items: Any) -> list[str] | dict[str, int]:
    if isinstance(items, dict):
        if not items or not all(isinstance(i, str) for i in items):
            raise ProtocolError("items must be a non-empty map of item names to units")
        for name, n in items.items():
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_UNITS:
                raise ProtocolError(f"items: units of {name!r} must be an integer within "
                                    f"[1, {MAX_UNITS}]")
        return dict(items)
    if not isinstance(items, list) or not items or not all(
            isinstance(i, str) for i in items) or len(set(items)) != len(items):
        raise ProtocolError("items must be a non-empty list of distinct item names, or a "
                            "map of item names to units")
    return list(items)


class Combinatorial(OneRound):
    name = "combinatorial"
    summary = ("combinatorial auction: bundle bids (XOR per bidder), optimal winner "
               "determination, VCG payments, per-item reserve prices")
    kind = "bids"
    default_deadline = 30.0
    heavy = True  # winner determination and VCG: up to time_limit per solve

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, PARAMS)
        items = check_items(params.get("items"))
        reserve = params.get("reserve", {})
        if not isinstance(reserve, dict) or set(reserve) - set(items):
            raise ProtocolError("reserve must map item names (from items) to amounts (per "
                                "unit)")
        solver = choice(params, "solver", "auto", ("auto", "bnb", "milp"))
        if solver == "milp" and not milp_available():
            raise ProtocolError("solver milp needs scipy (pip install mabeamd[milp]); use bnb "
                                "(or auto: milp when scipy is there)")
        return {"items": items,
                "reserve": {i: money(reserve, i, None) for i in sorted(reserve)},
                "payment": choice(params, "payment", "vcg", ("vcg", "pay_as_bid")),
                "time_limit": number(params, "time_limit", 5.0, lo=0.001, hi=3600),
                "solver": solver, "max_bids": integer(params, "max_bids", 256, lo=1,
                                                      hi=100_000)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        bids_of(value, units_of(params["items"]), params["max_bids"])

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
        items, units = params["items"], units_of(params["items"])
        multi = isinstance(items, dict)
        agents = sorted({r.agent for r in rs})
        number_of = {a: k for k, a in enumerate(agents)}
        table: list[dict[str, Any]] = []  # every bid, in submission order
        for r in rs:
            for b in bids_of(r.value, units, params["max_bids"]):
                floor = sum(params["reserve"].get(i, 0.0) * n for i, n in b["units"].items())
                if multi:  # one shape for every bundle: a list bid's units too
                    b["items"] = b["units"]
                table.append({"agent": r.agent, **b, "floor": floor})
        run = _Solver(table, number_of, units, params)
        surplus = run.surplus
        best = run.solve(None, None)
        winners = []
        exact = best.optimal
        for k in best.chosen:
            b = table[k]
            if params["payment"] == "pay_as_bid":
                pay = b["price"]
            else:
                without = run.solve(number_of[b["agent"]], [i for i in best.chosen if i != k])
                exact = exact and without.optimal
                pay = b["floor"] + min(surplus[k],
                                       max(0.0, without.value - (best.value - surplus[k])))
            winners.append({"agent": b["agent"], "items": b["items"], "bid": b["price"],
                            "payment": cents(pay)})
        winners.sort(key=lambda w: w["agent"])
        sold = dict.fromkeys(units, 0)
        for k in best.chosen:
            for i, n in table[k]["units"].items():
                sold[i] += n
        welfare = sum(w["bid"] for w in winners)
        unsold: list[str] | dict[str, int] = \
            {i: units[i] - sold[i] for i in units if sold[i] < units[i]} if multi else \
            [i for i in units if not sold[i]]
        return {"items": items, "reserve": params["reserve"], "payment": params["payment"],
                **terms({w["agent"]: w["items"] for w in winners},
                        {w["agent"]: w["payment"] for w in winners}, None, welfare),
                "winners": winners, "unsold": unsold,
                "value": cents(sum(w["bid"] for w in winners)),
                "revenue": cents(sum(w["payment"] for w in winners)),
                "surplus": cents(best.value), "optimal": best.optimal,
                "bound": cents(best.bound), "gap": cents(best.gap),
                "payments_exact": exact, "solver": best.solver, "nodes": run.nodes,
                "solves": run.solves, "bids": len(table),
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
        allocation: dict[str, Any] = {}
        for w in result["winners"]:
            if isinstance(w["items"], dict):  # units: ITEM -> {AGENT: UNITS}
                for i, n in w["items"].items():
                    allocation.setdefault(i, {})[w["agent"]] = n
            else:
                allocation.update(dict.fromkeys(w["items"], w["agent"]))
        value = {"allocation": dict(sorted(allocation.items())),
                 "payments": {w["agent"]: w["payment"] for w in result["winners"]}}
        return write_all(session.variables, value)

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        verify_allocation(outcome.result)


class _Solver:
    """One auction's winner determinations: the whole problem, then (VCG) the problem
    without each winner; counts the solves and their nodes."""

    def __init__(self, table: list[dict[str, Any]], number_of: dict[str, int],
                 units: dict[str, int], params: dict[str, Any]) -> None:
        self.solver = params["solver"]
        if self.solver == "auto":
            self.solver = "milp" if milp_available() else "bnb"
        self.time_limit = params["time_limit"]
        self.multi = isinstance(params["items"], dict)
        self.surplus = surplus = [b["price"] - b["floor"] for b in table]
        bidders = [number_of[b["agent"]] for b in table]
        names = list(units)
        number = {name: j for j, name in enumerate(names)}
        if self.multi:
            self.capacity = [units[n] for n in names]
            self.multi_bids = [MultiBid(bidders[k], tuple(sorted(
                (number[i], n) for i, n in b["units"].items())), surplus[k])
                for k, b in enumerate(table)]
        else:
            self.n_items = len(names)
            self.bids = [Bid(bidders[k], sum(1 << number[i] for i in b["units"]), surplus[k])
                         for k, b in enumerate(table)]
        self.solves = self.nodes = 0

    def solve(self, skip: int | None, incumbent: list[int] | None) -> Solution:
        if self.multi:
            got = solve_multi(self.multi_bids, self.capacity, self.time_limit, self.solver,
                              skip_bidder=skip, incumbent=incumbent)
        else:
            got = solve(self.bids, self.n_items, self.time_limit, self.solver, skip,
                        incumbent=incumbent)
        self.solves += 1
        self.nodes += got.nodes
        return got


def verify_allocation(r: dict[str, Any]) -> None:
    """Feasibility (no more units of an item sold than exist, one bundle per bidder, only
    known items), individual rationality (payment <= bid), reserves respected, non-negative
    payments."""
    units = units_of(r["items"])
    sold = dict.fromkeys(units, 0)
    agents: set[str] = set()
    for w in r["winners"]:
        if w["agent"] in agents:
            raise ProtocolError(f"{w['agent']} wins twice (bids are XOR)")
        agents.add(w["agent"])
        got = units_of(w["items"])
        if set(got) - set(units):
            raise ProtocolError(f"unknown items sold: {sorted(set(got) - set(units))}")
        for i, n in got.items():
            sold[i] += n
        over = sorted(i for i in got if sold[i] > units[i])
        if over:
            raise ProtocolError(f"items sold more often than they exist: {over}")
        floor = sum(r["reserve"].get(i, 0.0) * n for i, n in got.items())
        if not (0 <= w["payment"] <= w["bid"] + 1e-9 and w["payment"] >= floor - 1e-9):
            raise ProtocolError(f"{w['agent']} pays {w['payment']}: not within [reserve "
                                f"{floor}, bid {w['bid']}]")
