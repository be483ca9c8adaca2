"""Economic mechanisms end to end: a real daemon, live SDK agents bidding, trading and
stating preferences; outcomes validated and written to variables."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mabeamd.client import Agent, AsyncClient, Conflict, Invitation
from mabeamd.client.errors import MabeamError
from mabeamd.testing import Daemon
from tests.e2e.test_sessions import Scripted, run


def bid(v: float) -> Any:
    return lambda inv: {"bid": v}


def stay_up_to(v: float) -> Any:
    return lambda inv: {"stay": inv.body["price"] <= v}


def accept_at(v: float) -> Any:
    return lambda inv: {"accept": inv.body["price"] <= v}


async def slow_pass(inv: Invitation) -> Any:
    await asyncio.sleep(0.5)  # keeps the round open while `late` tries to bid twice
    return {"pass": True}


def test_sealed_bid_second_price_hides_bids_and_writes_the_owner(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "{lot}.owner", None)
        await c.register("late", ["p"])
        started = await c.start_session(
            "boss", "sealed_bid", participants=["a1", "a2", "a3", "late"],
            variables=["{lot}.owner"], params={"item": "lot", "reserve": 12,
                                               "resubmit": False}, deadline=5, wait=False)
        sid = started["session"]
        push = await c.next_push()
        while push.op != "session.invite":
            push = await c.next_push()
        await c.respond("late", sid, push.body["round"], {"bid": 25})
        with pytest.raises(Conflict, match="one answer per agent"):
            await c.respond("late", sid, push.body["round"], {"bid": 1})
        seen = await c.get_session(sid)  # before the close: how many bid, never what
        assert seen["state"] == "collecting" and seen["result"] is None
        assert seen["answered"] == 3 and not {"answers", "responses", "bids"} & set(seen)
        end = await c.get_session(sid)
        while end["state"] not in ("applied", "failed", "timed_out"):
            await asyncio.sleep(0.02)
            end = await c.get_session(sid)
        r = end["result"]
        assert end["state"] == "applied", end
        assert (r["winner"], r["price"]) == ("late", 20)  # second price: a2's 20
        assert r["passed"] == ["a3"]
        owner = await c.get_var("{lot}.owner", local=False)
        assert owner["value"] == {"item": "lot", "winner": "late", "price": 20}
    run(daemon, {"a1": {"sealed_bid": bid(15)}, "a2": {"sealed_bid": bid(20)},
                 "a3": {"sealed_bid": slow_pass}}, scenario)


def test_english_and_dutch_clocks_with_live_bidders(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        who = ["a1", "a2", "a3"]
        en = await c.start_session("boss", "english", participants=who, deadline=20,
                                   params={"start": 0, "increment": 5, "round_timeout": 2})
        assert en["state"] == "applied", en
        assert (en["result"]["winner"], en["result"]["price"]) == ("a3", 25)
        du = await c.start_session("boss", "dutch", participants=who, deadline=20,
                                   params={"start": 50, "decrement": 5, "tick": 1})
        assert du["state"] == "applied", du
        assert (du["result"]["winner"], du["result"]["price"]) == ("a3", 30)
        low = await c.start_session("boss", "dutch", participants=who, deadline=20,
                                    params={"start": 50, "decrement": 10, "reserve": 35,
                                            "tick": 1})
        assert low["state"] == "applied" and low["result"]["winner"] is None
    run(daemon, {"a1": {"english": stay_up_to(10), "dutch": accept_at(12)},
                 "a2": {"english": stay_up_to(20), "dutch": accept_at(20)},
                 "a3": {"english": stay_up_to(30), "dutch": accept_at(33)}}, scenario)


def bundles(*bs: tuple[list[str] | dict[str, int], float]) -> Any:
    return lambda inv: {"bids": [{"items": i, "price": p} for i, p in bs]}


def test_combinatorial_vcg_with_reserves_end_to_end(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "{spectrum}.allocation", None)
        r = await c.start_session("boss", "combinatorial", participants=["a1", "a2", "a3"],
                                  variables=["{spectrum}.allocation"], deadline=5,
                                  params={"items": ["x", "y"], "reserve": {"x": 1}})
        assert r["state"] == "applied", (r["state"], r.get("reason"))
        res = r["result"]
        assert [(w["agent"], w["items"], w["payment"]) for w in res["winners"]] == \
            [("a2", ["x"], 5.0), ("a3", ["y"], 4.0)]
        assert res["optimal"] and res["payments_exact"]
        var = await c.get_var("{spectrum}.allocation", local=False)
        assert var["value"]["allocation"] == {"x": "a2", "y": "a3"}
    run(daemon, {"a1": {"combinatorial": bundles((["x", "y"], 10))},
                 "a2": {"combinatorial": bundles((["x"], 6))},
                 "a3": {"combinatorial": bundles((["y"], 5), (["x"], 2))}}, scenario)


def test_multiunit_combinatorial_with_live_bidders(daemon: Daemon) -> None:
    """Two identical chairs and a table; a bid for more chairs than exist is refused at
    once and changes nothing."""
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "{furniture}.allocation", None)
        await c.register("greedy", ["p"])
        started = await c.start_session(
            "boss", "combinatorial", participants=["a1", "a2", "a3", "greedy"],
            variables=["{furniture}.allocation"], deadline=5, wait=False,
            params={"items": {"chair": 2, "table": 1}, "reserve": {"chair": 1}})
        sid = started["session"]
        push = await c.next_push()
        while push.op != "session.invite":
            push = await c.next_push()
        assert push.body["body"]["items"] == {"chair": 2, "table": 1}
        with pytest.raises(MabeamError, match="more units than exist: 3 of 'chair'"):
            await c.respond("greedy", sid, push.body["round"],
                            {"bids": [{"items": {"chair": 3}, "price": 99}]})
        await c.respond("greedy", sid, push.body["round"], {"pass": True})
        end = await c.get_session(sid)
        while end["state"] not in ("applied", "failed", "timed_out"):
            await asyncio.sleep(0.02)
            end = await c.get_session(sid)
        assert end["state"] == "applied", end
        res = end["result"]
        assert res["allocation"] == {"a2": {"chair": 1}, "a3": {"chair": 1, "table": 1}}
        assert res["payments"] == {"a2": 2.0, "a3": 6.0} and res["optimal"]
        var = await c.get_var("{furniture}.allocation", local=False)
        assert var["value"]["allocation"] == {"chair": {"a2": 1, "a3": 1},
                                              "table": {"a3": 1}}
    run(daemon, {"a1": {"combinatorial": bundles(({"chair": 2, "table": 1}, 10))},
                 "a2": {"combinatorial": bundles((["chair"], 4))},
                 "a3": {"combinatorial": bundles(({"chair": 1, "table": 1}, 8))}}, scenario)


def test_call_market_supply_demand_and_fisher_with_live_agents(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        who = ["b1", "b2", "s1"]
        cm = await c.start_session("boss", "call_market", participants=who, deadline=5)
        assert cm["state"] == "applied", cm
        assert (cm["result"]["quantity"], cm["result"]["price"]) == (2, 9.0)
        sd = await c.start_session("boss", "supply_demand", participants=who, deadline=5)
        assert sd["state"] == "applied", sd
        assert sd["result"]["quantity"] == 2 and sd["result"]["residual"] == 0
        fm = await c.start_session("boss", "fisher_market", participants=["b1", "b2"],
                                   deadline=5, params={"goods": {"bread": 1, "milk": 1}})
        assert fm["state"] == "applied", fm
        assert fm["result"]["certified"]
        assert sum(fm["result"]["prices"].values()) == pytest.approx(10)  # = budgets
    buyer1 = {"call_market": lambda inv: {"side": "buy", "price": 10, "quantity": 2},
              "supply_demand": lambda inv: {"demand": [[10, 2]]},
              "fisher_market": lambda inv: {"budget": 4, "utilities": {"bread": 1,
                                                                      "milk": 2}}}
    buyer2 = {"call_market": lambda inv: {"side": "buy", "price": 8, "quantity": 1},
              "supply_demand": lambda inv: {"demand": [[8, 1]]},
              "fisher_market": lambda inv: {"budget": 6, "utilities": {"bread": 3,
                                                                      "milk": 1}}}
    seller = {"call_market": lambda inv: {"orders": [
        {"side": "sell", "price": 5, "quantity": 1}, {"side": "sell", "price": 9,
                                                       "quantity": 3}]},
              "supply_demand": lambda inv: {"supply": [[5, 1], [9, 3]]}}
    run(daemon, {"b1": buyer1, "b2": buyer2, "s1": seller}, scenario)


class Trader(Agent):
    """Trades a script in the market's streaming round: orders, {"sleep": S}, and
    {"cancel_own": K} (cancel this agent's K-th order)."""

    capabilities = ["p"]

    def __init__(self, agent_id: str, endpoint: str, script: list[dict[str, Any]]) -> None:
        super().__init__(agent_id, endpoint, timeout=5)
        self.script = script
        self.replies: list[Any] = []
        self.fills: list[dict[str, Any]] = []

    async def on_invitation(self, inv: Invitation) -> Any:
        assert inv.streaming and inv.kind == "trade"
        for step in self.script:
            if "sleep" in step:
                await asyncio.sleep(step["sleep"])
                continue
            answer = ({"cancel": self.replies[step["cancel_own"]]["order"]}
                      if "cancel_own" in step else step)
            self.replies.append(await self.answer(inv, answer))
        return None

    async def on_session_notice(self, body: dict[str, Any]) -> None:
        if body["kind"] == "fill":
            self.fills.append(body["body"])


def test_continuous_double_auction_live_market(daemon: Daemon) -> None:
    maker = Trader("maker", daemon.agent_endpoint, [
        {"order": {"side": "sell", "quantity": 5, "price": 10}},
        {"order": {"side": "sell", "quantity": 5, "price": 11}},
        {"sleep": 0.8}, {"cancel_own": 1}])
    taker = Trader("taker", daemon.agent_endpoint, [
        {"sleep": 0.4}, {"order": {"side": "buy", "quantity": 7}}])

    async def main() -> dict[str, Any]:
        tasks = [asyncio.create_task(a.run_async()) for a in (maker, taker)]
        try:
            async with AsyncClient(daemon.agent_endpoint, timeout=10) as c:
                await c.register("boss")
                await c.wait_for(2, capabilities=["p"])
                await c.create_var("boss", "{mkt}.last", None)
                end: dict[str, Any] = await c.start_session(
                    "boss", "continuous_double_auction", participants=["maker", "taker"],
                    variables=["{mkt}.last"], params={"duration": 1.5}, deadline=5)
                end["var"] = await c.get_var("{mkt}.last", local=False)
                return end
        finally:
            maker.stop()
            taker.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    end = asyncio.run(main())
    assert end["state"] == "applied", end
    r = end["result"]
    assert (r["orders"], r["trade_count"], r["volume"], r["last_price"]) == (3, 2, 7, 11)
    assert r["positions"] == {"maker": {"quantity": -7, "cash": 72.0},
                              "taker": {"quantity": 7, "cash": -72.0}}
    assert taker.replies[0]["trades"] == [{"price": 10, "quantity": 5, "maker_order": 1},
                                          {"price": 11, "quantity": 2, "maker_order": 2}]
    assert maker.replies[2] == {"cancelled": 2, "quantity": 3}
    assert sorted((f["order"], f["quantity"]) for f in maker.fills) == [(1, 5), (2, 2)]
    assert end["var"]["value"]["last_price"] == 11
