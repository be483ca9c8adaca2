"""Continuous double auction as a session: a live market the participants trade in.

The driver opens one *streaming* round of kind `trade` for `duration` seconds (see
Session.stream): each participant may answer any number of times, and each answer is
handled the moment it arrives:

    {"order": {"side": "buy"|"sell", "quantity": UNITS, "price": LIMIT}}   limit order
    {"order": {"side": ..., "quantity": UNITS}}                            market order
    {"cancel": ORDER_ID}                                                   own orders only

The reply (returned by `Agent.answer` / `respond`) is {"order": ID, "trades": [...],
"resting": UNITS} or {"cancelled": ID, "quantity": UNITS_LEFT}. Makers whose resting orders
trade get a `fill` notice; every trade is published as event `session.trade`, and the book's
depth as `session.book` (at most every BOOK_EVERY seconds, levels only). When the time
is up, orders still resting are dropped and the outcome — trades, each agent's net position
(units and cash; both sum to zero), last price, volume — is applied to the session's
variables. The pure mechanism replays an order log through the same book, so `protocols
eval` on a session's log reproduces it. A long-lived market is a session with a long
`duration` (up to `[sessions] max_deadline`).
"""

from __future__ import annotations

from typing import Any

from mabeam_markets.book import OrderBook, Trade
from mabeam_markets.common import side, units
from mabeamd import protocol
from mabeamd.protocol import (
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    cents,
    integer,
    money,
    number,
    only,
    participants_of,
    write_all,
)

KEEP_TRADES = 1000  # the outcome lists the last this many trades (all are counted)
# `session.book` events: the best BOOK_LEVELS levels a side (prices and total quantities,
# no agents), after an order, at most every BOOK_EVERY seconds (the console's depth chart).
BOOK_EVERY = 0.2
BOOK_LEVELS = 20


