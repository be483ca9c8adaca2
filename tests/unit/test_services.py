"""The arbiter's services in-process: the shard-call layer, the variable service (write
admission, routing, list merging) and the session service (start validation, relaying,
ending), each with small fakes for the worker link and the agent endpoint -- no daemon, no
sockets. The real daemon paths are in tests/e2e; these pin the semantics fast."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mabeamd.agents import admission
from mabeamd.agents.events import EventPublisher
from mabeamd.agents.registry import Registry
from mabeamd.agents.varops import VariableService
from mabeamd.config import SessionsSection
from mabeamd.net import shardcall
from mabeamd.net.shardcall import ShardCalls
from mabeamd.net.wire import ErrorCode, Packed, WireError
from mabeamd.plugins import PluginHost
from mabeamd.sessions.service import SessionService
from mabeamd.storage.sharding import shard_of

CONN = (0, b"conn-1")
OTHER = (0, b"conn-2")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class Link:
    """The worker link as the arbiter sees it: what was sent, per shard, and which shards
    are running; answers go back through ShardCalls.on_result."""

    def __init__(self, shards: int) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.running = set(range(shards))
        self.full = False

    def send(self, shard: int, body: dict[str, Any]) -> bool:
        if self.full:
            return False
        self.sent.append((shard, body))
        return True


class Events(EventPublisher):
    def __init__(self) -> None:
        super().__init__(None, None, 0)
        self.got: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, fields: dict[str, Any]) -> None:
        self.got.append((topic, fields))


class Endpoint:
    """The agent endpoint's two faces the services use: a handler table and push()."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.pushed: list[tuple[Any, str, dict[str, Any]]] = []
        self.charged: list[tuple[Any, Any]] = []

    def charge(self, conn: Any, agent: Any) -> None:
        self.charged.append((conn, agent))

    def push(self, conn: Any, pid: int, op: str, body: dict[str, Any]) -> bool:
        self.pushed.append((conn, op, body))
        return True


class Req:
    def __init__(self, conn: Any = CONN) -> None:
        self.conn, self.principal, self.rid, self.op = conn, None, 1, "x"


def calls_on(link: Link, shards: int, events: Events | None = None) -> ShardCalls:
    ev = events or Events()
    return ShardCalls(shards, link.send, link.running.__contains__, ev.publish_write)


def registry_with(*agents: str, conn: Any = CONN) -> Registry:
    r = Registry(100)
    for a in agents:
        r.register(a, conn, None, {"capabilities": ["bid"]}, now=0.0, wall=0.0)
    return r


# --- the shard-call layer ------------------------------------------------------------------


def test_a_call_nobody_answers_times_out_busy_and_a_late_answer_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shardcall, "FORWARD_TIMEOUT", 0.05)
    link = Link(1)

    async def scenario() -> None:
        calls = calls_on(link, 1)
        fut = calls.call(0, "var.get", {"name": "x"}, "@admin")
        with pytest.raises(WireError) as err:
            await asyncio.wait_for(fut, 5)
        assert err.value.code == ErrorCode.BUSY and "did not answer" in err.value.message
        assert calls.pending() == 0  # swept
        calls.on_result({"fwd": link.sent[0][1]["fwd"], "result": 1})  # late: ignored
        ok = calls.call(0, "var.get", {"name": "y"}, "@admin")
        calls.on_result({"fwd": link.sent[1][1]["fwd"], "result": {"value": 2}})
        assert await ok == {"value": 2}

    run(scenario())


def test_calls_fail_busy_when_the_worker_cannot_take_or_answer_them() -> None:
    link = Link(2)

    async def scenario() -> None:
        calls = calls_on(link, 2)
        link.running.discard(1)
        with pytest.raises(WireError, match="not serving") as err:
            calls.call(1, "var.get", {"name": "x"}, "@admin")
        assert err.value.code == ErrorCode.BUSY
        link.full = True
        with pytest.raises(WireError, match="not reachable"):
            calls.call(0, "var.get", {"name": "x"}, "@admin")
        link.full = False
        fut = calls.call(0, "var.set", {"name": "x", "value": 1}, "a")
        other = calls.call(0, "var.get", {"name": "y"}, "@admin")
        calls.worker_down(0)
        for f in (fut, other):
            with pytest.raises(WireError, match="may or may not have been applied"):
                await f
        assert calls.pending() == 0
        # call_all: one refusal cancels the calls already sent
        link.running.discard(1)
        with pytest.raises(WireError):
            calls.call_all("var.list", {}, "@admin")
        assert calls.pending() == 1  # the cancelled one waits for its (dropped) answer
        calls.on_result({"fwd": link.sent[-1][1]["fwd"], "result": {}})
        assert calls.pending() == 0

    run(scenario())


