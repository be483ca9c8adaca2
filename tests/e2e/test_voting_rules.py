"""ranked_vote and approval_vote end to end: a real daemon, live SDK agents answering the
ballot invitations, the outcome and the written variables checked."""

from __future__ import annotations

from typing import Any

from mabeamd.client import AsyncClient, Invitation
from mabeamd.testing import Daemon
from tests.e2e.test_sessions import Answer, Scripted, run


def rank(*options: str) -> Answer:
    def answer(inv: Invitation) -> Any:
        assert list(inv.body["options"]) == ["M", "N", "K"]
        return {"ranking": list(options)}
    return answer


def approve(*options: str) -> Answer:
    return lambda inv: {"approve": list(options)}


def test_ranked_and_approval_votes_decide_and_write(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "city", None)
        await c.create_var("boss", "board", None)
        q = {"capabilities": ["p"]}
        # M 2 first, N 2 first, K 1 first (K's voter prefers N to M): IRV drops K, N wins
        # 3-2; N is also the Condorcet winner; Borda: M 4, N 6, K 5 -> N
        irv = await c.start_session("boss", "ranked_vote", query=q, variables=["city"],
                                    params={"options": ["M", "N", "K"], "method": "irv"},
                                    deadline=5)
        r = irv["result"]
        assert (r["decision"], r["reason"]) == ("N", "decided")
        assert [x["eliminated"] for x in r["rounds"]] == ["K", None]
        assert r["condorcet_winner"] == "N"
        assert (await c.get_var("city", local=False))["value"] == "N"
        # M's voters weigh 3 each under Borda: M 12, N 8, K 7 -> M, the outcome written
        b = await c.start_session("boss", "ranked_vote", query=q, variables=["city"],
                                  params={"options": ["M", "N", "K"], "method": "borda",
                                          "weights": {"m1": 3, "m2": 3},
                                          "write": "outcome"}, deadline=5)
        assert b["result"]["decision"] == "M"
        assert b["result"]["scores"] == {"M": 12.0, "N": 8.0, "K": 7.0}
        assert (await c.get_var("city", local=False))["value"]["decision"] == "M"
        # two seats: three voters want x and y, two want z -> PAV gives the minority a seat
        pav = await c.start_session("boss", "approval_vote", query=q, variables=["board"],
                                    params={"options": ["x", "y", "z"], "seats": 2,
                                            "rule": "pav"}, deadline=5)
        assert pav["result"]["committee"] == ["x", "z"] and pav["result"]["decided"]
        assert (await c.get_var("board", local=False))["value"] == ["x", "z"]
        plain = await c.start_session("boss", "approval_vote", query=q, variables=["board"],
                                      params={"options": ["x", "y", "z"], "seats": 2},
                                      deadline=5)
        assert plain["result"]["committee"] == ["x", "y"]
        assert (await c.get_var("board", local=False))["value"] == ["x", "y"]

    def voter(ranking: tuple[str, ...], approvals: tuple[str, ...]) -> dict[Any, Answer]:
        return {"ranked_vote": rank(*ranking), "approval_vote": approve(*approvals)}

    run(daemon, {"m1": voter(("M", "K", "N"), ("x", "y")),
                 "m2": voter(("M", "N", "K"), ("x", "y")),
                 "n1": voter(("N", "K", "M"), ("x", "y")),
                 "n2": voter(("N", "K", "M"), ("z",)),
                 "k1": voter(("K", "N", "M"), ("z",))}, scenario)
