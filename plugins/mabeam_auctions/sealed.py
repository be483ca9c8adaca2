"""Sealed-bid auctions of one item: first price and second price (Vickrey).

Round `bid`: every participant gets {item, rule, reserve} and answers {"bid": AMOUNT} or
{"pass": true}. Nobody sees a bid before the close: the engine keeps answers inside the
worker and `sessions show` reports only how many arrived. Bids are ranked by amount
(highest first), then earliest submission, then agent id. The winner is the top bid at or
above the reserve; it pays its bid (first price) or max(second-highest bid, reserve) (second
price). By default a resubmitted bid replaces the earlier one and takes its place in time;
with `resubmit: false` the first bid stands and a second is refused with `conflict`.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

from mabeam_auctions.common import flag, sale_terms, sale_trade, sale_writes
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
    choice,
    money,
    only,
    participants_of,
    responses_of,
)

PARAMS = {"item", "rule", "reserve", "resubmit"}


def bid_of(value: Any) -> float | None:
    """The amount of a `bid` answer, None for a pass; ProtocolError for anything else."""
    if type(value) is dict and len(value) == 1:  # the common shape, exact types first
        amount = value.get("bid")
        if type(amount) is float and 0.0 <= amount < math.inf:
            return amount
    if isinstance(value, dict) and value == {"pass": True}:
        return None
    if not isinstance(value, dict) or set(value) != {"bid"}:
        raise ProtocolError('answer with {"bid": AMOUNT} or {"pass": true}')
    return money(value, "bid", None)


class SealedBid(OneRound):
    name = "sealed_bid"
    summary = ("sealed-bid auction of one item: first price or second price (Vickrey), "
               "reserve price, ties to the earliest bid then agent id")
    kind = "bid"

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, PARAMS)
        return {"item": params.get("item"),
                "rule": choice(params, "rule", "second", ("first", "second")),
                "reserve": money(params, "reserve", 0.0),
                "resubmit": flag(params, "resubmit", True)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        bid_of(value)

    def resubmit(self, kind: str, params: dict[str, Any]) -> bool:
        return bool(params["resubmit"])

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"item": params["item"], "rule": params["rule"], "reserve": params["reserve"]}

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        # Every value passed bid_of at arrival: {"bid": AMOUNT} or {"pass": true}.
        bids = [(float(r.value["bid"]), r.seq, r.agent) for r in responses
                if "bid" in r.value]
        # Highest bid first, then earliest, then agent id: stable sorts on plain keys (last
        # key first) cost less than one sort on tuples; the engine's seqs are unique, so the
        # agent id only matters for hand-written inputs.
        if len({seq for _, seq, _ in bids}) < len(bids):
            bids.sort(key=itemgetter(2))
        bids.sort(key=itemgetter(1))
        bids.sort(key=itemgetter(0), reverse=True)
        reserve = params["reserve"]
        winner = price = None
        if bids and bids[0][0] >= reserve:
            winner = bids[0][2]
            if params["rule"] == "first":
                price = bids[0][0]
            else:
                price = max(bids[1][0] if len(bids) > 1 else 0.0, reserve)
        above = len(bids)  # ranked high to low: the bids below the reserve are a suffix
        while above and bids[above - 1][0] < reserve:
            above -= 1
        answered = {r.agent for r in responses}
        return {"item": params["item"], "rule": params["rule"], "reserve": reserve,
                **sale_terms(params["item"], winner, price, bids[0][0] if winner else None),
                "winner": winner, "price": None if price is None else cents(price),
                "bids": [{"agent": a, "bid": b} for b, _, a in bids],
                "below_reserve": [a for _, _, a in bids[above:]],
                "passed": sorted(r.agent for r in responses if "bid" not in r.value),
                "missing": sorted(p.id for p in participants if p.id not in answered)}

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = participants_of(inputs)
        latest = responses_of(inputs, ps, first_wins=not params["resubmit"])
        for r in inputs.get("responses", []):  # a replaced bid must have been a bid too
            bid_of(r.get("value"))
        return self.decide_typed(params, ps, by_arrival(latest))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return sale_writes(session, result)

    def trade(self, result: dict[str, Any]) -> Trade | None:
        return sale_trade(result)

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        verify_sale(outcome.result)


def verify_sale(r: dict[str, Any]) -> None:
    """Checks before a sealed-bid outcome is applied, recomputed from the bids it lists:
    the winner bid, pays no more than its bid (individual rationality), no less than the
    reserve, nothing negative; second price pays max(next bid, reserve)."""
    if r["winner"] is None:
        return
    bids = {e["agent"]: e["bid"] for e in r["bids"]}
    if r["winner"] not in bids:
        raise ProtocolError(f"winner {r['winner']!r} placed no bid")
    price, mine = r["price"], bids[r["winner"]]
    if price < 0 or price > mine + 1e-9 or price < r["reserve"] - 1e-9:
        raise ProtocolError(f"price {price} breaks 0 <= reserve {r['reserve']} <= price <= "
                            f"winning bid {mine}")
    if max(bids.values()) > mine:
        raise ProtocolError("the winner is not the highest bidder")
    if r["rule"] == "second":
        others = sorted(bids.values(), reverse=True)[1:2]
        want = max(others[0] if others else 0.0, r["reserve"])
        if abs(price - want) > 1e-9:
            raise ProtocolError(f"second price should be {want}, not {price}")