def test_results_carry_the_wire_error_shape_packed_bodies_and_write_events() -> None:
    link = Link(1)
    events = Events()

    async def scenario() -> None:
        calls = calls_on(link, 1, events)
        err = WireError(ErrorCode.WRONG_SHARD, "not mine", details={"shard": 1, "shards": 2})
        f1 = calls.call(0, "var.get", {"name": "x"}, "@admin")
        calls.on_result({"fwd": link.sent[-1][1]["fwd"], "error": err.body()})
        with pytest.raises(WireError) as got:
            await f1
        assert (got.value.code, got.value.message, got.value.details) == \
            (ErrorCode.WRONG_SHARD, "not mine", {"shard": 1, "shards": 2})
        f2 = calls.call(0, "var.get", {"name": "x"}, "@admin")
        calls.on_result({"fwd": link.sent[-1][1]["fwd"], "packed": b"\x81\xa1a\x01"})
        packed = await f2
        assert type(packed) is Packed and bytes(packed) == b"\x81\xa1a\x01"
        f3 = calls.call(0, "var.set", {"name": "x", "value": 1}, "a")
        calls.on_result({"fwd": link.sent[-1][1]["fwd"], "result": {"version": 2},
                         "event": {"name": "x", "version": 2}})
        assert await f3 == {"version": 2}
        assert events.got == [("var.x", {"name": "x", "version": 2})]
        f4 = calls.call(0, "var.get", {"name": "x"}, "@admin")
        calls.on_result({"fwd": link.sent[-1][1]["fwd"], "error": "garbage"})
        with pytest.raises(WireError) as bad:
            await f4
        assert bad.value.code == ErrorCode.INTERNAL

    run(scenario())


# --- write admission and the variable service ----------------------------------------------


def test_admission_checks_in_order_and_strips_agent_and_proof() -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def vouch(caller: Any, agent: str, body: dict[str, Any]) -> None:
        if body.pop("credential") != "good":
            raise WireError(ErrorCode.NOT_REGISTERED, "bad credential")

    def authorize(actor: str, op: str, body: dict[str, Any]) -> str | None:
        seen.append((actor, op, dict(body)))
        return "no writes to secret/" if str(body["name"]).startswith("secret/") else None

    adm = admission.WriteAdmission(vouch, authorize, ("credential",))
    actor, args = adm.admit("var.set", {"agent": "a", "name": "x", "value": 1,
                                        "credential": "good"})
    assert (actor, args) == ("a", {"name": "x", "value": 1})
    assert seen == [("a", "var.set", {"agent": "a", "name": "x", "value": 1})]
    cases = [
        ({"agent": "a", "name": "x", "value": 1}, ErrorCode.BAD_REQUEST),  # no credential
        ({"agent": "a", "name": "x", "value": 1, "credential": "good", "colour": 1},
         ErrorCode.BAD_REQUEST),
        ({"agent": 7, "name": "x", "value": 1, "credential": "good"}, ErrorCode.BAD_REQUEST),
        ({"agent": "a", "name": "x", "value": 1, "credential": "bad"},
         ErrorCode.NOT_REGISTERED),
        ({"agent": "a", "name": "secret/x", "value": 1, "credential": "good"},
         ErrorCode.FORBIDDEN),
    ]
    for body, code in cases:
        with pytest.raises(WireError) as err:
            adm.admit("var.set", body)
        assert err.value.code == code, body


