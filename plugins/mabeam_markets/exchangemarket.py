"""The `exchange_market` protocol: answers, degenerate economies, numeraire (exchange.py solves).

Degenerate inputs are settled before solving, each with one stated rule:
  * a listed good nobody brings (whole supply 0) is refused - its price would be arbitrary;
  * a good nobody values gets price 0 and stays with its owners (listed `unsold`);
  * an agent whose endowment is worth nothing (it brings only goods priced 0) has budget 0
    and receives nothing; it is listed `priced_out` and left out of the economy graph;
  * linear utilities: the remaining economy graph must be strongly connected, or refused.
Prices are per unit and normalised so they sum to 1, or so the `numeraire` good's is 1
(refused if that good's equilibrium price is 0).
"""

from __future__ import annotations

import math
import time
from typing import Any

from mabeam_markets import exchange
from mabeam_markets.common import solve_limits
from mabeam_markets.fisher import _report
from mabeamd.protocol import (
    OneRound,
    Outcome,
    Participant,
    ProtocolError,
    Response,
    Session,
    Trade,
    by_arrival,
    choice,
    only,
    participants_of,
    responses_of,
    terms,
    write_all,
)


def _amounts(d: Any, goods: list[str], what: str) -> dict[str, float]:
    if not isinstance(d, dict):
        raise ProtocolError(f"{what} must map goods to numbers")
    for g, x in d.items():
        if g not in goods:
            raise ProtocolError(f"{what} of unknown good {g!r}")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                or x < 0:
            raise ProtocolError(f"{what} of {g!r} must be a finite number >= 0")
    return {g: float(x) for g, x in d.items()}


