"""Generate CATS-style combinatorial auction instances (for the tests and the benchmark).

The distributions follow Leyton-Brown, Pearson and Shoham, "Towards a universal test suite
for combinatorial auction algorithms" (EC 2000), with the defaults of the CATS 2.x generator
where the paper leaves a choice open; every departure is listed below. Each instance is drawn
from `random.Random(seed)` alone (no global RNG, no numpy), so the same (dist, goods, bids,
seed) always gives the same text. Output is CATS file text as `cats.parse_cats` reads it:
`goods N`, `bids M`, `dummy D`, then `ID PRICE GOOD ... #`; the bids of one XOR bidder (two
or more bids) share one dummy good numbered N, N+1, ... Prices have 2 decimals and are > 0;
a bid never names a good twice and always has at least one real good. Exactly `bids` bids
come out (the last bidder's substitutes are cut to fit).

Common to the XOR bidders (regions, arbitrary, paths, matching, scheduling): a bid that
another bid of the same bidder dominates (a subset of its goods at a price at least as high)
is dropped, as CATS' `remove_dominated_bids` does; for single bids (legacy, one-bid bidders)
the rule is applied against all single bids. paths, as CATS, skips this when bidders may
bid on more than one path (max_bid_set_size > 1, the default).

regions (real estate; paper 4.2): goods on a grid of rows = floor(sqrt(N)) and
    ceil(N / rows) columns (CATS cuts N down to floor(sqrt(N))^2 instead: we keep N and leave
    the last row short). Horizontal and vertical neighbours are joined, each link removed with
    probability remove_neighbor 0.1; at each cell a diagonal link is added with probability
    additional_neighbor 0.2 (one of the two diagonals, at random). Common value per good
    c ~ U[1, max_good_value 100]. Each bidder draws private values p ~ U[-dev*100, dev*100]
    (deviation 0.5) per good and the weights pn ∝ p + dev*100. The first good is drawn by pn;
    then, while U[0,1] <= additional_location 0.9, a good is added: with jump_prob 0.05 any
    good not in the bundle, uniformly, else a good adjacent to the bundle with probability
    ∝ pn(g) x (number of bundle goods it neighbours). Value = sum(c + p) + |B|^(1 +
    additivity 0.2); a bundle of value <= 0 is drawn again. Substitutes: from each good of
    the bundle, a bundle of the same size grown by the same rule; kept when 0 < value <=
    budget_factor 1.5 x value(B), common value >= resale_factor 0.5 x common(B), not equal to
    B or an earlier substitute; up to max_substitutable_bids 5, highest value first. CATS
    draws uniform or normal private values at random per instance (-upv / -npv): we always
    draw uniform (upv).
arbitrary (paper 4.3): regions without geometry: every pair of goods has a complementarity
    d(a, b) ~ U(0, 1] (symmetric), and the next good is drawn with probability ∝ pn(g) x
    sum over the bundle's goods a of d(a, g); no jumps. Everything else as regions.
paths (transport links; paper 4.1): cities = max(3, floor(1.2 N / edge_density 3))
    uniform in the unit square; goods are the roads. Each city builds roads to its
    initial_connections 2 nearest cities, and then random city pairs build, until there are
    N roads: a build lays the cheapest route in the complete graph where an existing road
    costs its length and a new one building_penalty 1.7 x its length, adding the new roads
    on it. CATS goes on to edge_density x cities roads and then drops the roads no bid
    names; we stop at exactly N roads (some may stay unbid; a city count that stalls is
    raised by one, and a map that is not connected drawn again, as in CATS). A bidder
    picks two cities, draws d ~ U[1, shipping_cost_factor 1.5], and bids on the
    max_bid_set_size 5 cheapest simple paths of cost (sum of road lengths) below d x the
    straight-line distance; price = that limit minus the path's cost. A bidder with no
    such path bids nothing. Prices are scaled x1000 (the unit square makes them small).
matching (airport slots; paper 4.4, the FAA take-off and landing setting): 4 airports at
    CATS' coordinates (ORD, DCA, JFK, LGA; no JFK-LGA flights); goods are (time, airport)
    slots, good = (t - 1) * 4 + airport for t in 1..floor(N / 4) (with N % 4 != 0 the last
    goods are never bid on; CATS refuses such N). Airport costs ~ U[0, max_airport_price 5].
    A bidder draws a route, a flight time round(L x dist / max dist) with L = the longest
    flight time (min(10, T // 2) slots: CATS' value for this is not in the paper; this is
    our choice), a start time, dev ~ U[1 - 0.5, 1 + 0.5], and bids XOR on every take-off in
    [start - early_takeoff_deviation 1, start + late_takeoff_deviation 2] with every landing
    from take-off + flight time to start + flight time + late_landing_deviation 2: price =
    dev x (cost(from) + cost(to)) x delay_coeff 0.9^delay x amount_late_coeff 0.75^late,
    delay = extra time in the air, late = landing after the planned time. CATS computes
    `late` with min(.., 0), which makes it never positive (so never penalised); we use
    max(.., 0), the definition in the paper. Prices are scaled x100.
scheduling (one machine, jobs with deadlines; paper 4.5, after Wellman et al.): goods are
    time slots. A bidder's job needs l ~ U{1..max_length 10} contiguous slots (l <= N);
    deadline d1 ~ U{l - 1 .. N - 1}, dev ~ U[1 - 0.5, 1 + 0.5]; for each deadline d (d1
    first, then, with probability prob_additional_deadline 0.7 each, a later one uniform
    after the previous) it bids XOR on every interval [s, s + l - 1] that ends by d and
    after the previous deadline, at dev x l^(1 + additivity 0.2) x (d1 + 1) / (d + 1).
    CATS writes d1 / d with slots counted from 0, which is 0 / 0 for a deadline at slot 0;
    we count deadlines from 1. Prices scaled x100.
L2 (Sandholm's "weighted random", CATS legacy L2): bundle size uniform in 1..N, goods
    uniform without replacement, price uniform in [0, size] scaled x1000, i.e.
    U[0, 1000 x size].
L3 (Sandholm's "uniform", CATS legacy L3): 3 goods per bid (fewer when N < 3), price
    U[0, 1] scaled x1000.

Prices are rounded to 2 decimals after scaling (and raised to 0.01 if that makes them 0);
the scalings only change the unit. Goods and bids are given as counts; `goods` >= 1 (paths:
>= 3, matching: >= 8), `bids` >= 1.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import sys
from collections.abc import Callable
from typing import Any

from mabeam_auctions.cats import parse_cats

DISTRIBUTIONS = ("arbitrary", "regions", "paths", "matching", "scheduling", "L2", "L3")
MIN_GOODS = {"paths": 3, "matching": 8}

# (goods, price) bids of one bidder, in generation order
Bidder = list[tuple[list[int], float]]


class _Bids:
    """The bid list being built: XOR bidders' sets, dominance removal, the exact count."""

    def __init__(self, target: int, dominance: bool = True) -> None:
        self.target = target
        self.dominance = dominance
        self.bidders: list[Bidder] = []
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.target

    def add(self, bids: Bidder) -> None:
        if not self.dominance:
            if bids:
                self.bidders.append(bids)
                self.count += len(bids)
            return
        kept: Bidder = []
        for goods, price in bids:  # within one bidder: drop dominated, keep first of equals
            g = set(goods)
            if any(set(k) <= g and p >= price for k, p in kept):
                continue
            kept = [(k, p) for k, p in kept if not (g <= set(k) and price >= p)]
            kept.append((goods, price))
        if not kept:
            return
        if len(kept) == 1:  # a single bid: dominance against every other single bid
            goods, price = kept[0]
            g = set(goods)
            singles = [b for b in self.bidders if len(b) == 1]
            if any(set(b[0][0]) <= g and b[0][1] >= price for b in singles):
                return
            gone = [b for b in singles if g <= set(b[0][0]) and price >= b[0][1]]
            if gone:
                ids = {id(b) for b in gone}
                self.bidders = [b for b in self.bidders if id(b) not in ids]
                self.count -= len(gone)
        self.bidders.append(kept)
        self.count += len(kept)

    def text(self, goods: int, comment: str) -> str:
        extra = self.count - self.target
        if extra > 0:  # the last bidder's last substitutes go
            self.bidders[-1] = self.bidders[-1][:len(self.bidders[-1]) - extra]
        dummy = 0
        lines = []
        for bidder in self.bidders:
            tag = []
            if len(bidder) > 1:
                tag = [goods + dummy]
                dummy += 1
            for g, price in bidder:
                lines.append((sorted(g) + tag, price))
        out = [f"% {comment}", f"goods {goods}", f"bids {len(lines)}", f"dummy {dummy}", ""]
        out += [f"{k} {p:.2f} " + " ".join(map(str, g)) + " #" for k, (g, p) in enumerate(lines)]
        return "\n".join(out) + "\n"


