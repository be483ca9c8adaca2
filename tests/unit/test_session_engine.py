"""The session engine in-process: a real Shard on a temp directory (no sockets), a real
PluginHost with small protocols registered, and an `out` callback that records what the
engine sends the arbiter (invitation pushes, events, ended records). Each test waits on
those records, never on the clock, except the ones about deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from mabeamd.hookspecs import hookimpl
from mabeamd.net.wire import WireError
from mabeamd.plugins import PluginHost
from mabeamd.protocol import (
    OneRound,
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    write_all,
)
from mabeamd.sessions import engine as enginemod
from mabeamd.sessions.engine import SessionEngine
from mabeamd.worker.shard import Shard


class Collect(OneRound):
    """Answers {"n": INT}; the outcome lists the kept answers in the order decide_typed got
    them and writes it to every session variable."""

    name = "collect"
    kind = "ask"

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"resubmit": params.get("resubmit", True)}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        if not isinstance(value, dict) or type(value.get("n")) is not int:
            raise ProtocolError('answer {"n": INT}')

    def resubmit(self, kind: str, params: dict[str, Any]) -> bool:
        return bool(params["resubmit"])

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        return {"answers": [[r.agent, r.value["n"]] for r in responses],
                "seqs": [r.seq for r in responses]}

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return write_all(session.variables, result["answers"])


class Stray(Collect):
    name = "stray"

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return {**write_all(session.variables, 1), "elsewhere": 1}


class Stall(Protocol):
    """A driver that never decides (it waits for an operator who never comes)."""

    name = "stall"

    async def run(self, session: Session) -> Outcome:
        await session.escalate({"why": "test"}, lambda d: None)
        raise AssertionError("nobody decides in these tests")


class Plugin:
    @hookimpl
    def mabeamd_protocols(self) -> list[Protocol]:
        return [Collect(), Stray(), Stall()]


class Out:
    """The engine's `out` callback: records every (kind, body) and wakes waiters."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: str, body: dict[str, Any]) -> None:
        self.log.append((kind, body))
        self._changed.set()

    async def wait(self, pred: Callable[[str, dict[str, Any]], bool],
                   timeout: float = 10.0) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while True:
                for kind, body in self.log:
                    if pred(kind, body):
                        return body
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(scan(), timeout)

    async def ended(self, session: str) -> dict[str, Any]:
        return await self.wait(lambda k, b: k == "ended" and b["session"] == session)

    async def invited(self, session: str, round_no: int = 1) -> dict[str, Any]:
        return await self.wait(lambda k, b: k == "push" and b["op"] == "session.invite"
                               and b["body"]["session"] == session
                               and b["body"]["round"] == round_no)


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    (tmp_path / "shm").mkdir()
    s = Shard(0, tmp_path / "state", tmp_path / "shm", "mb-engine", fsync="never",
              history=4, max_value=1 << 16, snapshot_every=10_000)
    for name in ("x", "y"):
        s.handle("var.create", {"name": name, "value": 0}, "admin", time.time())
    s.commit()
    yield s
    s.close()