def prefs_of(value: Any, goods: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    if not isinstance(value, dict) or set(value) != {"endowment", "utilities"}:
        raise ProtocolError('answer with {"endowment": {GOOD: QTY, ...}, '
                            '"utilities": {GOOD: U, ...}}')
    e = _amounts(value["endowment"], goods, "endowment")
    u = _amounts(value["utilities"], goods, "utility")
    if not any(x > 0 for x in u.values()):
        raise ProtocolError("at least one utility must be > 0")
    return e, u


class ExchangeMarket(OneRound):
    name = "exchange_market"
    summary = ("exchange (Arrow-Debreu) equilibrium from endowments (linear or Cobb-Douglas "
               "utilities), certified by its residuals")
    kind = "preferences"
    heavy = True  # an equilibrium solve: up to time_limit

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"goods", "utility", "numeraire", "tolerance", "max_iterations",
                      "time_limit"})
        goods = params.get("goods")
        if not isinstance(goods, list) or not goods or len(set(map(str, goods))) != len(goods) \
                or not all(isinstance(g, str) for g in goods):
            raise ProtocolError("goods must be a list of distinct good names")
        num = params.get("numeraire")
        if num is not None and num not in goods:
            raise ProtocolError(f"numeraire {num!r} is not one of the goods")
        return {"goods": list(goods),
                "utility": choice(params, "utility", "linear", ("linear", "cobb_douglas")),
                "numeraire": num, **solve_limits(params, 100_000)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        prefs_of(value, params["goods"])

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        p = self.decide_params(inputs)
        ps = participants_of(inputs)
        return self.decide_typed(p, ps, by_arrival(responses_of(inputs, ps)))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        rs = {r.agent: r for r in responses}
        if not rs:
            raise ProtocolError("no agent answered")
        goods, agents = params["goods"], sorted(rs)
        ends, us = {}, {}
        for a in agents:
            ends[a], us[a] = prefs_of(rs[a].value, goods)
        supply = {g: sum(ends[a].get(g, 0.0) for a in agents) for g in goods}
        nobody = [g for g in goods if supply[g] <= 0]
        if nobody:
            raise ProtocolError(f"nobody brings any {nobody[0]!r}: its price would be "
                                "arbitrary; drop it from goods")
        valued = [g for g in goods if any(us[a].get(g, 0.0) > 0 for a in agents)]
        # Agents who bring nothing anyone values have budget 0 whatever the prices.
        sol, live, it = self._solve(params, agents, ends=ends, us=us, supply=supply,
                                      valued=valued)
        q = dict.fromkeys(goods, 0.0)
        for k, g in enumerate(sol["goods"]):
            q[g] = sol["prices"][k] * supply[g]  # whole-supply value
        unit = {g: q[g] / supply[g] for g in goods}
        num = params["numeraire"]
        if num is not None and unit[num] <= 0:
            raise ProtocolError(f"the numeraire {num!r} has price 0 at the equilibrium "
                                "(nobody with anything to trade values it): name another")
        scale = 1.0 / (unit[num] if num is not None else sum(unit.values()))
        prices = {g: unit[g] * scale for g in goods}
        if num is not None:
            prices[num] = 1.0  # exactly, not to rounding
        alloc: dict[str, dict[str, float]] = {a: {} for a in agents}
        unsold = [g for g in goods if q[g] <= 0]
        for a in agents:  # goods priced 0 stay with their owners
            for g in unsold:
                if ends[a].get(g, 0.0) > 0:
                    alloc[a][g] = ends[a][g]
        for i, a in enumerate(live):
            for k, g in enumerate(sol["goods"]):
                x = sol["allocation"][i][k]
                if x > 0:
                    alloc[a][g] = x
        value = {a: sum(prices[g] * x for g, x in ends[a].items()) for a in agents}
        spent = dict.fromkeys(agents, 0.0)
        for i, a in enumerate(live):
            spent[a] = sum(sol["spend"][i]) * scale  # whole-supply units, like q
        # The shared terms: each agent pays for its bundle with its endowment's value, so its
        # net payment is spent - value (0 at the equilibrium, to its tolerance) and nothing is
        # kept; prices per good, utilities not money: no one price, no welfare.
        return {"utility": params["utility"], "numeraire": num, "prices": prices,
                **terms(alloc, {a: spent[a] - value[a] for a in agents}, None, None),
                "value": value, "spent": spent, "unsold": unsold,
                "priced_out": [a for a in agents if a not in live],
                **{k: sol[k] for k in ("residuals", "tolerance", "certified", "method")},
                "rounds": sol.get("rounds", 0), "economies": sol.get("economies", 1),
                "iterations": it,
                "missing": sorted(x.id for x in participants if x.id not in rs)}

    def _solve(self, params: dict[str, Any], agents: list[str], *,
               ends: dict[str, dict[str, float]], us: dict[str, dict[str, float]],
               supply: dict[str, float], valued: list[str],
               ) -> tuple[dict[str, Any], list[str], int]:
        deadline = time.monotonic() + params["time_limit"]
        live = [a for a in agents if any(ends[a].get(g, 0.0) > 0 for g in valued)]
        if params["utility"] == "cobb_douglas":
            goods = valued
            f = [[ends[a].get(g, 0.0) / supply[g] for g in goods] for a in agents]
            w = [[us[a].get(g, 0.0) for g in goods] for a in agents]
            q, economies = exchange.cobb_douglas(f, w)
            it = 0
            # Goods valued only by agents priced out end at 0 too: drop them and the agents.
            budgets = [sum(fi[k] * q[k] for k in range(len(goods))) for fi in f]
            keep = [i for i in range(len(agents)) if budgets[i] > 0]
            priced = [k for k in range(len(goods)) if q[k] > 0]
            live = [agents[i] for i in keep]
            goods = [goods[k] for k in priced]
            w = [[w[i][k] for k in priced] for i in keep]
            bs = [budgets[i] for i in keep]
            qs = [q[k] for k in priced]
            spend = [[bs[i] * x / sum(row) if sum(row) else 0.0 for x in row]
                     for i, row in enumerate(w)]
            if any(not sum(row) for row in w):
                raise ProtocolError("an agent with a budget values only goods priced 0")
            rep = _report(bs, w, [supply[g] for g in goods], qs, spend, utility="cobb_douglas",
                          tolerance=params["tolerance"], iterations=it, method="linear_system")
            return {**rep, "goods": goods, "economies": economies}, live, it
        # Linear: goods nobody live values are free; the graph must be strongly connected.
        goods = [g for g in valued if any(us[a].get(g, 0.0) > 0 for a in live)]
        owners = {g: {k for k, b in enumerate(live) if ends[b].get(g, 0.0) > 0} for g in goods}
        graph = [set().union(*(owners[g] for g in goods if us[a].get(g, 0.0) > 0))
                 for a in live]
        if not live:
            raise ProtocolError("nobody brings anything a trader values: no market")
        if not exchange.strongly_connected(len(live), graph):
            raise ProtocolError("linear exchange: the economy graph (agent -> the agents whose "
                                "goods it values) is not strongly connected, so an equilibrium "
                                "may not exist (Gale); refused")
        if any(not any(ends[a].get(g, 0.0) > 0 for g in goods) for a in live):
            raise ProtocolError("linear exchange: an agent brings only goods no trader values")
        f = [[ends[a].get(g, 0.0) / supply[g] for g in goods] for a in live]
        w = [[us[a].get(g, 0.0) for g in goods] for a in live]
        rep = exchange.linear(f, w, [supply[g] for g in goods], tolerance=params["tolerance"],
                              max_iterations=params["max_iterations"], deadline=deadline)
        return {**rep, "goods": goods}, live, rep["iterations"]

    def trade(self, result: dict[str, Any]) -> Trade | None:
        """The value changing hands at the equilibrium prices of the goods that sold."""
        spent = sum(float(v) for v in (result.get("spent") or {}).values())
        if spent <= 0:
            return None
        unsold = set(result.get("unsold") or ())
        return Trade(spent, tuple(float(p) for g, p in sorted(result["prices"].items())
                                  if g not in unsold))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return write_all(session.variables, {"prices": result["prices"],
                                             "allocation": result["allocation"]})

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        if not outcome.result["certified"]:
            raise ProtocolError(f"no equilibrium within tolerance "
                                f"{session.params['tolerance']:g}: reached "
                                f"{outcome.result['tolerance']:.3g}")
