"""A continuous double auction's limit order book: price-time priority, limit and market
orders, partial fills, cancels. Pure and in-process: the `continuous_double_auction`
protocol drives one per session, and any program can use `OrderBook` directly.

Matching: an incoming order trades against the best resting orders on the other side while
prices cross (a buy at or above the best ask, a sell at or below the best bid), always at the
resting order's price; within a price level the earliest order fills first. What is left of
a limit order rests in the book; what is left of a market order is cancelled (it never
rests). An agent's orders may trade with each other. Invariants (property-tested): the book
is never crossed, and every order's quantity is filled + resting + cancelled.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

# A resting order: [id, agent, side ("buy"/"sell"), price, remaining quantity]
Resting = list[Any]
# A trade: (maker order id, maker agent, taker order id, taker agent, taker side, price, qty)
Trade = tuple[int, str, int, str, str, float, int]


class OrderBook:
    def __init__(self) -> None:
        self.levels: dict[str, dict[float, deque[Resting]]] = {"buy": {}, "sell": {}}
        # Heaps of prices with lazy deletion: a price whose level is gone is skipped.
        self._bid_heap: list[float] = []  # negated prices
        self._ask_heap: list[float] = []
        self.orders: dict[int, Resting] = {}
        self.next_id = 1

    def best_bid(self) -> float | None:
        h, lv = self._bid_heap, self.levels["buy"]
        while h and -h[0] not in lv:
            heapq.heappop(h)
        return -h[0] if h else None

    def best_ask(self) -> float | None:
        h, lv = self._ask_heap, self.levels["sell"]
        while h and h[0] not in lv:
            heapq.heappop(h)
        return h[0] if h else None

    def submit(self, agent: str, side: str, quantity: int, price: float | None = None,
               ) -> tuple[int, list[Trade], int]:
        """Place an order (price None = market order). Returns (order id, trades, quantity
        left resting)."""
        oid = self.next_id
        self.next_id += 1
        trades: list[Trade] = []
        left = quantity
        if side == "buy":
            other, heap, sign = self.levels["sell"], self._ask_heap, 1.0
        else:
            other, heap, sign = self.levels["buy"], self._bid_heap, -1.0
        while left and heap:
            best = sign * heap[0]
            level = other.get(best)
            if level is None:
                heapq.heappop(heap)
                continue
            if price is not None and (best > price if side == "buy" else best < price):
                break
            while left and level:
                maker = level[0]
                t = maker[4] if maker[4] < left else left
                maker[4] -= t
                left -= t
                trades.append((maker[0], maker[1], oid, agent, side, best, t))
                if not maker[4]:
                    level.popleft()
                    del self.orders[maker[0]]
            if not level:
                del other[best]
                heapq.heappop(heap)
        if left and price is not None:
            self._rest([oid, agent, side, price, left])
            return oid, trades, left
        return oid, trades, 0

    def _rest(self, order: Resting) -> None:
        side, price = order[2], order[3]
        levels = self.levels[side]
        level = levels.get(price)
        if level is None:
            level = levels[price] = deque()
            heapq.heappush(self._bid_heap if side == "buy" else self._ask_heap,
                           -price if side == "buy" else price)
        level.append(order)
        self.orders[order[0]] = order

    def cancel(self, oid: int) -> Resting | None:
        """Remove a resting order; returns it (with what was left) or None if it is not
        resting (filled, cancelled, never existed)."""
        order = self.orders.pop(oid, None)
        if order is None:
            return None
        levels = self.levels[order[2]]
        level = levels[order[3]]
        level.remove(order)
        if not level:
            del levels[order[3]]  # its heap entry goes lazily
        return order

    def depth(self, side: str, n: int = 10) -> list[list[float]]:
        """The best `n` price levels of a side as [price, total quantity]."""
        prices = sorted(self.levels[side], reverse=side == "buy")[:n]
        return [[p, sum(o[4] for o in self.levels[side][p])] for p in prices]