def _price(value: float, scale: float = 1.0) -> float:
    return max(0.01, round(value * scale, 2))


def _pick(rng: random.Random, weights: list[float]) -> int:
    """Index drawn with probability proportional to the weights (some weight > 0)."""
    total = sum(weights)
    r = rng.random() * total
    acc = 0.0
    last = 0
    for i, w in enumerate(weights):
        if w > 0:
            acc += w
            last = i
            if r < acc:
                return i
    return last  # rounding: the last positive weight


# ---- regions and arbitrary ------------------------------------------------------------

REGIONS = {"max_good_value": 100.0, "max_substitutable_bids": 5, "remove_neighbor": 0.1,
           "additional_neighbor": 0.2, "additional_location": 0.9, "jump_prob": 0.05,
           "additivity": 0.2, "deviation": 0.5, "budget_factor": 1.5, "resale_factor": 0.5}


def grid(goods: int, rng: random.Random, remove: float = 0.1,
         diagonal: float = 0.2) -> list[set[int]]:
    """The regions map: neighbour sets of goods 0..goods-1 on a rows x cols grid."""
    rows = max(1, math.isqrt(goods))
    cols = -(-goods // rows)
    adj: list[set[int]] = [set() for _ in range(goods)]

    def join(a: tuple[int, int], b: tuple[int, int]) -> None:
        x, y = a[0] * cols + a[1], b[0] * cols + b[1]
        if 0 <= b[1] < cols and 0 <= b[0] < rows and x < goods and y < goods:
            adj[x].add(y)
            adj[y].add(x)

    for i in range(rows):
        for j in range(cols):
            if rng.random() > remove:
                join((i, j), (i + 1, j))
            if rng.random() > remove:
                join((i, j), (i, j + 1))
            if rng.random() < diagonal:
                if rng.randrange(2) == 0:
                    join((i, j), (i + 1, j + 1))
                else:
                    join((i + 1, j), (i, j + 1))
    return adj


def _xor_bundles(goods: int, n_bids: int, rng: random.Random, p: dict[str, Any], *,
                 weight: Callable[[int, int, list[float]], float], jump: float) -> _Bids:
    """Regions / arbitrary bidders; weight(a, g, pn): how much bundle good a draws good g."""
    top, dev = p["max_good_value"], p["deviation"]
    common = [rng.uniform(1, top) for _ in range(goods)]
    out = _Bids(n_bids)
    s: float = 1 + p["additivity"]
    attempts = 0
    while not out.full():
        attempts += 1
        if attempts > 200 * n_bids + 1000:
            raise ValueError("generation stalled: too few valid bundles")
        private = [rng.uniform(-dev * top, dev * top) for _ in range(goods)]
        pn = [x + dev * top for x in private]

        def grow(bundle: list[int], size: int | None, pn: list[float] = pn) -> None:
            """Add goods to `bundle`: while U <= additional_location (size None) or up to
            `size` goods. The draw weights are kept up to date as goods join."""
            w = [0.0] * goods
            for a in bundle:
                for g in range(goods):
                    w[g] += weight(a, g, pn)
            inside = set(bundle)
            while len(bundle) < goods:
                if size is None and rng.random() > p["additional_location"]:
                    return
                if size is not None and len(bundle) >= size:
                    return
                if rng.random() < jump:
                    g = _pick(rng, [0.0 if x in inside else 1.0 for x in range(goods)])
                else:
                    cand = [0.0 if x in inside else w[x] for x in range(goods)]
                    if sum(cand) <= 0:
                        if size is None:
                            continue  # CATS: nothing adjacent, nothing added this time
                        cand = [0.0 if x in inside else 1.0 for x in range(goods)]
                    g = _pick(rng, cand)
                bundle.append(g)
                inside.add(g)
                for x in range(goods):
                    w[x] += weight(g, x, pn)

        def value(b: list[int], private: list[float] = private) -> float:
            return sum(common[g] + private[g] for g in b) + math.pow(len(b), s)

        first = [_pick(rng, pn)]
        grow(first, None)
        v = value(first)
        if v <= 0:
            continue
        budget, resale = p["budget_factor"] * v, p["resale_factor"] * sum(common[g]
                                                                          for g in first)
        subs = []
        for g in first:
            b = [g]
            grow(b, len(first))
            subs.append((value(b), b))
        subs.sort(key=lambda e: -e[0])  # stable: ties keep the order they were drawn in
        bids: Bidder = [(first, v)]
        seen = [set(first)]
        for sv, b in subs:
            if len(bids) > p["max_substitutable_bids"]:
                break
            if 0 < sv <= budget and sum(common[g] for g in b) >= resale and set(b) not in seen:
                seen.append(set(b))
                bids.append((b, sv))
        out.add([(b, _price(x)) for b, x in bids])
    return out


def regions_map(goods: int, rng: random.Random, p: dict[str, Any]) -> list[set[int]]:
    adj = grid(goods, rng, p["remove_neighbor"], p["additional_neighbor"])
    while goods > 1 and not all(adj):  # CATS draws the map again if a good is isolated
        adj = grid(goods, rng, p["remove_neighbor"], p["additional_neighbor"])
    return adj


def regions(goods: int, bids: int, rng: random.Random, **kw: Any) -> _Bids:
    p = {**REGIONS, **kw}
    adj = regions_map(goods, rng, p)
    return _xor_bundles(goods, bids, rng, p, weight=lambda a, g, pn: pn[g] if g in adj[a]
                        else 0.0, jump=p["jump_prob"])


def arbitrary(goods: int, bids: int, rng: random.Random, **kw: Any) -> _Bids:
    p = {**REGIONS, **kw}
    d = [[0.0] * goods for _ in range(goods)]
    for i in range(goods):
        for j in range(i + 1, goods):
            d[i][j] = d[j][i] = 1.0 - rng.random()  # (0, 1]: nothing has zero probability
    return _xor_bundles(goods, bids, rng, p, weight=lambda a, g, pn: pn[g] * d[a][g], jump=0.0)


# ---- paths ------------------------------------------------------------------------------

PATHS = {"initial_connections": 2, "edge_density": 3.0, "building_penalty": 1.7,
         "shipping_cost_factor": 1.5, "max_bid_set_size": 5}


def road_graph(goods: int, rng: random.Random, p: dict[str, Any]
               ) -> tuple[list[tuple[float, float]], dict[tuple[int, int], int]]:
    """Cities and exactly `goods` roads: {(a, b) with a < b: good number}."""
    cities = max(3, int(1.2 * goods / p["edge_density"]))
    while True:
        pts = [(rng.random(), rng.random()) for _ in range(cities)]
        roads: dict[tuple[int, int], int] = {}
        dist = [[math.dist(u, v) for v in pts] for u in pts]
        # cost of a link: its length if the road is there, building_penalty x length if not
        cost = [[x * p["building_penalty"] for x in row] for row in dist]

        def build(a: int, b: int, roads: dict[tuple[int, int], int] = roads,
                  cost: list[list[float]] = cost, dist: list[list[float]] = dist) -> bool:
            # Dijkstra on the complete graph, from a until b is settled
            best = [math.inf] * len(cost)
            prev = [-1] * len(cost)
            best[a] = 0.0
            todo = list(range(len(cost)))
            while todo:
                u = min(todo, key=best.__getitem__)
                todo.remove(u)
                if u == b:
                    break
                bu, cu = best[u], cost[u]
                for v in todo:
                    if bu + cu[v] < best[v]:
                        best[v], prev[v] = bu + cu[v], u
            made = False
            v = b
            while v != a and len(roads) < goods:
                key = (min(v, prev[v]), max(v, prev[v]))
                if key not in roads:
                    roads[key] = len(roads)
                    cost[v][prev[v]] = cost[prev[v]][v] = dist[v][prev[v]]
                    made = True
                v = prev[v]
            return made

        for c in range(cities):
            near = sorted((x for x in range(cities) if x != c), key=lambda x: (dist[c][x], x))
            for x in near[:p["initial_connections"]]:
                build(c, x)
        idle = 0
        while len(roads) < goods and idle <= cities:
            a, b = rng.sample(range(cities), 2)
            idle = 0 if build(a, b) else idle + 1
        if len(roads) < goods:
            cities += 1  # stalled (CATS: more cities and again)
            continue
        reach, todo = {0}, [0]
        while todo:
            u = todo.pop()
            for v in range(cities):
                if v not in reach and (min(u, v), max(u, v)) in roads:
                    reach.add(v)
                    todo.append(v)
        if len(reach) == cities:  # CATS draws again when the map is not connected
            return pts, roads


def paths(goods: int, n_bids: int, rng: random.Random, **kw: Any) -> _Bids:
    p = {**PATHS, **kw}
    pts, roads = road_graph(goods, rng, p)
    adj: dict[int, list[int]] = {}
    for a, b in roads:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    out = _Bids(n_bids, dominance=p["max_bid_set_size"] == 1)  # as CATS
    attempts = 0
    while not out.full():
        attempts += 1
        if attempts > 200 * n_bids + 1000:
            raise ValueError("generation stalled: no paths found")
        src, dst = rng.sample(range(len(pts)), 2)
        limit = rng.uniform(1, p["shipping_cost_factor"]) * math.dist(pts[src], pts[dst])
        found = cheapest_paths(pts, adj, src, dst, limit=limit, k=p["max_bid_set_size"])
        out.add([([roads[(min(a, b), max(a, b))] for a, b in itertools.pairwise(route)],
                  _price(limit - cost, 1000)) for cost, route in found])
    return out


def cheapest_paths(pts: list[tuple[float, float]], adj: dict[int, list[int]], src: int,
                   dst: int, *, limit: float, k: int) -> list[tuple[float, list[int]]]:
    """Up to k simple paths src -> dst of cost < limit, cheapest first (best-first search
    with the straight-line distance as the (admissible) estimate)."""
    found: list[tuple[float, list[int]]] = []
    h = [(math.dist(pts[src], pts[dst]), 0.0, [src])]
    pops = 0
    while h and len(found) < k and pops < 200_000:
        f, cost, route = heapq.heappop(h)
        pops += 1
        if f >= limit:
            break
        u = route[-1]
        if u == dst:
            found.append((cost, route))
            continue
        for v in sorted(adj.get(u, ())):
            if v not in route:
                c = cost + math.dist(pts[u], pts[v])
                heapq.heappush(h, (c + math.dist(pts[v], pts[dst]), c, [*route, v]))
    return found


# ---- matching ---------------------------------------------------------------------------

AIRPORTS = [(-87.75, 41.98333333), (-77.03333333, 38.85), (-73.783333, 40.65),
            (-73.8666666, 40.76666666)]  # CATS' four: Chicago, Washington, two in New York
MATCHING = {"max_airport_price": 5.0, "deviation": 0.5, "early_takeoff_deviation": 1,
            "late_takeoff_deviation": 2, "late_land_deviation": 2, "delay_coeff": 0.9,
            "amount_late_coeff": 0.75, "longest_flight": 10}


def matching(goods: int, n_bids: int, rng: random.Random, **kw: Any) -> _Bids:
    p = {**MATCHING, **kw}
    times = goods // 4
    routes = [(a, b) for a in range(4) for b in range(4) if a != b and {a, b} != {2, 3}]
    far = max(math.dist(AIRPORTS[a], AIRPORTS[b]) for a, b in routes)
    longest = min(p["longest_flight"], times // 2)
    cost = [rng.random() * p["max_airport_price"] for _ in range(4)]
    out = _Bids(n_bids)
    while not out.full():
        a, b = routes[rng.randrange(len(routes))]
        fly = round(longest * math.dist(AIRPORTS[a], AIRPORTS[b]) / far)
        start = 1 if times == fly else 1 + rng.randrange(times - fly)
        dev = 1 - p["deviation"] + 2 * rng.random() * p["deviation"]
        bids: Bidder = []
        for up in range(max(1, start - p["early_takeoff_deviation"]),
                        min(times, start + p["late_takeoff_deviation"]) + 1):
            for down in range(up + fly, min(start + fly + p["late_land_deviation"], times) + 1):
                late = max(down - (start + fly), 0)
                delay = max(down - up - fly, 0)
                v = dev * (cost[a] + cost[b]) * p["delay_coeff"] ** delay * \
                    p["amount_late_coeff"] ** late
                bids.append(([(up - 1) * 4 + a, (down - 1) * 4 + b], _price(v, 100)))
        out.add(bids)
    return out


# ---- scheduling -------------------------------------------------------------------------

SCHEDULING = {"max_length": 10, "deviation": 0.5, "prob_additional_deadline": 0.7,
              "additivity": 0.2}


def scheduling(goods: int, n_bids: int, rng: random.Random, **kw: Any) -> _Bids:
    p = {**SCHEDULING, **kw}
    out = _Bids(n_bids)
    while not out.full():
        length = 1 + rng.randrange(min(p["max_length"], goods))
        d1 = length - 1 + rng.randrange(goods - length + 1)
        dev = 1 - p["deviation"] + 2 * rng.random() * p["deviation"]
        bids: Bidder = []
        done, d = -1, d1
        while True:
            for start in range(goods):
                end = start + length - 1
                if end <= d and end > done:
                    v = dev * length ** (1 + p["additivity"]) * (d1 + 1) / (d + 1)
                    bids.append((list(range(start, end + 1)), _price(v, 100)))
            done = d
            if done == goods - 1 or rng.random() > p["prob_additional_deadline"]:
                break
            d = done + 1 + rng.randrange(goods - done - 1)
        out.add(bids)
    return out


# ---- legacy -----------------------------------------------------------------------------

def legacy(goods: int, n_bids: int, rng: random.Random, size: Callable[[], int],
           price: Callable[[int], float]) -> _Bids:
    out = _Bids(n_bids)
    attempts = 0
    while not out.full():
        attempts += 1
        if attempts > 200 * n_bids + 1000:
            raise ValueError("generation stalled: too many dominated bids")
        n = size()
        out.add([(rng.sample(range(goods), n), _price(price(n)))])
    return out


def l2(goods: int, n_bids: int, rng: random.Random) -> _Bids:
    return legacy(goods, n_bids, rng, lambda: rng.randint(1, goods),
                  lambda n: rng.uniform(0, 1000 * n))


def l3(goods: int, n_bids: int, rng: random.Random, const_goods: int = 3) -> _Bids:
    return legacy(goods, n_bids, rng, lambda: min(const_goods, goods),
                  lambda n: rng.uniform(0, 1000))


GENERATORS: dict[str, Callable[..., _Bids]] = {
    "arbitrary": arbitrary, "regions": regions, "paths": paths, "matching": matching,
    "scheduling": scheduling, "L2": l2, "L3": l3}


def check(dist: str, goods: int, bids: int) -> None:
    if dist not in GENERATORS:
        raise ValueError(f"unknown distribution {dist!r} (one of {', '.join(DISTRIBUTIONS)})")
    low = MIN_GOODS.get(dist, 1)
    if not isinstance(goods, int) or goods < low or goods > 10_000:
        raise ValueError(f"goods must be an integer in {low}..10000 for {dist}")
    if not isinstance(bids, int) or bids < 1 or bids > 1_000_000:
        raise ValueError("bids must be an integer in 1..1000000")
    if dist == "L3" and bids > math.comb(goods, min(3, goods)):
        # distinct non-dominated 3-good bids: at most one per 3-good set
        raise ValueError(f"L3 on {goods} goods has at most {math.comb(goods, min(3, goods))} "
                         "bids (one per 3-good set)")


def _rng(dist: str, goods: int, bids: int, seed: int) -> random.Random:
    return random.Random(f"{dist}/{goods}/{bids}/{seed}")


def generate(dist: str, goods: int, bids: int, seed: int, **params: Any) -> str:
    """CATS file text of `bids` bids on `goods` goods from `dist`, drawn from seed alone.
    `params` override the distribution's defaults (names as in the module docstring)."""
    check(dist, goods, bids)
    rng = _rng(dist, goods, bids, seed)
    made = GENERATORS[dist](goods, bids, rng, **params)
    extra = "".join(f", {k}={v}" for k, v in sorted(params.items()))
    return made.text(goods, f"mabeam_auctions.instances {dist} goods={goods} bids={bids} "
                            f"seed={seed}{extra}")


def layout(dist: str, goods: int, bids: int, seed: int,
           **params: Any) -> dict[int, set[int]]:
    """The geometry behind an instance generate(...) gives, for checking it: regions' map
    (good: its neighbouring goods) or paths' roads (good: the two cities it joins)."""
    check(dist, goods, bids)
    rng = _rng(dist, goods, bids, seed)
    if dist == "regions":
        return dict(enumerate(regions_map(goods, rng, {**REGIONS, **params})))
    if dist == "paths":
        return {good: set(ends) for ends, good in road_graph(goods, rng,
                                                             {**PATHS, **params})[1].items()}
    raise ValueError(f"{dist} has no layout (regions and paths do)")


def generate_input(dist: str, goods: int, bids: int, seed: int,
                   **params: Any) -> dict[str, Any]:
    """The combinatorial protocol's input (parse_cats of generate(...))."""
    return parse_cats(generate(dist, goods, bids, seed, **params))


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse adds a usage block)
        print(f"instances: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Args(prog="python -m mabeam_auctions.instances",
              description="CATS-style combinatorial auction instances")
    p.add_argument("dist", help=", ".join(DISTRIBUTIONS))
    p.add_argument("--goods", default="100")
    p.add_argument("--bids", default="500")
    p.add_argument("--seed", default="0")
    p.add_argument("--json", action="store_true",
                   help="print the combinatorial protocol's JSON input instead")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        n: dict[str, int] = {}
        for name in ("goods", "bids", "seed"):
            try:
                n[name] = int(getattr(args, name))
            except ValueError:
                raise ValueError(f"--{name} must be an integer, not "
                                 f"{getattr(args, name)!r}") from None
        dist = {d.lower(): d for d in DISTRIBUTIONS}.get(args.dist.lower(), args.dist)
        text = generate(dist, n["goods"], n["bids"], n["seed"])
    except ValueError as e:
        print(f"instances: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(parse_cats(text)) + "\n" if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
