"""Exchange (Arrow-Debreu) market equilibrium: agents bring endowments instead of budgets.

An agent's budget is the value of what it brings, p . e_i, so prices and budgets are one
fixed point. Work in whole-supply units: q_j = p_j * s_j (s_j = sum_i e_ij, the good's whole
supply) and f_ij = e_ij / s_j (agent i's share of good j); the budget is B_i = sum_j f_ij q_j
and only relative prices matter (every budget scales with them), so a numeraire fixes them.

- Cobb-Douglas: agent i spends the share a_ij / sum_k a_ik of B_i on good j, so clearing is
  q = M q with M_jk = sum_i a_ij f_ik, a column-stochastic matrix: the prices are its Perron
  eigenvector and an equilibrium always exists. Solved exactly (Gaussian elimination) on
  each closed class of M; goods outside every closed class get price 0 (their value only
  flows away); several closed classes are separate economies, each priced on its own.
- Linear: an equilibrium exists when the economy graph (i -> k when i values a good k brings)
  is strongly connected (Gale); without that it may not, so such an economy is refused.
  Where the money goes comes from the Fisher market's Newton stages (newton.py) with
  budgets that follow the prices (each stage's budgets := the endowments' value at the last
  stage's prices), or, without numpy or if those do not certify, from whole Fisher markets
  solved in rounds the same way (fisher.solve; proportional response without numpy). Then
  the exact step of the Fisher market (fisher.py), with budgets that are themselves
  prices: guess the spending forest, take its utility ratios, and solve the small linear
  system that makes each connected group's goods worth what its agents bring (again a
  column-stochastic matrix, now one entry per group). Accepted only if every forest edge is
  a best buy and the spending on it is non-negative - then exact to rounding.

The certificate is the Fisher market's (fisher._report) with each budget := the value of the
agent's endowment at the returned prices: `clearing`, `budgets`, `optimality`, `tolerance`.
"""

from __future__ import annotations

import time
from typing import Any

from mabeam_markets.fisher import (
    _best_buy_graphs,
    _prices_from,
    _report,
    _spend_by_flow,
    _tree_flow,
    spanning_forest,
)


