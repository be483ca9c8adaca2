"""exchange_market (Arrow-Debreu), pure: every answer checked from first principles (each good
clears, each agent spends exactly what it brings is worth, each bundle is optimal at the
prices), Cobb-Douglas against its closed form, and the degenerate economies' rules."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mabeam_markets.exchangemarket import ExchangeMarket

from mabeamd.protocol import ProtocolError

EX = ExchangeMarket()


def market(agents: list[tuple[dict[str, float], dict[str, float]]], goods: list[str],
           **params: Any) -> dict[str, Any]:
    return EX.decide({
        "params": {"goods": goods, **params},
        "participants": [{"id": f"a{i}"} for i in range(len(agents))],
        "responses": [{"agent": f"a{i}", "seq": i,
                       "value": {"endowment": e, "utilities": u}}
                      for i, (e, u) in enumerate(agents)]})


def check_equilibrium(agents: list[tuple[dict[str, float], dict[str, float]]],
                      goods: list[str], r: dict[str, Any], utility: str,
                      tol: float = 1e-7) -> None:
    """The definition, written out: no code of the plugin used."""
    p = r["prices"]
    assert all(p[g] >= 0 for g in goods)
    supply = {g: sum(e.get(g, 0.0) for e, _ in agents) for g in goods}
    scale = max(p.values())
    for g in goods:  # every good with a price clears; a free one may stay unsold
        held = sum(r["allocation"][f"a{i}"].get(g, 0.0) for i in range(len(agents)))
        if p[g] > 0:
            assert abs(held - supply[g]) <= tol * supply[g], g
        else:
            assert held <= supply[g] * (1 + tol)
    for i, (e, u) in enumerate(agents):
        x = r["allocation"][f"a{i}"]
        worth = sum(p[g] * q for g, q in e.items())
        cost = sum(p[g] * q for g, q in x.items())
        assert abs(cost - worth) <= tol * max(worth, scale * 1e-9) + 1e-12, (i, cost, worth)
        assert abs(r["value"][f"a{i}"] - worth) <= 1e-9 * max(1.0, worth)
        if worth <= 0:
            continue
        if utility == "linear":  # only goods of the best utility per unit of money
            bang = {g: u.get(g, 0.0) / p[g] for g in goods if p[g] > 0}
            top = max(bang.values())
            for g, q in x.items():
                if p[g] > 0 and q > tol * supply[g]:
                    assert bang[g] >= top * (1 - 1e-7), (i, g)
        else:  # Cobb-Douglas: the share a_g / sum a of the budget on good g
            tot = sum(u.values())
            for g in goods:
                if p[g] > 0:
                    want = u.get(g, 0.0) / tot * worth
                    assert abs(x.get(g, 0.0) * p[g] - want) <= tol * worth + 1e-12, (i, g)


def random_economy(rnd: random.Random, n: int, m: int, dense: float,
                   ) -> tuple[list[tuple[dict[str, float], dict[str, float]]], list[str]]:
    goods = [f"g{j}" for j in range(m)]
    agents = []
    for i in range(n):
        e = {g: round(rnd.uniform(0.1, 10), 3) for g in goods
             if rnd.random() < dense or g == goods[i % m]}
        u = {g: round(rnd.uniform(0.1, 5), 3) for g in goods if rnd.random() < dense}
        u = u or {goods[(i + 1) % m]: 1.0}
        agents.append((e, u))
    for j, g in enumerate(goods):  # somebody brings every good
        agents[j % n][0].setdefault(g, 1.0)
    return agents, goods


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 7), st.integers(1, 7),
       st.sampled_from([0.3, 0.6, 1.0]))
def test_cobb_douglas_is_an_equilibrium(seed: int, n: int, m: int, dense: float) -> None:
    agents, goods = random_economy(random.Random(seed), n, m, dense)
    r = market(agents, goods, utility="cobb_douglas")
    assert r["certified"] and r["tolerance"] <= 1e-9
    assert abs(sum(r["prices"].values()) - 1) <= 1e-12
    check_equilibrium(agents, goods, r, "cobb_douglas")


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 0.99), st.floats(0.01, 0.99), st.floats(0.1, 9), st.floats(0.1, 9))
def test_cobb_douglas_two_by_two_closed_form(a1: float, a2: float, s1: float,
                                             s2: float) -> None:
    """Agent 1 brings s1 of x, agent 2 s2 of y; agent i spends the share a_i on x.
    Clearing x: p_x s1 = a1 p_x s1 + a2 p_y s2, so p_x / p_y = a2 s2 / ((1 - a1) s1)."""
    agents = [({"x": s1}, {"x": a1, "y": 1 - a1}), ({"y": s2}, {"x": a2, "y": 1 - a2})]
    r = market(agents, ["x", "y"], utility="cobb_douglas", numeraire="y")
    assert r["prices"]["y"] == 1.0
    assert r["prices"]["x"] == pytest.approx(a2 * s2 / ((1 - a1) * s1), rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 8), st.integers(1, 8),
       st.sampled_from([0.5, 0.8, 1.0]))
def test_linear_is_an_exact_equilibrium(seed: int, n: int, m: int, dense: float) -> None:
    agents, goods = random_economy(random.Random(seed), n, m, dense)
    try:
        r = market(agents, goods, utility="linear")
    except ProtocolError as e:  # only the documented refusal: not strongly connected
        assert "strongly connected" in str(e)
        assert not gale(agents, goods)
        return
    assert gale(agents, goods)
    assert r["certified"] and r["method"] == "exact" and r["tolerance"] <= 1e-9
    check_equilibrium(agents, goods, r, "linear")


def gale(agents: list[tuple[dict[str, float], dict[str, float]]], goods: list[str]) -> bool:
    """Economy graph i -> k (i values a good k brings) strongly connected, by Floyd-Warshall
    closure over the agents that bring something anybody values."""
    valued = {g for _, u in agents for g in goods if u.get(g, 0) > 0}
    live = [i for i, (e, _) in enumerate(agents) if any(e.get(g, 0) > 0 for g in valued)]
    reach = {(i, k): any(agents[i][1].get(g, 0) > 0 and agents[k][0].get(g, 0) > 0
                         for g in goods) or i == k for i in live for k in live}
    for j in live:
        for i in live:
            for k in live:
                reach[i, k] = reach[i, k] or (reach[i, j] and reach[j, k])
    return bool(live) and all(reach.values())


def test_linear_swap_and_numeraire() -> None:
    """Each brings what only the other wants: everything swaps, p_x * 3 = p_y * 2."""
    agents = [({"x": 3}, {"y": 1}), ({"y": 2}, {"x": 5})]
    r = market(agents, ["x", "y"], numeraire="x")
    assert r["prices"] == pytest.approx({"x": 1.0, "y": 1.5})
    assert r["allocation"] == {"a0": {"y": pytest.approx(2)}, "a1": {"x": pytest.approx(3)}}
    r = market(agents, ["x", "y"])
    assert r["prices"] == pytest.approx({"x": 0.4, "y": 0.6})


def test_degenerate_economies() -> None:
    # A good nobody values: price 0, unsold, kept by its owner; its owner, who brings only
    # it, is priced out and keeps just that.
    agents = [({"x": 1, "junk": 4}, {"y": 1}), ({"y": 1}, {"x": 1}), ({"junk": 2}, {"x": 1})]
    for utility in ("linear", "cobb_douglas"):
        r = market(agents, ["x", "y", "junk"], utility=utility)
        assert r["prices"]["junk"] == 0 and r["unsold"] == ["junk"]
        assert r["priced_out"] == ["a2"] and r["allocation"]["a2"] == {"junk": 2}
        assert r["allocation"]["a0"]["junk"] == 4
        check_equilibrium(agents, ["x", "y", "junk"], r, utility)
    # Cobb-Douglas with two separate economies: each priced on its own.
    agents = [({"x": 1}, {"y": 1}), ({"y": 1}, {"x": 1}), ({"z": 1}, {"z": 1})]
    r = market(agents, ["x", "y", "z"], utility="cobb_douglas")
    assert r["economies"] == 2
    check_equilibrium(agents, ["x", "y", "z"], r, "cobb_douglas")


@pytest.mark.parametrize(("agents", "params", "message"), [
    ([({"x": 1}, {"x": 1})], {"goods": ["x", "y"]}, "nobody brings any 'y'"),
    ([({"x": 1}, {"x": 1, "y": 1}), ({"y": 1}, {"y": 1})], {"goods": ["x", "y"]},
     "not strongly connected"),
    ([({"x": 1, "j": 1}, {"x": 1})], {"goods": ["x", "j"], "numeraire": "j"},
     "numeraire 'j' has price 0"),
    ([({"x": 1}, {"x": 1})], {"goods": ["x"], "numeraire": "q"}, "not one of the goods"),
    ([({"x": -1}, {"x": 1})], {"goods": ["x"]}, "finite number >= 0"),
    ([({"x": 1}, {"x": 0})], {"goods": ["x"]}, "at least one utility"),
    ([({"w": 1}, {"x": 1})], {"goods": ["x"]}, "unknown good 'w'"),
    ([({"x": 1}, {"x": 1})], {"goods": ["x", "x"]}, "distinct"),
    ([({"x": 1}, {"x": 1})], {"goods": ["x"], "utility": "ces"}, "utility"),
])
def test_refusals(agents: list[Any], params: dict[str, Any], message: str) -> None:
    goods = params.pop("goods")
    with pytest.raises(ProtocolError, match=message):
        market(agents, goods, **params)


def test_bad_answer_shape() -> None:
    with pytest.raises(ProtocolError, match="endowment"):
        EX.check_response("preferences", {"budget": 3, "utilities": {"x": 1}},
                          EX.check_params({"goods": ["x"]}))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 6), st.integers(2, 6))
def test_linear_without_numpy_by_fisher_rounds(seed: int, n: int, m: int) -> None:
    """The pure-Python path (Fisher rounds by proportional response, exact step) certifies an
    equilibrium by the definition, at the Newton stages' prices (every utility > 0 here)."""
    agents, goods = random_economy(random.Random(seed), n, m, 1.0)
    staged = market(agents, goods)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mabeam_markets.fisher.numpy_available", lambda: False)
        rounds = market(agents, goods)
    assert rounds["certified"] and rounds["rounds"] >= 1 and staged["rounds"] == 0
    check_equilibrium(agents, goods, rounds, "linear")
    assert rounds["prices"] == pytest.approx(staged["prices"], rel=1e-6, abs=1e-12)