def test_a_batch_goes_to_each_shard_as_one_message_and_comes_back_in_order() -> None:
    """var.batch in the arbiter: ops admitted one by one (a refusal answers its element
    alone), each shard's ops in one link message, elements put back in request order, a
    part whose worker is down answered busy op by op, each op past the first charged."""
    from mabeamd.agents import batch

    link = Link(2)
    events = Events()

    async def scenario() -> None:
        svc = VariableService(calls_on(link, 2, events), registry_with("a"),
                              lambda actor, op, body: None)
        ep = Endpoint()
        svc.install(ep)  # type: ignore[arg-type]
        on0 = [n for n in (f"b/{i}" for i in range(40)) if shard_of(n, 2) == 0][:2]
        on1 = [n for n in (f"b/{i}" for i in range(40)) if shard_of(n, 2) == 1][:2]
        ops = [{"op": "var.set", "agent": "a", "name": on0[0], "value": 1},
               {"op": "var.get", "name": on1[0]},
               {"op": "var.set", "agent": "zed", "name": on0[1], "value": 1},  # not here
               {"op": "var.list"},
               {"op": "var.get", "name": on0[1]},
               {"op": "var.get", "name": on1[1]}]
        fut = ep.handlers["var.batch"](Req(), {"ops": ops})
        assert [(conn, agent) for conn, agent in ep.charged] == \
            [(CONN, None), (CONN, "zed"), (CONN, None), (CONN, None), (CONN, None)], \
            ep.charged
        sent = {shard: body for shard, body in link.sent}
        assert set(sent) == {0, 1} and len(link.sent) == 2
        assert all(b["op"] == "var.batch" for b in sent.values())
        assert [item[2] for item in sent[0]["args"]["items"]] == ["a", "@admin"]
        assert [item[1]["name"] for item in sent[1]["args"]["items"]] == on1
        elements = {0: [batch.ok({"k": 0}), batch.ok({"k": 4})],
                    1: [batch.ok({"k": 1}), batch.error(WireError(ErrorCode.NOT_FOUND, "no"))]}
        for shard, body in sent.items():
            svc.calls.on_result({"fwd": body["fwd"], "elements": elements[shard],
                                 "events": [{"name": on0[0], "op": "set", "version": 2,
                                             "by": "a", "value": 1}] if shard == 0 else []})
        reply = await fut
        from mabeamd.net import wire
        got = wire.unpack(bytes(reply))["results"]
        assert [e["status"] for e in got] == ["ok", "ok", "error", "error", "ok", "error"]
        assert [got[i]["result"]["k"] for i in (0, 1, 4)] == [0, 1, 4]
        assert got[2]["error"]["code"] == ErrorCode.NOT_REGISTERED
        assert got[3]["error"]["code"] == ErrorCode.BAD_REQUEST
        assert got[5]["error"]["code"] == ErrorCode.NOT_FOUND
        assert [t for t, _ in events.got] == [f"var.{on0[0]}"]
        # A part whose worker is down: its ops busy, the other part served.
        link.running.discard(1)
        link.sent.clear()
        fut = ep.handlers["var.batch"](Req(), {"ops": [{"op": "var.get", "name": on1[0]},
                                                       {"op": "var.get", "name": on0[0]}]})
        [(shard, body)] = link.sent
        svc.calls.on_result({"fwd": body["fwd"], "elements": [batch.ok(7)], "events": []})
        got = wire.unpack(bytes(await fut))["results"]
        assert got[0]["error"]["code"] == ErrorCode.BUSY and got[1]["result"] == 7
        # Nothing sent at all when every op is refused in the arbiter; a hook that raises
        # fails its op alone, as an incident.
        link.sent.clear()
        svc.admission._authorize = lambda actor, op, body: 1 / 0  # type: ignore[assignment]
        reply = ep.handlers["var.batch"](Req(), {"ops": [
            {"op": "nope"}, {"op": "var.set", "agent": "a", "name": on0[0], "value": 1}]})
        codes = [e["error"]["code"] for e in wire.unpack(bytes(reply))["results"]]
        assert codes == [ErrorCode.BAD_REQUEST, ErrorCode.INTERNAL] and not link.sent
    run(scenario())