def run(shard: Shard, test: Callable[[SessionEngine, Out], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        host = PluginHost()
        host.register("engine-test", Plugin())
        out = Out()
        engine = SessionEngine(shard, host, out)
        try:
            await test(engine, out)
        finally:
            await engine.stop()
    asyncio.run(main())


def spec(session: str, protocol: str = "collect", agents: tuple[str, ...] = ("a", "b"),
         variables: tuple[str, ...] = ("x",), deadline: float = 30.0,
         **extra: Any) -> dict[str, Any]:
    return {"session": session, "protocol": protocol, "initiator": "boss",
            "participants": [{"id": a} for a in agents], "variables": list(variables),
            "params": {}, "deadline": deadline, "max_deadline": 60.0, **extra}


def respond(engine: SessionEngine, session: str, agent: str, n: Any,
            round_no: int = 1) -> Any:
    return engine.handle("session.respond", {"session": session, "agent": agent,
                                             "round": round_no, "response": {"n": n}})


def test_one_round_collects_answers_and_applies_them(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        assert engine.start(spec("s1")) == {"session": "s1", "state": "created",
                                            "shard": 0}
        invite = await out.invited("s1")
        assert invite["agents"] == ["a", "b"] and invite["body"]["kind"] == "ask"
        assert shard.locked == {"x": "s1"}
        with pytest.raises(WireError) as bad:
            respond(engine, "s1", "a", "three")
        assert bad.value.code == "bad_request"  # refused at arrival, may answer again
        with pytest.raises(WireError) as stranger:
            respond(engine, "s1", "z", 1)
        assert stranger.value.code == "forbidden"
        assert respond(engine, "s1", "b", 2)["recorded"]
        assert engine.handle("session.get", {"session": "s1"})["waiting"] == ["a"]
        respond(engine, "s1", "a", 1)
        ended = await out.ended("s1")
        assert ended["state"] == "applied"
        assert ended["result"]["answers"] == [["b", 2], ["a", 1]]  # arrival order
        assert shard.store.get("x").value == [["b", 2], ["a", 1]]
        assert ("event", {"topic": "var.x", "body": {
            "name": "x", "op": "set", "version": 2, "by": "session:s1",
            "value": [["b", 2], ["a", 1]]}}) in out.log
        assert shard.locked == {} and engine.live == {}
    run(shard, test)


def test_a_resubmitted_answer_replaces_the_first_and_takes_its_place(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1", agents=("a", "b", "c")))
        await out.invited("s1")
        for agent, n in (("a", 1), ("b", 2), ("a", 3), ("c", 4)):
            respond(engine, "s1", agent, n)
        ended = await out.ended("s1")
        assert ended["result"]["answers"] == [["b", 2], ["a", 3], ["c", 4]]
        seqs = ended["result"]["seqs"]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3

        once = spec("s2", agents=("a", "b"), variables=("y",))
        once["params"] = {"resubmit": False}
        engine.start(once)
        await out.invited("s2")
        respond(engine, "s2", "a", 1)
        with pytest.raises(WireError) as second:
            respond(engine, "s2", "a", 5)
        assert second.value.code == "conflict"
        respond(engine, "s2", "b", 2)
        assert (await out.ended("s2"))["result"]["answers"] == [["a", 1], ["b", 2]]
    run(shard, test)


def test_an_absent_agent_ends_the_round_early(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1", deadline=30.0))
        await out.invited("s1")
        respond(engine, "s1", "a", 1)
        engine.agents_down(["b"])
        ended = await out.ended("s1")
        assert ended["state"] == "applied" and ended["absent"] == ["b"]
        assert ended["result"]["answers"] == [["a", 1]]
        assert ended["elapsed"] < 30.0
    run(shard, test)


def test_the_deadline_closes_the_round_and_cuts_off_a_driver(
        shard: Shard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enginemod, "OVERRUN", 0.05)

    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1", deadline=0.3))
        respond_after = await out.invited("s1")
        assert 0 < respond_after["body"]["deadline_in"] <= 0.3
        respond(engine, "s1", "a", 7)
        ended = await out.ended("s1")  # b never answers: the round closes at the deadline
        assert ended["state"] == "applied" and ended["result"]["answers"] == [["a", 7]]
        assert ended["elapsed"] >= 0.3

        engine.start(spec("s2", protocol="stall", deadline=0.2))
        ended = await out.ended("s2")
        assert ended["state"] == "timed_out" and ended["writes"] == {}
        assert ended["reason"] == "deadline reached before a decision"
        assert shard.store.get("x").value == [["a", 7]] and shard.locked == {}
    run(shard, test)


def test_cancel_ends_the_session_and_applies_nothing(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1"))
        await out.invited("s1")
        respond(engine, "s1", "a", 1)
        assert engine.handle("session.cancel", {"session": "s1", "by": "op"}) == {
            "session": "s1", "cancelling": True}
        ended = await out.ended("s1")
        assert (ended["state"], ended["reason"]) == ("cancelled", "cancelled by op")
        assert shard.store.get("x").value == 0 and shard.locked == {}
        with pytest.raises(WireError) as gone:
            respond(engine, "s1", "b", 2)
        assert gone.value.code == "not_found"
        assert ("event", {"topic": "session.cancelled", "body": {
            "session": "s1", "protocol": "collect", "reason": "cancelled by op",
            "result": None}}) in out.log
    run(shard, test)


def test_an_outcome_writing_outside_the_session_is_refused(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1", protocol="stray", agents=("a",)))
        await out.invited("s1")
        respond(engine, "s1", "a", 1)
        ended = await out.ended("s1")
        assert ended["state"] == "failed" and ended["writes"] == {}
        assert ended["reason"] == ("outcome writes variables outside the session: "
                                   "['elsewhere']")
        assert shard.store.get("x").value == 0  # all or nothing: not even the allowed one
    run(shard, test)


def test_queued_sessions_wait_for_the_lock(shard: Shard) -> None:
    async def test(engine: SessionEngine, out: Out) -> None:
        engine.start(spec("s1", agents=("a",)))
        assert engine.start(spec("s2", agents=("b",), variables=("x", "y"),
                                 on_conflict="queue"))["state"] == "queued"
        with pytest.raises(WireError) as refused:
            engine.start(spec("s3", agents=("c",)))
        assert refused.value.code == "conflict" and "x (s1)" in refused.value.message
        assert engine.handle("session.get", {"session": "s2"})["state"] == "queued"
        assert shard.locked == {"x": "s1"}  # a queued session holds nothing yet
        await out.invited("s1")
        respond(engine, "s1", "a", 1)
        assert (await out.ended("s1"))["state"] == "applied"
        await out.invited("s2")  # its turn: it locked both and opened its round
        assert shard.locked == {"x": "s2", "y": "s2"}
        respond(engine, "s2", "b", 2)
        assert (await out.ended("s2"))["state"] == "applied"
        x = shard.store.get("x")
        assert (x.version, x.value) == (3, [["b", 2]])  # s1's write, then s2's
    run(shard, test)