def cobb_douglas(f: list[list[float]], a: list[list[float]]) -> tuple[list[float], int]:
    """Whole-supply prices solving q = M q, summing to 1, and how many separate economies
    (closed classes of M) they price. Goods outside every closed class - whose value only
    flows away to other goods - get price 0 (the exact limit). Each closed class is priced
    by its own linear system (unique: the class is irreducible); with more than one, their
    relative scale is not set by the market and each class's goods are worth in total its
    share of the goods (documented, deterministic)."""
    n, m = len(f), len(f[0])
    share = [[x / sum(row) for x in row] for row in a]
    solve = _stationary
    try:
        import numpy as np
    except ImportError:
        mat = [[sum(share[i][j] * f[i][k] for i in range(n)) for k in range(m)]
               for j in range(m)]
    else:
        mat = (np.asarray(share).T @ np.asarray(f)).tolist()
        solve = _stationary_np
    out = [{j for j in range(m) if mat[j][k] > 0} for k in range(m)]  # value of k flows to j
    reach = []
    for k in range(m):
        seen, stack = {k}, [k]
        while stack:
            for j in out[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        reach.append(seen)
    closed = {frozenset(reach[k]) for k in range(m) if all(k in reach[j] for j in reach[k])}
    q = [0.0] * m
    for cls in sorted(closed, key=min):
        idx = sorted(cls)
        v = solve([[mat[j][k] for k in idx] for j in idx])
        if v is None:  # cannot happen for an irreducible class; refuse rather than guess
            raise ValueError("singular Cobb-Douglas exchange system")
        for j, x in zip(idx, v, strict=True):
            q[j] = x * len(idx) / m
    return q, len(closed)


def strongly_connected(n: int, edges: list[set[int]]) -> bool:
    """Every node reaches node 0 and node 0 reaches every node."""
    def reach(adj: list[set[int]]) -> int:
        seen, stack = {0}, [0]
        while stack:
            for k in adj[stack.pop()]:
                if k not in seen:
                    seen.add(k)
                    stack.append(k)
        return len(seen)
    back: list[set[int]] = [set() for _ in range(n)]
    for i, ks in enumerate(edges):
        for k in ks:
            back[k].add(i)
    return reach(edges) == n and reach(back) == n


def _stationary(g: list[list[float]]) -> list[float] | None:
    """The v >= 0, sum v = 1 with g v = v (g column-stochastic), by Gaussian elimination on
    (g - I) with one row replaced by sum v = 1; None if singular or not non-negative."""
    k = len(g)
    rows = [[g[r][c] - (1.0 if r == c else 0.0) for c in range(k)] + [0.0] for r in range(k)]
    rows[-1] = [1.0] * k + [1.0]
    for c in range(k):
        piv = max(range(c, k), key=lambda r: abs(rows[r][c]))
        if abs(rows[piv][c]) < 1e-14:
            return None
        rows[c], rows[piv] = rows[piv], rows[c]
        for r in range(k):
            if r != c and rows[r][c]:
                t = rows[r][c] / rows[c][c]
                rows[r] = [x - t * y for x, y in zip(rows[r], rows[c], strict=True)]
    v = [rows[r][k] / rows[r][r] for r in range(k)]
    if min(v) <= 0:
        return None
    total = sum(v)
    return [x / total for x in v]


def _stationary_np(g: list[list[float]]) -> list[float] | None:
    """_stationary by numpy's LU solve."""
    import numpy as np

    k = len(g)
    a = np.asarray(g, dtype=float) - np.eye(k)
    a[-1, :] = 1.0
    rhs = np.zeros(k)
    rhs[-1] = 1.0
    try:
        v = np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        return None
    if v.min() <= 0:
        return None
    out: list[float] = (v / v.sum()).tolist()
    return out


def _exact(f: list[list[float]], ws: list[list[float]], order: list[tuple[int, int]],
           flow: bool = True) -> tuple[list[float], list[float], list[list[float]]] | None:
    """(whole-supply prices, budgets, spending) of the equilibrium on the guessed forest.
    Without `flow`, only a forest whose own spending is non-negative is accepted (the max
    flow for degenerate equilibria costs ten times the rest; early guesses skip it)."""
    n, m = len(f), len(ws[0])
    forest = spanning_forest(order, n, m)
    r = _prices_from(forest, [1.0] * n, ws, m)  # utility ratios within each group
    if r is None:
        return None
    root = list(range(m))  # groups of goods joined by an agent's edges

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    for js in forest:
        for j in js[1:]:
            root[find(j)] = find(js[0])
    groups = sorted({find(j) for j in range(m)})
    gi = {c: t for t, c in enumerate(groups)}
    of_good = [gi[find(j)] for j in range(m)]
    of_agent = [of_good[js[0]] for js in forest]
    worth = [0.0] * len(groups)
    for j in range(m):
        worth[of_good[j]] += r[j]
    if min(worth) <= 0:
        return None
    # v_c (a group's value) = what its agents bring: sum over i in c, k of f_ik r_k v_c'/R_c'.
    owns = [[(k, x) for k, x in enumerate(row) if x] for row in f]
    g = [[0.0] * len(groups) for _ in groups]
    for i, row in enumerate(owns):
        gi_row = g[of_agent[i]]
        for k, x in row:
            gi_row[of_good[k]] += x * r[k] / worth[of_good[k]]
    v = _stationary(g)
    if v is None:
        return None
    q = [v[of_good[j]] * r[j] / worth[of_good[j]] for j in range(m)]
    budgets = [sum(x * q[k] for k, x in row) for row in owns]
    if min(budgets) <= 0:
        return None
    best = []
    for i in range(n):
        bpb = [u / p for u, p in zip(ws[i], q, strict=True)]
        cut = max(bpb) * (1 - 1e-9)
        best.append([j for j, b in enumerate(bpb) if b > 0 and b >= cut])
        if not set(forest[i]) <= set(best[i]):
            return None
    spend = _tree_flow(forest, budgets, q) or (
        _spend_by_flow(best, budgets, q) if flow else None)
    return None if spend is None else (q, budgets, spend)


def linear(f: list[list[float]], w: list[list[float]], supply: list[float], *,
                     tolerance: float, max_iterations: int, deadline: float) -> dict[str, Any]:
    """Newton stages with moving budgets (numpy), then, if they do not certify, Fisher
    markets with budgets := the value of the endowments at the last prices."""
    from mabeam_markets.fisher import numpy_available
    from mabeam_markets.fisher import solve as fisher_solve

    if numpy_available():
        rep = linear_stages(f, w, supply, tolerance=tolerance, max_iterations=max_iterations,
                            deadline=deadline)
        if rep is not None:
            return rep

    n, m = len(f), len(supply)
    ws = [[w[i][j] * supply[j] for j in range(m)] for i in range(n)]
    q = [1.0 / m] * m
    it, rounds = 0, 0
    best: dict[str, Any] | None = None
    while True:
        budgets = [sum(f[i][k] * q[k] for k in range(m)) for i in range(n)]
        fm = fisher_solve(budgets, w, supply, "linear", tolerance=tolerance,
                          max_iterations=max(1, max_iterations - it),
                          time_limit=max(0.001, deadline - time.monotonic()))
        it += fm["iterations"] + 1
        rounds += 1
        spend = fm["spend"]
        qn = [fm["prices"][j] * supply[j] for j in range(m)]
        by_spend = [(i, j) for _, i, j in sorted(
            ((spend[i][j] / budgets[i], i, j) for i in range(n) for j in range(m)
             if spend[i][j] > 1e-12 * budgets[i]), reverse=True)]
        for order in (by_spend, *_best_buy_graphs(ws, spend, qn)):
            exact = _exact(f, ws, order)
            if exact is not None:
                rep = _report(exact[1], w, supply, exact[0], exact[2], utility="linear",
                              tolerance=tolerance, iterations=it, method="exact")
                if rep["certified"]:
                    rep["rounds"] = rounds
                    return rep
        budgets_n = [sum(f[i][k] * qn[k] for k in range(m)) for i in range(n)]
        rep = _report(budgets_n, w, supply, qn, spend, utility="linear", tolerance=tolerance,
                      iterations=it, method="fisher_rounds")
        if best is None or rep["tolerance"] < best["tolerance"]:
            best = rep
        if rep["certified"] or it >= max_iterations or time.monotonic() > deadline:
            best["rounds"] = rounds
            return best
        q = qn


def linear_stages(f: list[list[float]], w: list[list[float]], supply: list[float], *,
                  tolerance: float, max_iterations: int, deadline: float,
                  ) -> dict[str, Any] | None:
    """Newton stages of the smoothed Fisher potential (newton.py) whose budgets follow the
    prices: before each stage every budget := the value of its endowment at the last stage's
    prices; after each, the exact step. None if no stage certifies (the caller goes on)."""
    import numpy as np

    from mabeam_markets import newton

    n, m = len(f), len(supply)
    ws = [[w[i][j] * supply[j] for j in range(m)] for i in range(n)]
    F = np.asarray(f, dtype=float)
    q = np.full(m, 1.0 / m)
    budgets = (F @ q).tolist()
    logq = newton.start_prices(budgets, ws)
    tau, total = 0.02, 0
    while tau >= 1e-7 and total < max_iterations and time.monotonic() < deadline:
        q = np.exp(logq)
        q /= q.sum()
        budgets = (F @ q).tolist()
        pot = newton.Potential(budgets, ws, 1.0 / tau, -1.0 / tau)
        # Solved roughly, as in the Fisher market: only where the money goes matters.
        logq, pi, it = pot.solve(np.log(q), rel_tol=1e-4,
                                 max_iterations=max_iterations - total, deadline=deadline)
        total += it
        flat = np.argsort(-pi, axis=None, kind="stable")
        flat = flat[pi.ravel()[flat] > 1e-12]
        order = list(zip((flat // m).tolist(), (flat % m).tolist(), strict=True))
        exact = _exact(f, ws, order, flow=tau < 1e-4)
        if exact is not None:
            rep = _report(exact[1], w, supply, exact[0], exact[2], utility="linear",
                          tolerance=tolerance, iterations=total, method="exact")
            if rep["certified"]:
                rep["rounds"] = 0
                return rep
        tau /= 8.0
    return None
