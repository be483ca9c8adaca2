"""exchange_market end to end: a real daemon, live SDK agents bringing endowments; the
equilibrium is checked from the definition, written to a variable, and a refusal (a linear
economy that is not strongly connected) fails the session with its reason. Then
supply_demand on live linear curves, exact."""

from __future__ import annotations

from typing import Any

import pytest

from mabeamd.client import AsyncClient
from mabeamd.testing import Daemon
from tests.e2e.test_sessions import Scripted, run

ENDOW = {"ann": {"apples": 6}, "bob": {"nuts": 4}, "cy": {"apples": 2, "nuts": 2}}
UTIL = {"ann": {"apples": 1, "nuts": 2}, "bob": {"apples": 3, "nuts": 1},
        "cy": {"apples": 1, "nuts": 1}}


def answer(who: str) -> Any:
    return lambda inv: {"endowment": ENDOW[who], "utilities": UTIL[who]}


def test_exchange_market_with_live_agents(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "{fruit}.eq", None)
        for utility in ("linear", "cobb_douglas"):
            out = await c.start_session(
                "boss", "exchange_market", participants=["ann", "bob", "cy"], deadline=5,
                variables=["{fruit}.eq"],
                params={"goods": ["apples", "nuts"], "utility": utility,
                        "numeraire": "apples"})
            assert out["state"] == "applied", out
            r = out["result"]
            assert r["certified"] and r["prices"]["apples"] == 1.0
            p = r["prices"]
            for who, endowment in ENDOW.items():  # spends exactly what it brings is worth
                worth = sum(p[g] * q for g, q in endowment.items())
                got = sum(p[g] * q for g, q in r["allocation"][who].items())
                assert got == pytest.approx(worth, rel=1e-9)
            for g in ("apples", "nuts"):  # every good clears
                assert sum(r["allocation"][a].get(g, 0) for a in ENDOW) == pytest.approx(
                    sum(e.get(g, 0) for e in ENDOW.values()), rel=1e-9)
            if utility == "linear":  # ann buys only nuts, bob only apples: each its best
                assert set(r["allocation"]["ann"]) == {"nuts"}
                assert set(r["allocation"]["bob"]) == {"apples"}
            var = await c.get_var("{fruit}.eq", local=False)
            assert var["value"]["prices"] == p
        bad = await c.start_session(
            "boss", "exchange_market", participants=["ann", "dan"], deadline=5,
            params={"goods": ["apples", "nuts"]})
        assert bad["state"] == "failed" and "strongly connected" in bad["reason"], bad
        sd = await c.start_session("boss", "supply_demand", participants=["ann", "bob"],
                                   deadline=5)
        assert sd["state"] == "applied", sd  # 10 - p = 2 (p - 1): p = 4, Q = 6
        assert sd["result"]["exact"]["price"] == "4" and sd["result"]["quantity"] == 6
    run(daemon, {"ann": {"exchange_market": answer("ann"),
                         "supply_demand": lambda inv: {"demand": {"intercept": 10,
                                                                  "slope": -1}}},
                 "bob": {"exchange_market": answer("bob"),
                         "supply_demand": lambda inv: {"supply": {"through": [[1, 0],
                                                                              [2, 2]]}}},
                 "cy": {"exchange_market": answer("cy")},
                 "dan": {"exchange_market": lambda inv: {"endowment": {"nuts": 1},
                                                         "utilities": {"nuts": 1}}}},
        scenario)
