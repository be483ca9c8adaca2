"""Coordination sessions end to end: a real daemon, live SDK agents answering invitations,
real signals, mabeamctl."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from mabeamd.client import (
    Agent,
    AsyncClient,
    BadRequest,
    Busy,
    Conflict,
    Forbidden,
    Invitation,
    NotFound,
    Push,
)
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import Daemon

T = TypeVar("T")
Answer = Callable[[Invitation], Any]


class Scripted(Agent):
    """Answers every invitation through a table: (protocol, kind) or protocol -> answer
    function (None = stay silent); a function may be a coroutine function (slow answers)."""

    capabilities = ["p"]

    def __init__(self, agent_id: str, endpoint: str, answers: dict[Any, Answer],
                 weight: float = 1.0, priority: int = 0) -> None:
        super().__init__(agent_id, endpoint, timeout=5)
        self.answers = answers
        self.weight = weight
        self.priority = priority
        self.notices: list[dict[str, Any]] = []

    async def on_invitation(self, inv: Invitation) -> Any:
        fn = self.answers.get((inv.protocol, inv.kind), self.answers.get(inv.protocol))
        if fn is None:
            return None
        out = fn(inv)
        return await out if asyncio.iscoroutine(out) else out

    async def on_session_notice(self, body: dict[str, Any]) -> None:
        self.notices.append(body)


def run(daemon: Daemon, agents: dict[str, dict[Any, Answer]],
        scenario: Callable[[AsyncClient, dict[str, Scripted]], Awaitable[T]],
        weights: dict[str, float] | None = None, priorities: dict[str, int] | None = None,
        ) -> T:
    async def main() -> T:
        made = {i: Scripted(i, daemon.agent_endpoint, a, (weights or {}).get(i, 1.0),
                            (priorities or {}).get(i, 0)) for i, a in agents.items()}
        tasks = [asyncio.create_task(a.run_async()) for a in made.values()]
        try:
            async with AsyncClient(daemon.agent_endpoint, timeout=10) as c:
                await c.register("boss")
                if made:
                    await c.wait_for(len(made), capabilities=["p"])
                return await scenario(c, made)
        finally:
            for a in made.values():
                a.stop()
            # Bounded: an agent that does not stop is a failure to see, not a hang that
            # only the suite's timeout ends (one did, once, under a loaded full run).
            _, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
            for t in pending:
                t.cancel()
            if pending:
                stuck = [a.id for a, t in zip(made.values(), tasks, strict=True)
                         if t in pending]
                raise AssertionError(f"agents {stuck} did not stop within 30 s of stop()")
    return asyncio.run(main())


def accept(inv: Invitation) -> Any:
    return {"accept": True}


def reject(inv: Invitation) -> Any:
    return {"accept": False}


def vote(option: str) -> Answer:
    return lambda inv: {"vote": option}


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.ctl("--socket", str(daemon.socket), *args)


def same_shard(prefix: str, n: int) -> list[str]:
    return [f"{{{prefix}}}.{i}" for i in range(n)]


def other_shard_names(shards: int) -> tuple[str, str]:
    first = "x0"
    for i in range(1, 100):
        if shard_of(f"x{i}", shards) != shard_of(first, shards):
            return first, f"x{i}"
    raise AssertionError("no two shards")


# --- protocols end to end -------------------------------------------------------------------


def test_consensus_passes_fails_and_times_out(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "plan", "old")
        ok = await c.start_session("boss", "consensus", participants=["a1", "a2", "a3"],
                                   variables=["plan"], params={"proposal": "new"}, deadline=5)
        assert ok["state"] == "applied" and ok["result"]["passed"]
        assert ok["writes"] == {"plan": "new"}
        var = await c.get_var("plan", local=False)
        assert var["value"] == "new" and var["modified_by"] == "session:" + ok["session"]
        no = await c.start_session("boss", "consensus", participants=["a1", "a2", "a3", "nay"],
                                   variables=["plan"], params={"proposal": "newer"}, deadline=5)
        assert no["state"] == "applied" and not no["result"]["passed"]
        assert no["result"]["rejected"] == ["nay"] and no["writes"] == {}
        t0 = time.monotonic()
        slow = await c.start_session("boss", "consensus", participants=["a1", "mute"],
                                     variables=["plan"], params={"proposal": "x"},
                                     deadline=0.8)
        assert time.monotonic() - t0 >= 0.7
        assert slow["result"]["missing"] == ["mute"] and not slow["result"]["passed"]
        assert (await c.get_var("plan", local=False))["value"] == "new"

    run(daemon, {"a1": {"consensus": accept}, "a2": {"consensus": accept},
                 "a3": {"consensus": accept}, "nay": {"consensus": reject}, "mute": {}},
        scenario)


def test_votes_by_query_and_weighted_votes(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "colour", None, constraints={"enum": ["red", "blue", None]})
        out = await c.start_session("boss", "vote", query={"capabilities": ["p"]},
                                    variables=["colour"],
                                    params={"options": ["red", "blue"]}, deadline=5)
        assert out["result"]["decision"] == "red" and out["result"]["votes"] == 3
        w = await c.start_session("boss", "weighted_vote", query={"capabilities": ["p"]},
                                  variables=["colour"],
                                  params={"options": ["red", "blue"]}, deadline=5)
        # blue has one voter of weight 5 against two of weight 1.
        assert w["result"]["decision"] == "blue"
        assert (await c.get_var("colour", local=False))["value"] == "blue"

    run(daemon, {"r1": {"vote": vote("red"), "weighted_vote": vote("red")},
                 "r2": {"vote": vote("red"), "weighted_vote": vote("red")},
                 "b1": {"vote": vote("blue"), "weighted_vote": vote("blue")}},
        scenario, weights={"b1": 5.0})


def test_a_failed_validation_applies_nothing(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        names = same_shard("pair", 2)
        await c.create_var("boss", names[0], "red")
        await c.create_var("boss", names[1], "red", constraints={"enum": ["red", "blue"]})
        out = await c.start_session("boss", "vote", participants=["g1", "g2"],
                                    variables=names, params={"options": ["red", "green"]},
                                    deadline=5)
        # "green" is fine for the first variable but breaks the second's enum: neither
        # changes.
        assert out["state"] == "failed" and "not one of" in out["reason"]
        assert out["writes"] == {}
        for n in names:
            assert (await c.get_var(n, local=False))["value"] == "red"

    run(daemon, {"g1": {"vote": vote("green")}, "g2": {"vote": vote("green")}}, scenario)


def test_contract_net_with_a_declined_award(daemon: Daemon) -> None:
    def propose(cost: int, eta: int) -> Answer:
        return lambda inv: {"propose": {"cost": cost, "eta": eta}}

    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "job.7", None)
        out = await c.start_session(
            "boss", "contract_net", query={"capabilities": ["p"]}, variables=["job.7"],
            params={"task": "job7", "score": {"cost": 1}, "constraints": {"eta": {"max": 10}}},
            deadline=5)
        r = out["result"]
        assert [e["agent"] for e in r["ranking"]] == ["cheap", "mid", "dear"]
        assert r["ineligible"][0]["agent"] == "late" and r["refused"] == ["busy"]
        assert r["declined"] == ["cheap"] and [e["agent"] for e in r["awarded"]] == ["mid"]
        value = (await c.get_var("job.7", local=False))["value"]
        assert value["awarded"][0]["agent"] == "mid" and value["task"] == "job7"
        await asyncio.sleep(0.2)
        assert [n["kind"] for n in agents["mid"].notices] == ["confirmed"]
        assert [n["kind"] for n in agents["dear"].notices] == ["reject"]

    run(daemon, {
        "cheap": {("contract_net", "cfp"): propose(1, 5),
                  ("contract_net", "award"): lambda inv: {"accept": False}},
        "mid": {("contract_net", "cfp"): propose(5, 5), ("contract_net", "award"): accept},
        "dear": {("contract_net", "cfp"): propose(9, 1), ("contract_net", "award"): accept},
        "late": {("contract_net", "cfp"): propose(0, 50)},
        "busy": {("contract_net", "cfp"): lambda inv: {"refuse": "busy"}},
    }, scenario)


def test_priority_proportional_and_escalation_through_mabeamctl(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "gpus", None)
        out = await c.start_session("boss", "priority", query={"capabilities": ["p"]},
                                    variables=["gpus"], deadline=5,
                                    params={"capacity": 5, "strategy": "proportional"})
        assert sum(out["result"]["allocations"].values()) == 5
        assert (await c.get_var("gpus", local=False))["value"] == out["result"]["allocations"]
        started = await c.start_session("boss", "priority", query={"capabilities": ["p"]},
                                        variables=["gpus"], deadline=20, wait=False,
                                        params={"capacity": 4, "strategy": "escalation"})
        sid = started["session"]
        for _ in range(100):
            if (await c.get_session(sid))["state"] == "escalated":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("never escalated")
        with pytest.raises(Conflict):  # locked while the session runs
            await c.set_var("boss", "gpus", {})
        loop = asyncio.get_running_loop()
        bad = await loop.run_in_executor(None, lambda: ctl(
            daemon, "sessions", "decide", sid, '{"allocations": {"a": 3, "b": 2}}'))
        assert bad.returncode == 1 and "capacity" in bad.stderr
        good = await loop.run_in_executor(None, lambda: ctl(
            daemon, "sessions", "decide", sid, '{"allocations": {"a": 3, "b": 1}}'))
        assert good.returncode == 0, good.stderr
        for _ in range(100):
            rec = await c.get_session(sid)
            if rec["state"] == "applied":
                break
            await asyncio.sleep(0.05)
        assert rec["result"]["decided_by"] == "operator"
        assert (await c.get_var("gpus", local=False))["value"] == {"a": 3, "b": 1, "c": 0}

    run(daemon, {"a": {"priority": lambda inv: {"request": 4}},
                 "b": {"priority": lambda inv: {"request": 2}},
                 "c": {"priority": lambda inv: {"request": 1}}}, scenario)


# --- the engine: locks, absence, crashes, cancellation, errors ------------------------------


def test_locks_refuse_or_queue_and_coordinated_variables(daemon: Daemon) -> None:
    async def slow(inv: Invitation) -> Any:
        await asyncio.sleep(0.6)
        return {"accept": True}

    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "held", 0, access="coordinated")
        with pytest.raises(Forbidden):
            await c.set_var("boss", "held", 1)
        first = await c.start_session("boss", "consensus", participants=["s"],
                                      variables=["held"], params={"proposal": 1},
                                      deadline=5, wait=False)
        with pytest.raises(Conflict, match="locked"):
            await c.start_session("boss", "consensus", participants=["s"], variables=["held"],
                                  params={"proposal": 2}, deadline=5)
        queued = await c.start_session("boss", "consensus", participants=["s"],
                                       variables=["held"], params={"proposal": 2},
                                       deadline=5, on_conflict="queue")
        assert queued["state"] == "applied"
        assert (await c.get_session(first["session"]))["state"] == "applied"
        var = await c.get_var("held", local=False)
        assert (var["value"], var["version"]) == (2, 3)

    run(daemon, {"s": {"consensus": slow}}, scenario)


def test_a_participant_that_leaves_is_absent_and_the_round_ends_early(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        started = await c.start_session("boss", "consensus", participants=["stay", "leave"],
                                        params={"proposal": 1}, deadline=30, wait=False)
        await asyncio.sleep(0.3)
        agents["leave"].stop()
        t0 = time.monotonic()
        for _ in range(200):
            rec = await c.get_session(started["session"])
            if rec["state"] == "applied":
                break
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 5
        assert rec["result"]["missing"] == ["leave"] and rec["absent"] == ["leave"]

    run(daemon, {"stay": {"consensus": accept}, "leave": {}}, scenario)


def test_worker_crash_fails_its_sessions_and_releases_locks(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "crashy", "before")
        started = await c.start_session("boss", "consensus", participants=["m"],
                                        variables=["crashy"], params={"proposal": "after"},
                                        deadline=30, wait=False)
        shard = started["shard"]
        pid = next(w["pid"] for w in daemon.workers() if w["index"] == shard)
        import os
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            try:
                rec = await c.get_session(started["session"])
            except Busy:  # asked the dying worker before the arbiter saw it exit
                continue
            if rec["state"] != "collecting":
                break
            await asyncio.sleep(0.05)
        assert (rec["state"], rec["reason"]) == ("failed", "worker_restarted")
        for _ in range(200):  # the replacement serves the shard again
            try:
                var = await c.get_var("crashy", local=False)
                break
            except Busy:
                await asyncio.sleep(0.05)
        assert var["value"] == "before"
        again = await c.start_session("boss", "consensus", participants=["m"],
                                      variables=["crashy"], params={"proposal": "x"},
                                      deadline=0.5)
        assert again["state"] == "applied"  # no lock left behind

    run(daemon, {"m": {}}, scenario)


def test_cancel_notify_and_refusals(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.register("other")
        s = await c.start_session("boss", "consensus", participants=["q"],
                                  params={"proposal": 1}, deadline=30, wait=False,
                                  notify=True)
        with pytest.raises(Forbidden):
            await c.cancel_session("other", s["session"])
        await c.cancel_session("boss", s["session"], reason="changed my mind")
        push: Push = await c.next_push(timeout=5)
        assert push.op == "session.result" and push.body["state"] == "cancelled"
        assert push.body["reason"] == "changed my mind"
        with pytest.raises(Conflict):
            await c.respond("other", s["session"], 1, {"accept": True})
        a, b = other_shard_names(2)
        for name in (a, b):
            await c.create_var("boss", name, 0)
        bad: list[tuple[dict[str, Any], type[Exception], str]] = [
            ({"protocol": "nope", "participants": ["q"]}, BadRequest, "unknown protocol"),
            ({"protocol": "vote", "participants": ["q"], "params": {}}, BadRequest, "options"),
            ({"protocol": "consensus", "participants": ["q"], "variables": [a, b],
              "params": {"proposal": 1}}, BadRequest, "one shard"),
            ({"protocol": "consensus", "participants": ["q"], "variables": ["missing"],
              "params": {"proposal": 1}}, NotFound, "missing"),
            ({"protocol": "consensus", "participants": ["ghost"],
              "params": {"proposal": 1}}, NotFound, "ghost"),
            ({"protocol": "consensus", "query": {"capabilities": ["none-such"]},
              "params": {"proposal": 1}}, NotFound, "no agent"),
            ({"protocol": "consensus", "participants": ["q"], "params": {"proposal": 1},
              "deadline": -1}, BadRequest, "deadline"),
        ]
        for kwargs, exc, match in bad:
            protocol = kwargs.pop("protocol")
            with pytest.raises(exc, match=match):
                await c.start_session("boss", protocol, **kwargs)

    run(daemon, {"q": {}}, scenario)


def test_a_bad_answer_is_refused_to_the_participant(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.register("voter")
        s = await c.start_session("boss", "vote", participants=["voter"],
                                  params={"options": ["a", "b"]}, deadline=10, wait=False)
        push = await c.next_push(timeout=5)
        assert push.op == "session.invite" and push.body["kind"] == "ballot"
        with pytest.raises(BadRequest, match="not one of"):
            await c.respond("voter", s["session"], push.body["round"], {"vote": "c"})
        with pytest.raises(Conflict, match="not open"):
            await c.respond("voter", s["session"], 7, {"vote": "a"})
        with pytest.raises(Forbidden):
            await c.respond("boss", s["session"], 1, {"vote": "a"})
        await c.respond("voter", s["session"], push.body["round"], {"vote": "b"})
        for _ in range(100):
            rec = await c.get_session(s["session"])
            if rec["state"] == "applied":
                break
            await asyncio.sleep(0.05)
        assert rec["result"]["decision"] == "b"

    run(daemon, {}, scenario)


def test_mabeamctl_sessions_and_protocols(daemon: Daemon) -> None:
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> str:
        s = await c.start_session("boss", "consensus", participants=["z"],
                                  params={"proposal": 1}, deadline=30, wait=False)
        return str(s["session"])

    sid = run(daemon, {"z": {}}, scenario)
    # The participant has gone (bye): the round ended, the session applied "not passed".
    shown = json.loads(ctl(daemon, "sessions", "show", sid, "--json").stdout)
    assert shown["session"] == sid
    listed = json.loads(ctl(daemon, "sessions", "list", "--json").stdout)
    assert sid in [r["session"] for r in listed]
    text = ctl(daemon, "sessions", "show", sid).stdout
    assert "consensus" in text and "initiator" in text
    missing = ctl(daemon, "sessions", "cancel", "no-such")
    assert missing.returncode == 1 and "no session" in missing.stderr
    protos = json.loads(ctl(daemon, "protocols", "list", "--json").stdout)
    assert {"consensus", "vote", "weighted_vote", "contract_net", "priority"} <= \
        {p["name"] for p in protos}
    status = daemon.call("status")["sessions"]
    assert status["started"] >= 1 and status["running"] == 0