def test_variable_writes_need_the_agent_on_this_connection_and_go_to_the_names_shard() -> None:
    link = Link(4)
    refused: list[str] = []

    def authorize(actor: str, op: str, body: dict[str, Any]) -> str | None:
        refused.append(op)
        return "read-only" if op == "var.delete" else None

    async def scenario() -> None:
        svc = VariableService(calls_on(link, 4), registry_with("a"), authorize)
        ep = Endpoint()
        svc.install(ep)  # type: ignore[arg-type]
        name = "jobs/7"
        fut = ep.handlers["var.set"](Req(), {"agent": "a", "name": name, "value": 3})
        shard, body = link.sent[-1]
        assert shard == shard_of(name, 4)
        assert body["op"] == "var.set" and body["actor"] == "a"
        assert body["args"] == {"name": name, "value": 3}
        svc.calls.on_result({"fwd": body["fwd"], "result": {"version": 1}})
        assert await fut == {"version": 1}
        with pytest.raises(WireError) as err:
            ep.handlers["var.set"](Req(OTHER), {"agent": "a", "name": name, "value": 3})
        assert err.value.code == ErrorCode.NOT_REGISTERED
        with pytest.raises(WireError) as err:
            ep.handlers["var.delete"](Req(), {"agent": "a", "name": name})
        assert err.value.code == ErrorCode.FORBIDDEN and err.value.message == "read-only"
        with pytest.raises(WireError) as err:
            ep.handlers["var.get"](Req(), {"name": 5})
        assert err.value.code == ErrorCode.BAD_REQUEST
        reads = len(link.sent)
        ep.handlers["var.get"](Req(OTHER), {"name": name})  # reads need no agent
        assert link.sent[-1][1]["actor"] == "@admin" and len(link.sent) == reads + 1

    run(scenario())


def test_var_list_merges_every_shards_page_in_name_order() -> None:
    link = Link(3)

    async def scenario() -> None:
        svc = VariableService(calls_on(link, 3), registry_with(), lambda *a: None)
        task = asyncio.ensure_future(svc.list_vars({"prefix": "p/", "limit": 3}))
        await asyncio.sleep(0)
        pages = {0: ["p/e", "p/b"], 1: ["p/a"], 2: ["p/d", "p/c"]}
        for shard, body in link.sent:
            assert body["args"] == {"prefix": "p/", "after": "", "limit": 3}
            names = sorted(pages[shard])
            svc.calls.on_result({"fwd": body["fwd"], "result": {
                "vars": [{"name": n} for n in names], "next": None}})
        page = await task
        assert [v["name"] for v in page["vars"]] == ["p/a", "p/b", "p/c"]
        assert page["next"] == "p/c"  # five matched, three shown
        for bad in ({"limit": 0}, {"limit": True}, {"prefix": 1}, {"colour": "red"}):
            with pytest.raises(WireError) as err:
                await svc.list_vars(bad)
            assert err.value.code == ErrorCode.BAD_REQUEST

    run(scenario())


# --- the session service -------------------------------------------------------------------


def session_service(link: Link, shards: int = 2, **settings: Any,
                    ) -> tuple[SessionService, Endpoint, Events]:
    plugins = PluginHost()
    plugins.load([])
    ep, events = Endpoint(), Events()
    svc = SessionService(calls_on(link, shards, events),
                         registry_with("init", "b1", "b2"), ep,  # type: ignore[arg-type]
                         events, plugins, settings=SessionsSection(**settings))
    svc.install(ep)  # type: ignore[arg-type]
    return svc, ep, events


