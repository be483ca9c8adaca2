"""Call market: orders collected in one round, cleared at once.

Round `order`: each participant answers {"orders": [{"side": "buy"|"sell", "price": LIMIT,
"quantity": UNITS}, ...]} (or one such order as the answer itself, or {"pass": true}).
Orders are multi-unit: a unit is the thing traded, and an order may fill in part.

Units are ranked — buy units by limit descending, sell units ascending; equal limits by
earliest order, then agent id, then position in the answer — and q, the efficient
quantity, is the largest number of units such that the q-th buy limit b(q) is at least the
q-th sell limit a(q).

k_double (the default): all q units trade at one price chosen inside the clearing interval
[lo, hi] = [max(a(q), b(q+1)), min(b(q), a(q+1))] (missing terms left out):
price = lo + kappa * (hi - lo). kappa = 0 favours buyers, 1 sellers, 0.5 splits. Budget
balanced; not truthful.

mcafee (trade reduction, truthful for single-unit traders): with
p0 = (b(q+1) + a(q+1)) / 2, if a(q) <= p0 <= b(q) all q units trade at p0; otherwise only
q-1 units trade, buyers pay b(q), sellers get a(q), and the market keeps the difference
(`surplus`) — never a deficit. With multi-unit orders McAfee's truthfulness is per unit only.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from operator import itemgetter
from typing import Any

from mabeam_markets.common import side, trade_terms, units
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
    number,
    only,
    participants_of,
    responses_of,
    write_all,
)

# An order as the clearing code sees it: (sort key..., agent, limit, quantity, index)
Order = tuple[float, int, str, int, float, int]


def orders_of(value: Any, max_orders: int = 1000) -> list[dict[str, Any]]:
    if isinstance(value, dict) and value == {"pass": True}:
        return []
    if isinstance(value, dict) and set(value) == {"orders"} and isinstance(value["orders"],
                                                                          list):
        raw = value["orders"]
    elif isinstance(value, dict) and "side" in value:
        raw = [value]
    else:
        raise ProtocolError('answer with {"orders": [{"side", "price", "quantity"}, ...]}, '
                            'one order, or {"pass": true}')
    if len(raw) > max_orders:
        raise ProtocolError(f"at most {max_orders} orders per answer")
    out = []
    for o in raw:
        if not isinstance(o, dict) or set(o) - {"side", "price", "quantity"}:
            raise ProtocolError("an order is {side, price, quantity}")
        out.append({"side": side(o), "price": money(o, "price", None), "quantity": units(o)})
    return out


def clear(buys: list[Order], sells: list[Order], rule: str = "k_double",
          kappa: float = 0.5) -> dict[str, Any]:
    """Clear two order lists, each in arrival order (earliest answer first, then position in
    the answer). Each order is (key, seq, agent, qty, limit, idx) with key = -limit for
    buys and limit for sells: a stable sort on the key alone ranks by limit and keeps
    arrival order among equal limits (sorting floats, not tuples: 10,000 orders a side
    clear in a few milliseconds)."""
    buys = sorted(buys, key=itemgetter(0))
    sells = sorted(sells, key=itemgetter(0))
    # Units through each order: the u-th unit (1-based) of a side belongs to the first order
    # whose running total reaches u.
    bcum = list(accumulate(o[3] for o in buys))
    scum = list(accumulate(o[3] for o in sells))

    def b(u: int) -> float:
        return buys[bisect_left(bcum, u)][4]

    def a(u: int) -> float:
        return sells[bisect_left(scum, u)][4]

    # b(u) never rises and a(u) never falls with u: the efficient quantity q (the last unit
    # with b(q) >= a(q)) is found by bisection.
    lo, hi = 0, min(bcum[-1] if bcum else 0, scum[-1] if scum else 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b(mid) >= a(mid):
            lo = mid
        else:
            hi = mid - 1
    q = lo
    out: dict[str, Any] = {"rule": rule, "efficient_quantity": q}
    if q == 0:
        return {**out, "quantity": 0, "price": None, "fills": [], "surplus": 0.0}
    bq, aq = b(q), a(q)
    b_next = b(q + 1) if q < bcum[-1] else None
    a_next = a(q + 1) if q < scum[-1] else None
    if rule == "k_double":
        lo_p = max(aq, b_next) if b_next is not None else aq
        hi_p = min(bq, a_next) if a_next is not None else bq
        price = cents(lo_p + kappa * (hi_p - lo_p))
        traded, buy_price, sell_price = q, price, price
        out.update(kappa=kappa, price=price, interval=[cents(lo_p), cents(hi_p)])
    else:
        p0 = (b_next + a_next) / 2 if b_next is not None and a_next is not None else None
        if p0 is not None and aq <= p0 <= bq:
            traded, buy_price, sell_price = q, cents(p0), cents(p0)
        else:
            traded, buy_price, sell_price = q - 1, cents(bq), cents(aq)
        out.update(buy_price=buy_price, sell_price=sell_price,
                   price=buy_price if buy_price == sell_price else None)
    fills = _fill(buys, bcum, traded, "buy", buy_price) + \
        _fill(sells, scum, traded, "sell", sell_price)
    return {**out, "quantity": traded, "fills": fills,
            "surplus": cents(traded * (buy_price - sell_price))}


def vocabulary(result: dict[str, Any]) -> dict[str, Any]:
    """The shared outcome terms (mabeamd.protocol.terms) from the fills: each trader's net
    units (bought positive) and net payment (a seller's receipt negative); revenue is what
    the market keeps (0 for k-double, McAfee's reduced trade its surplus: the old `surplus`
    key); welfare the gains from trade by the traders' limits. `buy_price` and `sell_price`
    are always given: both the price under k-double (None without a trade), McAfee's two
    prices under mcafee (set even when the reduction leaves no trade)."""
    fills = result["fills"]
    signed = [(f, 1 if f["side"] == "buy" else -1) for f in fills]
    welfare = sum(s * f["quantity"] * f["limit"] for f, s in signed)
    # No trade, no price: McAfee's reduction can leave none although its rule set two prices.
    out = trade_terms(((f["agent"], s * f["quantity"], f["price"]) for f, s in signed),
                      result["price"] if fills else None, welfare)
    out.setdefault("buy_price", result.get("buy_price", result["price"]))
    out.setdefault("sell_price", result.get("sell_price", result["price"]))
    return out


def _fill(book: list[Order], cum: list[int], q: int, what: str, price: float,
          ) -> list[dict[str, Any]]:
    """The first q units of a ranked side: whole orders, the last one perhaps in part."""
    if q <= 0:
        return []
    last = bisect_left(cum, q)
    fills = [{"agent": agent, "side": what, "order": idx, "limit": limit, "quantity": qty,
              "price": price} for _, _, agent, qty, limit, idx in book[:last + 1]]
    fills[-1]["quantity"] = q - (cum[last - 1] if last else 0)
    return fills


class CallMarket(OneRound):
    name = "call_market"
    summary = ("call market: multi-unit orders cleared at once, k-double auction (uniform "
               "price, kappa) or McAfee's trade reduction (truthful)")
    kind = "order"

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"good", "rule", "kappa"})
        return {"good": params.get("good"),
                "rule": choice(params, "rule", "k_double", ("k_double", "mcafee")),
                "kappa": number(params, "kappa", 0.5, lo=0.0, hi=1.0)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        orders_of(value)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        p = self.decide_params(inputs)
        ps = participants_of(inputs)
        return self.decide_typed(p, ps, by_arrival(responses_of(inputs, ps)))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        buys: list[Order] = []
        sells: list[Order] = []
        n = 0
        # The list order is the arrival order clear() keeps among equal limits; orders_of
        # checked each answer at arrival, here it turns it into orders.
        for r in responses:
            for o in orders_of(r.value):
                if o["side"] == "buy":
                    buys.append((-o["price"], r.seq, r.agent, o["quantity"], o["price"], n))
                else:
                    sells.append((o["price"], r.seq, r.agent, o["quantity"], o["price"], n))
                n += 1
        result = clear(buys, sells, params["rule"], params["kappa"])
        result["good"] = params["good"]
        result["orders"] = n
        return {**result, **vocabulary(result)}

    def trade(self, result: dict[str, Any]) -> Trade | None:
        """What the buyers pay; the clearing price when there is one (k-double, or McAfee
        when buyers and sellers trade at the same price)."""
        if not result.get("quantity"):
            return None
        buy = float(result["buy_price"] if "buy_price" in result else result["price"])
        price = result.get("price")
        return Trade(cents(result["quantity"] * buy),
                     (float(price),) if price is not None else ())

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        if not result["quantity"]:
            return {}
        net: dict[str, dict[str, float]] = {}
        for f in result["fills"]:
            sign = 1 if f["side"] == "buy" else -1
            pos = net.setdefault(f["agent"], {"quantity": 0, "cash": 0.0})
            pos["quantity"] += sign * f["quantity"]
            pos["cash"] = cents(pos["cash"] - sign * f["quantity"] * f["price"])
        value = {"good": result["good"], "price": result["price"],
                 "quantity": result["quantity"], "positions": net}
        return write_all(session.variables, value)

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        verify_clearing(outcome.result)


def verify_clearing(r: dict[str, Any]) -> None:
    """Feasibility (as many units bought as sold), individual rationality (buyers pay at
    most, sellers get at least, their limits), no deficit (buyers' payments cover sellers)."""
    bought = sum(f["quantity"] for f in r["fills"] if f["side"] == "buy")
    sold = sum(f["quantity"] for f in r["fills"] if f["side"] == "sell")
    if bought != sold or bought != r["quantity"]:
        raise ProtocolError(f"{bought} units bought but {sold} sold")
    for f in r["fills"]:
        if (f["side"] == "buy" and f["price"] > f["limit"] + 1e-9) or \
                (f["side"] == "sell" and f["price"] < f["limit"] - 1e-9) or f["price"] < 0:
            raise ProtocolError(f"order {f['order']} of {f['agent']} fills at {f['price']}, "
                                f"beyond its limit {f['limit']}")
    paid = sum(f["quantity"] * f["price"] for f in r["fills"] if f["side"] == "buy")
    got = sum(f["quantity"] * f["price"] for f in r["fills"] if f["side"] == "sell")
    if paid < got - 1e-6:
        raise ProtocolError(f"deficit: buyers pay {paid}, sellers get {got}")
