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
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from mabeam_auctions.common import flag, sale_writes
from mabeamd.protocol import (
    OneRound,
    Outcome,
    ProtocolError,
    Session,
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

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        first_wins = not params["resubmit"]
        fast = _column_bids(inputs)
        if fast is None:
            plain = _plain_bids(inputs, first_wins)
            if plain is not None:
                ids, amounts, seqs = plain
            else:  # anything unusual: the general path, whose errors say what is wrong
                ps = participants_of(inputs)
                ids = {p.id for p in ps}
                latest = responses_of(inputs, ps, first_wins=first_wins)
                for r in inputs.get("responses", []):  # a replaced bid must have been a bid
                    bid_of(r.get("value"))
                amounts = {a: bid_of(r.value) for a, r in latest.items()}
                seqs = {a: r.seq for a, r in latest.items()}
            fast = (ids, [(b, seqs[a], a) for a, b in amounts.items() if b is not None],
                    [a for a, b in amounts.items() if b is None], amounts.keys())
        ids, bids, passed, answered = fast
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
        return {"item": params["item"], "rule": params["rule"], "reserve": reserve,
                "winner": winner, "price": None if price is None else cents(price),
                "bids": [{"agent": a, "bid": b} for b, _, a in bids],
                "below_reserve": [a for _, _, a in bids[above:]],
                "passed": sorted(passed),
                "missing": sorted(ids.difference(answered))}

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return sale_writes(session, result)

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        verify_sale(outcome.result)


Columns = tuple[set[str], list[tuple[float, int, str]], list[str], Iterable[str]]


def _column_bids(inputs: dict[str, Any]) -> Columns | None:
    """The commonest case, checked column by column with C-level builtins (map, set, min,
    sum) instead of a Python loop per answer: every participant in one of the two plain
    shapes ({id} or the engine's {id, weight, priority, metadata}), one bid per agent, each
    answer {agent, value: {bid}, seq} (+ at). Anything else returns None (_plain_bids, then
    the general path, take it); same result as the general path (tested)."""
    ps, rs = inputs.get("participants"), inputs.get("responses", [])
    if type(ps) is not list or type(rs) is not list or not rs:
        return None
    try:
        # itemgetter raises TypeError on anything but a map (inputs come from JSON or the
        # engine), str.join on anything but strings: type checks without a pass of their own.
        ids = list(map(_ID, ps))
        agents = list(map(_AGENT, rs))
        "".join(ids)
        "".join(agents)
        shapes = set(map(len, ps))
        if shapes == {4}:
            weights = list(map(_WEIGHT, ps))
            if not (set(map(type, weights)) <= _NUMBER_SET and min(weights) >= 0
                    and math.isfinite(sum(weights))
                    and set(map(type, map(_PRIORITY, ps))) == {int}
                    and set(map(type, map(_METADATA, ps))) == {dict}):
                return None
        elif shapes != {1}:
            return None
        values = list(map(_VALUE, rs))
        seqs = list(map(_SEQ, rs))
        sizes = set(map(len, rs))
        if sizes == {4}:
            ats = list(map(_AT, rs))
            if not (set(map(type, ats)) <= _NUMBER_SET and math.isfinite(sum(ats))):
                return None
        elif sizes != {3}:
            return None
        id_set = set(ids)
        if len(id_set) != len(ids) or not id_set.issuperset(agents) \
                or len(set(agents)) != len(agents) or set(map(type, seqs)) != {int} \
                or set(map(len, values)) != {1}:
            return None
        amounts = list(map(_BID, values))
    except (KeyError, TypeError):  # a missing key, a non-map or a non-string id
        return None
    if not (set(map(type, amounts)) <= _NUMBER_SET and min(amounts) >= 0
            and math.isfinite(sum(amounts))):
        return None
    # (participant ids, (amount, seq, agent) per bid, passes, who answered)
    return id_set, list(zip(map(float, amounts), seqs, agents, strict=True)), [], agents


def _plain_bids(inputs: dict[str, Any], first_wins: bool,
                ) -> tuple[set[str], dict[str, float | None], dict[str, int]] | None:
    """(participant ids, latest amount per bidder (None: pass), its seq) when every
    participant and answer is in the plain form the engine produces and each check below
    passes; None sends decide() down the general path. Conservative by design: it accepts
    only inputs the general path accepts and computes the same result (tested), at a
    fraction of its cost (no object per answer)."""
    ps, rs = inputs.get("participants"), inputs.get("responses", [])
    if type(ps) is not list or type(rs) is not list:
        return None
    ids: set[str] = set()
    for p in ps:
        if type(p) is not dict or type(p.get("id")) is not str:
            return None
        if len(p) > 1:
            w = p.get("weight", 1.0)
            if not (p.keys() <= _PARTICIPANT_KEYS and type(w) in _NUMBER and 0 <= w < _INF
                    and type(p.get("priority", 0)) is int
                    and type(p.get("metadata", _EMPTY)) is dict):
                return None
        ids.add(p["id"])
    if len(ids) != len(ps):
        return None
    amounts: dict[str, float | None] = {}
    seqs: dict[str, int] = {}
    for k, r in enumerate(rs):
        if type(r) is not dict:
            return None
        agent, value, seq = r.get("agent"), r.get("value"), r.get("seq", k)
        if type(agent) is not str or agent not in ids or type(seq) is not int:
            return None
        at = r.get("at", 0.0)
        if type(at) not in _NUMBER or not -_INF < at < _INF:
            return None
        if type(value) is not dict or len(value) != 1:
            return None
        b = value.get("bid", _MISSING)
        if b is _MISSING:
            if value.get("pass") is not True:
                return None
            amount = None
        elif type(b) in _NUMBER and 0 <= b < _INF:
            amount = float(b)
        else:
            return None
        old = seqs.get(agent)
        if old is None or (old > seq if first_wins else old <= seq):
            amounts[agent], seqs[agent] = amount, seq
    return ids, amounts, seqs


_INF = float("inf")
_NUMBER = (int, float)
_NUMBER_SET = {int, float}
_ID, _WEIGHT, _PRIORITY, _METADATA = (itemgetter(k) for k in ("id", "weight", "priority",
                                                               "metadata"))
_AGENT, _VALUE, _SEQ, _AT, _BID = (itemgetter(k) for k in ("agent", "value", "seq", "at",
                                                           "bid"))
_EMPTY: dict[str, Any] = {}
_MISSING = object()
_PARTICIPANT_KEYS = {"id", "weight", "priority", "metadata"}


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