def test_session_start_is_refused_before_any_worker_is_asked() -> None:
    link = Link(2)

    async def scenario() -> None:
        svc, ep, _ = session_service(link, max_deadline=60.0)
        start = ep.handlers["session.start"]
        base = {"agent": "init", "protocol": "sealed_bid", "participants": ["b1", "b2"]}
        apart = ["{x}a", next(f"{{y{i}}}b" for i in range(100)
                              if shard_of(f"{{y{i}}}b", 2) != shard_of("{x}a", 2))]
        cases = [
            ({"protocol": "haggle"}, "unknown protocol 'haggle'; installed: "),
            ({"deadline": 0}, "deadline must be seconds in (0, 60]"),
            ({"deadline": 61}, "deadline must be seconds in (0, 60]"),
            ({"deadline": True}, "deadline must be seconds"),
            ({"params": []}, "params must be a map"),
            ({"on_conflict": "wait"}, "on_conflict must be refuse or queue"),
            ({"participants": ["b1", "b1"]}, "participants must be distinct"),
            ({"participants": ["b1", "nobody"]}, "participant 'nobody' is not registered"),
            ({"participants": None, "query": {"capabilities": ["fly"]}},
             "no agent matches the query"),
            ({"variables": apart}, "must live on one shard"),
        ]
        for change, message in cases:
            body = {**base, **change}
            body = {k: v for k, v in body.items() if v is not None}
            with pytest.raises(WireError, match=re.escape(message)):
                await start(Req(), body)
        with pytest.raises(WireError) as err:
            await start(Req(OTHER), base)
        assert err.value.code == ErrorCode.NOT_REGISTERED
        assert link.sent == [] and svc.live == {}

    run(scenario())


def test_session_start_resolves_terms_relays_and_ends_with_the_workers_record() -> None:
    link = Link(2)

    async def scenario() -> None:
        svc, ep, events = session_service(link, max_deadline=60.0, keep_finished=1)
        start = ep.handlers["session.start"]
        task = asyncio.ensure_future(start(Req(), {
            "agent": "init", "protocol": "sealed_bid", "query": {"capabilities": ["bid"]},
            "variables": ["{lot}price", "{lot}winner"], "notify": True}))
        await asyncio.sleep(0)
        shard, body = link.sent[-1]
        assert shard == shard_of("{lot}price", 2) and body["op"] == "session.start"
        spec = body["args"]
        default = svc.protocols["sealed_bid"].default_deadline
        assert spec["deadline"] == min(default, 60.0) and spec["max_deadline"] == 60.0
        assert [p["id"] for p in spec["participants"]] == ["b1", "b2", "init"]
        svc.calls.on_result({"fwd": body["fwd"], "result": {"state": "collecting"}})
        started = await task
        sid = started["session"]
        assert started == {"session": sid, "state": "collecting", "shard": shard}
        # the worker's messages: an invitation push, then the end
        gone = svc.on_push(shard, {"agents": ["b1", "ghost"], "op": "session.invite",
                                   "body": {"session": sid}})
        assert gone == ["ghost"]
        # the session's shard: answers may go straight to its worker (one hop)
        assert ep.pushed[-1] == (CONN, "session.invite", {"session": sid, "to": "b1",
                                                          "shard": shard})
        svc.on_ended({"session": sid, "state": "applied", "result": {"winner": "b1"}})
        assert sid not in svc.live and svc.stats["applied"] == 1
        assert ep.pushed[-1][1] == "session.result"  # notify: true
        assert (await svc.show(sid))["result"] == {"winner": "b1"}
        with pytest.raises(WireError) as err:
            await svc.cancel_as(sid, "mabeamctl")
        assert err.value.code == ErrorCode.CONFLICT
        # a second session, whose worker dies: failed, worker_restarted; keep_finished = 1
        task = asyncio.ensure_future(start(Req(), {
            "agent": "init", "protocol": "sealed_bid", "participants": ["b1"],
            "key": "k", "deadline": 5}))
        await asyncio.sleep(0)
        shard2, body2 = link.sent[-1]
        assert body2["args"]["deadline"] == 5.0
        svc.calls.on_result({"fwd": body2["fwd"], "result": {"state": "collecting"}})
        sid2 = (await task)["session"]
        with pytest.raises(WireError) as err:
            await ep.handlers["session.cancel"](Req(), {"agent": "b1", "session": sid2})
        assert err.value.code == ErrorCode.FORBIDDEN and "only the initiator" in str(err.value)
        svc.worker_down(shard2)
        assert (await svc.show(sid2))["reason"] == "worker_restarted"
        assert ("session.failed", {"session": sid2, "protocol": "sealed_bid",
                                   "reason": "worker_restarted"}) in events.got
        assert list(svc.ended) == [sid2]  # the first was dropped: keep_finished = 1
        with pytest.raises(WireError) as err:
            await svc.show(sid)
        assert err.value.code == ErrorCode.NOT_FOUND

    run(scenario())
