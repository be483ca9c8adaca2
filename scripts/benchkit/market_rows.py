"""Rows for the exchange (Arrow-Debreu) market, in-process: the linear 50 x 50 equilibrium to
1e-6 through the protocol's own decide_typed (params, degenerate rules, numeraire, certificate
included), as the Fisher row in econ_rows.py times the Fisher solver."""

from __future__ import annotations

import random
from typing import Any

from benchkit import Row
from benchkit.econ_rows import _row, _timed


def economy(seed: int, n: int = 50, m: int = 50) -> list[Any]:
    """Sparse random utilities with i valuing good i and i bringing good i + 1, so the
    economy graph has the cycle i -> i - 1 through every agent (strongly connected, Gale)."""
    from mabeamd.protocol import Response

    r = random.Random(seed)
    out = []
    for i in range(n):
        u = {f"g{j}": r.uniform(0.1, 1) for j in range(m) if r.random() < 0.5}
        u[f"g{i % m}"] = max(u.get(f"g{i % m}", 0.0), 0.05)
        e = {f"g{j}": r.uniform(0.5, 5) for j in range(m) if r.random() < 0.2}
        e[f"g{(i + 1) % m}"] = e.get(f"g{(i + 1) % m}", 0.0) + 1.0
        out.append(Response(f"a{i:02d}", {"endowment": e, "utilities": u}, i + 1))
    return out


def exchange(cases: int, reps: int) -> list[Row]:
    from mabeam_markets.exchangemarket import ExchangeMarket

    proto = ExchangeMarket()
    rows = []
    for utility, goal in (("linear", "p95 <= 25"), ("cobb_douglas", "-")):
        params = proto.check_params({"goods": [f"g{j}" for j in range(50)],
                                     "utility": utility, "tolerance": 1e-6})
        econ = [economy(s) for s in range(cases)]
        certified: list[bool] = []
        rounds: list[int] = []

        def one(k: int, params: dict[str, Any] = params, econ: list[Any] = econ,
                certified: list[bool] = certified, rounds: list[int] = rounds) -> None:
            out = proto.decide_typed(params, [], econ[k % len(econ)])
            certified.append(out["certified"])
            rounds.append(out["rounds"])
        runs, _ = _timed(one, cases, reps)
        how = ("Newton stages with budgets := value of the endowments + exact "
               f"spending-forest step; {sum(r > 0 for r in rounds)} fell back to Fisher rounds"
               if utility == "linear" else "exact linear system per closed class (numpy)")
        rows.append(_row(f"exchange market 50x50 {utility.replace('_', '-')}, to 1e-6", "ms",
                         runs, goal=goal,
                         note=f"certified {sum(certified)}/{len(certified)}; {how}"))
    return rows