def parse(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and set(value) == {"cancel"}:
        if isinstance(value["cancel"], bool) or not isinstance(value["cancel"], int):
            raise ProtocolError("cancel takes an order id (an integer)")
        return value
    if not isinstance(value, dict) or set(value) != {"order"} or \
            not isinstance(value["order"], dict):
        raise ProtocolError('answer with {"order": {side, quantity[, price]}} or '
                            '{"cancel": ORDER_ID}')
    o = value["order"]
    if set(o) - {"side", "quantity", "price"}:
        raise ProtocolError("an order is {side, quantity, price}; no price = market order")
    side(o)
    units(o, "quantity", None)
    if "price" in o:
        money(o, "price", None)
    return value


class Market:
    """An order book plus the bookkeeping a session needs: who owns which order, positions,
    the trade log."""

    def __init__(self, max_orders: int = 1_000_000) -> None:
        self.book = OrderBook()
        self.owner: dict[int, str] = {}
        self.positions: dict[str, list[float]] = {}  # agent -> [units, cash]
        self.trades: list[dict[str, Any]] = []
        self.count = 0
        self.volume = 0
        self.turnover = 0.0  # sum of price x quantity over every trade
        self.last: float | None = None
        self.max_orders = max_orders

    def handle(self, agent: str, value: Any) -> tuple[dict[str, Any], list[Trade]]:
        v = parse(value)
        if "cancel" in v:
            oid = v["cancel"]
            if self.owner.get(oid) != agent:
                raise ProtocolError(f"order {oid} is not a resting order of {agent}")
            order = self.book.cancel(oid)
            if order is None:
                raise ProtocolError(f"order {oid} is no longer resting")
            return {"cancelled": oid, "quantity": order[4]}, []
        if self.book.next_id > self.max_orders:
            raise ProtocolError(f"the market took its {self.max_orders} orders")
        o = v["order"]
        oid, trades, left = self.book.submit(agent, o["side"], o["quantity"], o.get("price"))
        if left:
            self.owner[oid] = agent
        for maker, maker_agent, _, taker_agent, taker_side, price, qty in trades:
            buyer, seller = ((taker_agent, maker_agent) if taker_side == "buy"
                             else (maker_agent, taker_agent))
            for who, sign in ((buyer, 1), (seller, -1)):
                pos = self.positions.setdefault(who, [0, 0.0])
                pos[0] += sign * qty
                pos[1] -= sign * qty * price
            self.volume += qty
            self.turnover += qty * price
            self.last = price
            self.count += 1
            self.trades.append({"buyer": buyer, "seller": seller, "price": price,
                                "quantity": qty, "maker_order": maker, "taker_order": oid})
            if not self.book.orders.get(maker):
                self.owner.pop(maker, None)
        del self.trades[:-KEEP_TRADES]
        return {"order": oid, "trades": [{"price": t[5], "quantity": t[6],
                                          "maker_order": t[0]} for t in trades],
                "resting": left}, trades

    def result(self) -> dict[str, Any]:
        # The shared terms: net units and net payments by agent (revenue 0: every trade is
        # between two traders); no one price (trades clear at many), and no welfare (a
        # market order carries no limit, so the gains from trade are not known).
        held = {a: p[0] for a, p in self.positions.items()}
        paid = {a: -p[1] for a, p in self.positions.items()}
        return {**protocol.terms(held, paid, None, None), "trades": self.trades,
                "trade_count": self.count, "volume": self.volume,
                "turnover": cents(self.turnover),
                "last_price": self.last, "orders": self.book.next_id - 1,
                "positions": {a: {"quantity": p[0], "cash": cents(p[1])}
                              for a, p in sorted(self.positions.items())},
                "book_at_close": {"bids": self.book.depth("buy"),
                                  "asks": self.book.depth("sell")}}


class ContinuousDoubleAuction(Protocol):
    name = "continuous_double_auction"
    summary = ("continuous double auction: limit and market orders, cancels, price-time "
               "priority, partial fills, trade events; a live market for `duration` seconds")
    default_deadline = 3600.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"good", "duration", "max_orders"})
        return {"good": params.get("good"),
                "duration": number(params, "duration", 10.0, lo=0.01, hi=10**7),
                "max_orders": integer(params, "max_orders", 1_000_000, lo=1, hi=10**9)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        parse(value)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Replay an order log: {params, participants, orders: [{agent, value}, ...]} in
        arrival order. Refused answers (bad cancels) are reported, not fatal."""
        only(inputs, {"params", "participants", "orders"}, "inputs")
        p = self.check_params(dict(inputs.get("params") or {}))
        ids = {x.id for x in participants_of(inputs)}
        log = inputs.get("orders", [])
        if not isinstance(log, list):
            raise ProtocolError("inputs.orders must be a list")
        m = Market(p["max_orders"])
        refused = []
        for k, raw in enumerate(log):
            r = Response.from_dict(raw, k)
            if r.agent not in ids:
                raise ProtocolError(f"order from {r.agent!r}, who is not a participant")
            try:
                m.handle(r.agent, r.value)
            except ProtocolError as exc:
                refused.append({"index": k, "reason": str(exc)})
        return {"good": p["good"], **m.result(), "refused": refused}

    def audit_inputs(self, params: dict[str, Any], participants: list[Participant],
                     transcript: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The order log: every order the market took, in arrival order."""
        return {"params": params, "participants": [p.to_dict() for p in participants],
                "orders": [o for r in transcript for o in r.get("answers", [])]}

    async def run(self, session: Session) -> Outcome:
        p = session.params
        m = Market(p["max_orders"])

        last_book = [-BOOK_EVERY]

        def on_order(r: Response) -> dict[str, Any]:
            reply, trades = m.handle(r.agent, r.value)
            for maker, maker_agent, _, _, _, price, qty in trades:
                session.tell([maker_agent], "fill", {"order": maker, "price": price,
                                                     "quantity": qty})
            for t in (m.trades[-len(trades):] if trades else []):
                session.event("trade", t)
            if r.at - last_book[0] >= BOOK_EVERY:  # the book's depth, at most this often
                last_book[0] = r.at
                session.event("book", {"bids": m.book.depth("buy", BOOK_LEVELS),
                                       "asks": m.book.depth("sell", BOOK_LEVELS)})
            return reply

        duration = min(p["duration"], max(0.0, session.remaining() - 0.25))
        await session.stream([x.id for x in session.participants], "trade",
                             {"good": p["good"], "duration": duration}, on_order, duration)
        result = {"good": p["good"], **m.result()}
        writes = write_all(session.variables, {
            "good": p["good"], "last_price": m.last, "volume": m.volume,
            "positions": result["positions"]})
        return Outcome(result, writes if m.count else {})

    def trade(self, result: dict[str, Any]) -> protocol.Trade | None:
        """The turnover; the clearing price is the volume-weighted average of the trades."""
        if not result.get("volume"):
            return None
        turnover = float(result["turnover"])
        return protocol.Trade(turnover, (cents(turnover / result["volume"]),))

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        pos = outcome.result["positions"].values()
        units_ = sum(x["quantity"] for x in pos)
        cash = sum(x["cash"] for x in pos)
        if units_ != 0 or abs(cash) > 1e-6 * max(1, outcome.result["volume"]):
            raise ProtocolError(f"positions do not balance: {units_} units, {cash} cash")
