"""Winner determination with item quantities: an item may have several identical units (2
chairs) and a bid asks for a multiset (1 chair and 1 table, or 2 chairs). Pick bids, at most
one per bidder (XOR), whose summed quantities fit every item's units, maximising the total
value. Exact branch and bound, or scipy's MILP solver (HiGHS) on the same problem.

wdp.py's bit-mask search cannot hold a count per item, so this is a search of its own over
bids rather than items: bids in a fixed order (value descending, then submission order),
each either taken (if its units fit and its bidder has not won yet) or skipped, taking
first. The bound at a node is the smaller of two that hold for any completion: (1) each
item's units left at the best value per unit of a bid still to come that fits, where a
bid's value per unit is its value over its total units, so the completion's value, summed
unit by unit, cannot exceed it; (2) each bidder not yet winning at the value of its best
bid still to come that fits. A node whose bound does not beat the incumbent by more than EPS
is pruned, so of several allocations with the same total the first one found in that order
is kept: the same input gives the same allocation. Taking first makes the first leaf the
greedy allocation by value, an incumbent from the first dive.

An `incumbent` (a feasible set of bids and its value) starts the search just below its
value: VCG's "everybody but winner i" problem is given the best allocation without i's bid,
which is feasible there and usually close. It prunes from the first node without changing
which allocation is kept (as wdp.py's greedy seed does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mabeam_auctions.wdp import EPS, Solution, milp_columns


@dataclass(frozen=True)
class MultiBid:
    bidder: int
    units: tuple[tuple[int, int], ...]  # (item index, quantity > 0), item indices ascending
    value: float


class _Timeout(Exception):
    pass


def solve_multi(bids: Sequence[MultiBid], capacity: Sequence[int], time_limit: float = 10.0,
                solver: str = "bnb", *, skip_bidder: int | None = None,
                incumbent: list[int] | None = None) -> Solution:
    """Solve over `bids` with `capacity[j]` units of item j, leaving out every bid of
    `skip_bidder` (for VCG). `solver`: bnb or milp (auto is resolved by the caller).
    `incumbent`: indices of a feasible set of bids to start from (bnb only; must not
    contain a bid of `skip_bidder`)."""
    idx = [i for i, b in enumerate(bids) if b.value > 0 and b.bidder != skip_bidder
           and b.units and all(q <= capacity[j] for j, q in b.units)]
    if solver == "milp":
        chosen, value, proven, bound, nodes = milp_columns(
            [bids[i].value for i in idx], [list(bids[i].units) for i in idx],
            [bids[i].bidder for i in idx], list(capacity), time_limit)
        return Solution(value, sorted(idx[k] for k in chosen), proven, bound, nodes, "milp")
    return _Search(bids, capacity, idx).run(time_limit, incumbent)


class _Search:
    def __init__(self, bids: Sequence[MultiBid], capacity: Sequence[int],
                 idx: list[int]) -> None:
        self.order = sorted(idx, key=lambda i: (-bids[i].value, i))
        self.bids = bids
        self.n_items = len(capacity)
        self.cap = list(capacity)
        self.val = [bids[i].value for i in self.order]
        self.need = [dict(bids[i].units) for i in self.order]
        self.who = [bids[i].bidder for i in self.order]
        self.per_unit = [bids[i].value / sum(q for _, q in bids[i].units) for i in self.order]
        self.best = 0.0
        self.best_set: list[int] = []  # positions in self.order
        self.nodes = 0
        self.deadline = 0.0

    def fits(self, k: int, cap: list[int], used: set[int]) -> bool:
        return self.who[k] not in used and all(cap[j] >= q for j, q in self.need[k].items())

    def bound(self, start: int, cap: list[int], used: set[int]) -> float:
        per_item = [0.0] * self.n_items
        per_bidder: dict[int, float] = {}
        for k in range(start, len(self.order)):
            if not self.fits(k, cap, used):
                continue
            for j in self.need[k]:
                per_item[j] = max(per_item[j], self.per_unit[k])
            if self.val[k] > per_bidder.get(self.who[k], 0.0):
                per_bidder[self.who[k]] = self.val[k]
        by_units = sum(cap[j] * per_item[j] for j in range(self.n_items))
        return min(by_units, sum(per_bidder.values()))

    def run(self, time_limit: float, incumbent: list[int] | None) -> Solution:
        self.deadline = time.monotonic() + time_limit
        used: set[int] = set()
        root = self.bound(0, self.cap, used)
        seed_value, seed_set = 0.0, []
        if incumbent:
            position = {i: k for k, i in enumerate(self.order)}
            seed_set = sorted(position[i] for i in incumbent if i in position)
            seed_value = sum(self.val[k] for k in seed_set)
            self.best = seed_value - 1e-6 * max(1.0, seed_value)
            self.best_set = seed_set
        optimal = True
        try:
            self.dfs(0, list(self.cap), used, 0.0, [])
        except _Timeout:
            optimal = False
        if seed_set and self.best_set is seed_set:  # nothing beat the lowered seed value
            self.best = seed_value
        bound = self.best if optimal else max(root, self.best)
        if bound - self.best <= EPS * max(1.0, abs(bound)):
            optimal, bound = True, self.best
        chosen = sorted(self.order[k] for k in self.best_set)
        return Solution(self.best, chosen, optimal, bound, self.nodes, "bnb")

    def dfs(self, k: int, cap: list[int], used: set[int], value: float,
            chosen: list[int]) -> None:
        self.nodes += 1
        if not self.nodes & 1023 and time.monotonic() > self.deadline:
            raise _Timeout
        if value > self.best + EPS * max(1.0, abs(value)):
            self.best, self.best_set = value, chosen
        n = len(self.order)
        while k < n and not self.fits(k, cap, used):
            k += 1  # bids that cannot be taken here are skipped without a node of their own
        if k == n or value + self.bound(k, cap, used) <= \
                self.best + EPS * max(1.0, abs(self.best)):
            return
        for j, q in self.need[k].items():
            cap[j] -= q
        used.add(self.who[k])
        self.dfs(k + 1, cap, used, value + self.val[k], [*chosen, k])
        used.discard(self.who[k])
        for j, q in self.need[k].items():
            cap[j] += q
        self.dfs(k + 1, cap, used, value, chosen)
