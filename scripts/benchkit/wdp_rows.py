"""Benchmark rows: winner determination on generated CATS-style instances
(mabeam_auctions.instances), one row per distribution: our solver (wdp.solve with
solver="milp": HiGHS with mip_rel_gap 0, so "optimal" means proven) against scipy's milp
with its default options on the identical formulation (each item in at most one winning
bid, at most one bid per bidder, binary), in the same run, on the same instances."""

from __future__ import annotations

import time
from typing import Any

from benchkit import Row
from benchkit.stats import fmt, percentile

DISTS = ("arbitrary", "regions", "paths", "matching", "scheduling", "L2", "L3")


def solver_bids(inputs: dict[str, Any]) -> tuple[list[Any], int]:
    """The wdp.Bid list of a parsed CATS instance (bidder numbers in order of appearance)."""
    from mabeam_auctions.wdp import Bid

    n = len(inputs["params"]["items"])
    out = []
    for k, r in enumerate(inputs["responses"]):
        for b in r["value"]["bids"]:
            out.append(Bid(k, sum(1 << int(i) for i in b["items"]), float(b["price"])))
    return out, n


def peer_milp(bids: list[Any], n_items: int, time_limit: float) -> tuple[float, bool]:
    """scipy.optimize.milp, default options but the time limit, on the formulation
    wdp.solve_milp builds (wdp.packing). (value, status == 0)."""
    import numpy as np
    from mabeam_auctions.wdp import item_entries, packing
    from scipy.optimize import Bounds, milp

    c, constraints = packing([b.value for b in bids], [item_entries(b, n_items) for b in bids],
                             [b.bidder for b in bids], [1] * n_items)
    res = milp(c, constraints=constraints, integrality=np.ones(len(bids)),
               bounds=Bounds(0, 1), options={"time_limit": time_limit})
    value = float(-res.fun) if res.x is not None else 0.0
    return value, res.status == 0


def rows(goods: int, n_bids: int, seeds: int, time_limit: float = 30.0) -> list[Row]:
    from mabeam_auctions.instances import generate_input
    from mabeam_auctions.wdp import milp_available, solve

    if not milp_available():
        return [Row(f"winner determination {d}, {goods} goods x {n_bids} bids", "s",
                    status="not run", note="scipy not installed") for d in DISTS]
    import scipy

    out = []
    for dist in DISTS:
        cases = [solver_bids(generate_input(dist, goods, n_bids, s)) for s in range(seeds)]
        solve(*cases[0], time_limit=time_limit, solver="milp")  # warm-up: imports
        ours, theirs, proven, peer_proven, disagree = [], [], 0, 0, 0
        for bids, n in cases:
            t0 = time.perf_counter()
            sol = solve(bids, n, time_limit=time_limit, solver="milp")
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            value, ok = peer_milp(bids, n, time_limit)
            theirs.append(time.perf_counter() - t0)
            proven += sol.optimal
            peer_proven += ok
            if sol.optimal and ok and abs(sol.value - value) > 1e-4 * max(1.0, value):
                disagree += 1
        p95, peer95 = percentile(ours, 95), percentile(theirs, 95)
        out.append(Row(
            f"winner determination {dist}, {goods} goods x {n_bids} bids (proven optimal)",
            "s", goal="all proven, max <= 30", p50=percentile(ours, 50), p95=p95,
            p99=max(ours), samples=len(ours), reps=1,
            peer=f"scipy {scipy.__version__} milp defaults (HiGHS, rel gap 1e-4)",
            peer_value=peer95, ratio=p95 / peer95 if peer95 else None,
            note=f"proven optimal {proven}/{len(cases)} (peer: {peer_proven}/{len(cases)} "
                 f"within its default gap); max {fmt(max(ours))} s, peer p50 "
                 f"{fmt(percentile(theirs, 50))} / max {fmt(max(theirs))} s; "
                 f"{time_limit:g} s limit per solve; p99 column = max; seeds 0..{seeds - 1}"
                 + (f"; {disagree} instances where both proven values differ" if disagree
                    else ""),
            extra={"proven": proven, "peer_proven": peer_proven, "n": len(cases),
                   "max": max(ours), "peer_p50": percentile(theirs, 50),
                   "peer_max": max(theirs), "times": ours, "peer_times": theirs,
                   "disagree": disagree}))
    return out
