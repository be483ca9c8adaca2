"""var.batch against real daemons: each op answered on its own and in order, on shard
endpoints and through the agent endpoint; refusals of the batch as a whole change nothing;
events, rate limits, a stale shard count, and acknowledged batch writes across kill -9 of
workers and of the daemon. (Semantics: mabeamd/agents/batch.py.)"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mabeamd.agents.batch import MAX_OPS
from mabeamd.client import (
    AsyncClient,
    BadRequest,
    BatchError,
    Client,
    Forbidden,
    MabeamError,
    NotFound,
    VersionMismatch,
)
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import ENDPOINTS, Daemon
from tests.e2e.test_shard_endpoint import Wire


@pytest.fixture
def bare(daemon: Daemon) -> Iterator[Wire]:
    w = Wire(daemon.agent_endpoint)
    yield w
    w.close()


def names_on(shard: int, prefix: str, n: int, shards: int = 2) -> list[str]:
    return [name for name in (f"{prefix}{i}" for i in range(10 * n))
            if shard_of(name, shards) == shard][:n]


@pytest.mark.parametrize("direct", [True, False], ids=["shard_endpoints", "agent_endpoint"])
def test_each_op_of_a_batch_is_answered_on_its_own_in_order(daemon: Daemon,
                                                            direct: bool) -> None:
    with Client(daemon.agent_endpoint, timeout=10, direct=direct) as c:
        c.register("alice")
        c.register("bob")
        names = names_on(0, "b/", 3) + names_on(1, "b/", 3)  # both shards
        c.create_var("bob", "b/bobs", 0, access="owner_only")
        ops: list[Any] = [{"op": "var.create", "agent": "alice", "name": n, "value": i}
                          for i, n in enumerate(names)]
        ops += [
            {"op": "var.set", "agent": "alice", "name": names[0], "value": "x",
             "expect_version": 7},                                        # 6: conflict
            {"op": "var.set", "agent": "alice", "name": names[0], "value": "y",
             "expect_version": 1},                                        # 7: applied
            {"op": "var.get", "name": names[0]},                          # 8: sees 7
            {"op": "var.get", "name": "b/none"},                          # 9: not found
            {"op": "var.set", "agent": "alice", "name": "b/bobs", "value": 1},  # 10
            {"op": "var.list"},                                           # 11: not batchable
            "not a map",                                                  # 12
            {"op": "var.set", "agent": "alice", "name": names[3], "value": 9,
             "extra": 1},                                                 # 13: bad field
            {"op": "var.delete", "agent": "alice", "name": names[4]},     # 14
            {"op": "var.history", "name": names[0]},                      # 15
            {"op": "var.create", "agent": "alice", "name": names[5], "value": 0},  # 16
        ]
        r = c.batch(ops)
        assert len(r) == len(ops)
        assert [(v["name"], v["version"], v["value"]) for v in r[:6]] == \
            [(n, 1, i) for i, n in enumerate(names)]
        assert isinstance(r[6], VersionMismatch)
        assert (r[7]["version"], r[7]["value"]) == (2, "y")
        assert (r[8]["version"], r[8]["value"]) == (2, "y")
        assert isinstance(r[9], NotFound)
        assert isinstance(r[10], Forbidden)
        assert isinstance(r[11], BadRequest) and "cannot be batched" in str(r[11])
        assert isinstance(r[12], BadRequest)
        assert isinstance(r[13], BadRequest)
        assert r[14]["deleted"] is True
        assert [h["value"] for h in r[15]["history"]] == [0]
        assert r[16].code == "exists"
        # What the batch did is what single ops see afterwards.
        assert c.get_var(names[0], local=False)["value"] == "y"
        assert c.get_var(names[3], local=False)["value"] == 3
        with pytest.raises(NotFound):
            c.get_var(names[4], local=False)
        assert c.get_var("b/bobs", local=False)["value"] == 0
        # The helpers over it.
        assert c.get_many([names[1], "b/none", names[4]], local=False) == {
            names[1]: c.get_var(names[1], local=False), "b/none": None, names[4]: None}
        got = c.set_many("alice", {n: "m" for n in names[:3]})
        assert [got[n]["value"] for n in names[:3]] == ["m"] * 3
        with pytest.raises(BatchError) as info, c.pipeline() as p:
            p.set("alice", names[1], "p").get(names[1]).delete("alice", "b/none")
        assert [i for i, _ in info.value.errors] == [2]
        assert info.value.results[1]["value"] == "p"
        assert c.pipeline().execute() == []  # nothing queued: no message


def test_a_batch_on_a_shard_endpoint_over_the_bare_wire(daemon: Daemon, bare: Wire) -> None:
    """What a client in another language sees: elements in order; a name of the other
    shard, a forged credential or a bad element fail alone; a malformed batch is refused
    whole and changes nothing."""
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    eps, cred = hello["shard_endpoints"], hello["credential"]
    mine, other = names_on(0, "w/", 3), names_on(1, "w/", 1)[0]
    s = bare.sock(eps[0])
    w = {"agent": "alice", "credential": cred}
    reply = bare.ok(s, "var.batch", {"ops": [
        {"op": "var.create", **w, "name": mine[0], "value": 1},
        {"op": "var.create", **w, "name": other, "value": 1},
        {"op": "var.set", "agent": "alice", "credential": cred[:-2] + "00", "name": mine[2],
         "value": 2},
        {"op": "var.batch", "ops": []},
        {"op": "var.set", **w, "name": mine[0], "value": 3},
        {"op": "var.get", "name": mine[0]},
    ]})
    res = reply["results"]
    assert [e["status"] for e in res] == ["ok", "error", "error", "error", "ok", "ok"]
    assert (res[1]["error"]["code"], res[1]["error"]["shard"]) == ("wrong_shard", 1)
    assert res[2]["error"]["code"] in ("not_registered", "bad_request")
    assert res[3]["error"]["code"] == "bad_request"
    assert (res[4]["result"]["version"], res[5]["result"]["value"]) == (2, 3)
    # An op on a name not served here holds back the batch's later ops on that name (busy,
    # not run), so resending them through the agent endpoint keeps their order.
    res = bare.ok(s, "var.batch", {"ops": [
        {"op": "var.set", "agent": "alice", "credential": "1.bad", "name": mine[0],
         "value": 4},
        {"op": "var.get", "name": mine[0]},
        {"op": "var.set", **w, "name": mine[0], "value": 5},
        {"op": "var.get", "name": [mine[0]]},  # not a name: its own bad_request
        {"op": "var.get", "name": mine[1]},
    ]})["results"]
    assert [e["error"]["code"] if e["status"] == "error" else "ok" for e in res] == \
        ["not_registered", "busy", "busy", "bad_request", "not_found"]
    assert "earlier op of this batch" in res[1]["error"]["message"]
    assert bare.ok(bare.agent, "var.get", {"name": mine[0]})["value"] == 3
    for body in ({}, {"ops": []}, {"ops": "x"}, {"ops": [{}], "more": 1},
                 {"ops": [{"op": "var.create", **w, "name": mine[1], "value": 1}] *
                  (MAX_OPS + 1)}):
        assert bare.code(s, "var.batch", body) == "bad_request", body
    assert bare.code(bare.agent, "var.batch", {"ops": []}) == "bad_request"
    assert bare.code(bare.agent, "var.get", {"name": mine[1]}) == "not_found"
    assert bare.code(bare.agent, "var.get", {"name": other}) == "not_found"
    assert all(w["state"] == "running" and w["crashes"] == 0 for w in daemon.workers())


def test_batch_writes_publish_their_events(daemon: Daemon) -> None:
    async def scenario() -> list[tuple[str, str, int]]:
        async with AsyncClient(daemon.agent_endpoint, timeout=5) as c:
            await c.register("alice")
            await c.create_var("alice", "ev/warm", 0)
            seen: list[dict[str, Any]] = []
            want = {("ev/a", 2), ("ev/b", 2), ("ev/c", 1)}

            async def watch() -> None:
                async for ev in c.watch_vars("ev/"):
                    seen.append(ev)
                    if want <= {(e["name"], e["version"]) for e in seen}:
                        return
            task = asyncio.create_task(watch())
            for _ in range(250):  # until the subscription is in place and workers know it
                await c.set_var("alice", "ev/warm", 0)
                if seen:
                    break
                await asyncio.sleep(0.02)
            await c.batch([{"op": "var.create", "agent": "alice", "name": n, "value": 1}
                           for n in ("ev/a", "ev/b")])
            await c.set_many("alice", {"ev/a": 2, "ev/b": 2})
            await c.request("var.batch", {"ops": [  # through the arbiter
                {"op": "var.create", "agent": "alice", "name": "ev/c", "value": 1}]})
            await asyncio.wait_for(task, 10)
            return [(e["name"], e["op"], e["version"]) for e in seen if e["name"] != "ev/warm"]
    events = asyncio.run(scenario())
    assert sorted(events) == [("ev/a", "create", 1), ("ev/a", "set", 2),
                              ("ev/b", "create", 1), ("ev/b", "set", 2),
                              ("ev/c", "create", 1)]


def test_each_op_of_a_batch_counts_against_the_rate_limits(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ENDPOINTS + "[limits]\nconnection_requests = 0.01\n"
                    "connection_requests_burst = 5\n").start()
    w = Wire(d.agent_endpoint)
    try:
        hello = w.ok(w.agent, "hello", {"agent": "alice"})
        for sock in (w.agent, w.sock(hello["shard_endpoints"][0])):
            name = names_on(0, "rl/", 1)[0]
            res = w.ok(sock, "var.batch", {"ops": [{"op": "var.get", "name": name}] * 8})
            codes = [e["error"]["code"] if e["status"] == "error" else "ok"
                     for e in res["results"]]
            # hello took one of the agent endpoint's five; not_found is an answer, admitted
            admitted = 4 if sock is w.agent else 5
            assert codes == ["not_found"] * admitted + ["rate_limited"] * (8 - admitted), codes
    finally:
        w.close()


def test_a_stale_shard_count_sends_a_batchs_wrong_shard_ops_through_the_arbiter(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    with Client(daemon.agent_endpoint) as c:
        c.register("stale")
        names = names_on(0, "st/", 4) + names_on(1, "st/", 4)
        for n in names:
            c.create_var("stale", n, 0)
        c.aio.shards = 1  # as if resharded since hello: every name hashes to shard 0
        rounds = 0
        while "those ops sent through the agent endpoint instead" not in caplog.text:
            rounds += 1
            assert rounds < 200, "no batch ever reached shard 0's route"
            got = c.set_many("stale", {n: rounds for n in names})
            assert [got[n]["version"] for n in names] == [rounds + 1] * len(names)
            time.sleep(0.01)
        c.aio.shards = 2
        assert {n: c.get_var(n, local=False)["value"] for n in names} == \
            dict.fromkeys(names, rounds)


def test_acknowledged_batch_writes_survive_kill9_of_workers_and_the_daemon(
        make_daemon: Callable[..., Daemon]) -> None:
    """Batches of creates, sets (some with a stale expect_version) and deletes against a
    model of what was acknowledged, interleaved with snapshots, kill -9 of one worker and
    kill -9 of the whole daemon. Every op answered ok must be there after, at its version;
    every op refused must have changed nothing."""
    d = make_daemon('[variables]\nfsync = "never"\n', workers=2).start()
    rng = random.Random(20261204)
    model: dict[str, tuple[int, Any]] = {}
    pool = [f"kb/{i}" for i in range(24)]

    def check(c: Client) -> None:
        got = c.get_many(pool, local=False)
        assert {n: (v["version"], v["value"]) for n, v in got.items() if v} == model

    for step in range(12):
        with Client(d.agent_endpoint, timeout=15) as c:
            c.register("agent-1")
            check(c)
            for _ in range(3):
                ops: list[dict[str, Any]] = []
                for _ in range(rng.randint(1, 40)):
                    name, kind = rng.choice(pool), rng.random()
                    if kind < 0.35:
                        ops.append({"op": "var.create", "agent": "agent-1", "name": name,
                                    "value": step})
                    elif kind < 0.85:
                        op = {"op": "var.set", "agent": "agent-1", "name": name,
                              "value": [step, len(ops)]}
                        if rng.random() < 0.3:
                            op["expect_version"] = rng.randint(1, 4)
                        ops.append(op)
                    else:
                        ops.append({"op": "var.delete", "agent": "agent-1", "name": name})
                for op, r in zip(ops, c.batch(ops), strict=True):
                    if isinstance(r, MabeamError):
                        assert r.code in ("exists", "not_found", "version_mismatch"), r
                    elif op["op"] == "var.delete":
                        model.pop(op["name"])
                    else:
                        model[op["name"]] = (r["version"], op["value"])
                        assert r["value"] == op["value"]
            check(c)
        event = step % 4
        if event == 0:
            assert d.ctl("vars", "snapshot", "--socket", str(d.socket)).returncode == 0
        elif event == 1:
            pid = d.workers()[rng.randint(0, 1)]["pid"]
            os.kill(pid, signal.SIGKILL)
            d.wait_until(lambda pid=pid: all(w["state"] == "running" and w["pid"] not in
                                             (None, pid) for w in d.workers()), timeout=30,
                         what="the killed worker's successor")
        elif event == 2:
            d.signal(signal.SIGKILL)
            d.wait()
            d.start()
    with Client(d.agent_endpoint, timeout=15) as c:
        check(c)


def test_a_max_value_write_and_a_big_batch_through_the_arbiter(daemon: Daemon) -> None:
    """The worker read the arbiter's link messages with a 1 MiB bound: a write of a
    max_value (1 MiB) value relayed by the arbiter, or a batch part of two 600 KB values,
    was dropped and its agent waited out its timeout. (Found by trying batches as a user.)"""
    with Client(daemon.agent_endpoint, timeout=10, direct=False) as c:
        c.register("big")
        c.create_var("big", "big/x", 0)
        # a str of 2**20 - 5 characters packs to exactly max_value (2**20) bytes
        assert c.set_var("big", "big/x", "v" * ((1 << 20) - 5))["version"] == 2
        with pytest.raises(MabeamError) as info:
            c.set_var("big", "big/x", "v" * ((1 << 20) + 10))
        assert info.value.code == "too_large"
        names = names_on(0, "big/", 2)
        got = c.batch([{"op": "var.create", "agent": "big", "name": n, "value": "w" * 600_000}
                       for n in names])
        assert [r["version"] for r in got] == [1, 1]
        assert c.get_var(names[1], local=False)["value"] == "w" * 600_000


@pytest.mark.parametrize("direct", [True, False], ids=["shard_endpoints", "agent_endpoint"])
def test_what_a_batch_cannot_send_fails_alike_on_both_paths(daemon: Daemon,
                                                            direct: bool) -> None:
    """Found by trying batches as a new user: on one path a value msgpack cannot encode, or
    a batch over the daemon's message limit, came back as results, on the other it raised;
    a write without an agent was refused for a missing `credential`; bad arguments gave
    AttributeError or KeyError."""
    with Client(daemon.agent_endpoint, timeout=10, direct=direct) as c:
        c.register("u")
        names = names_on(0, "cs/", 3)
        for n in names:
            c.create_var("u", n, 0)
        with pytest.raises(TypeError, match="msgpack-encodable"):
            c.batch([{"op": "var.set", "agent": "u", "name": names[0], "value": 1},
                     {"op": "var.set", "agent": "u", "name": names[1], "value": object()}])
        with pytest.raises(TypeError):
            c.set_many("u", {names[0]: object()})
        assert c.get_var(names[0], local=False)["version"] == 1  # nothing was sent
        # 2.4 MB in all, over [agents] max_message (2 MiB): the SDK sends it in two messages
        big = c.batch([{"op": "var.set", "agent": "u", "name": n, "value": "b" * 800_000}
                       for n in names])
        assert [r["version"] for r in big] == [2, 2, 2]
        # An op bigger than a message fails alone, before it is sent.
        big = c.batch([{"op": "var.set", "agent": "u", "name": names[0], "value": "c"},
                       {"op": "var.set", "agent": "u", "name": names[1],
                        "value": "b" * 2_200_000},
                       {"op": "var.get", "name": names[0]}])
        assert getattr(big[1], "code", None) == "too_large" and "max_message" in str(big[1])
        assert big[2]["value"] == "c" and big[2]["version"] == 3
        with pytest.raises(BatchError) as info:
            c.set_many("u", {names[1]: "b" * 2_200_000, names[2]: "d"})
        assert [(i, e.code) for i, e in info.value.errors] == [(0, "too_large")]
        assert info.value.results[1]["value"] == "d"
        no_agent = c.batch([{"op": "var.set", "name": names[0], "value": 2}])[0]
        assert isinstance(no_agent, BadRequest) and "credential" not in str(no_agent)
        for bad in ({"op": "var.get", "name": names[0]}, None, "var.get"):
            with pytest.raises(TypeError, match="list of op maps"):
                c.batch(bad)  # type: ignore[arg-type]
        for names_arg in ("cs/0", [1, None]):
            with pytest.raises(TypeError, match="names must be"):
                c.get_many(names_arg)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="values must map"):
            c.set_many("u", [names[0]])  # type: ignore[arg-type]
        with pytest.raises(RuntimeError), c.pipeline() as p:
            p.set("u", names[0], 9)
            raise RuntimeError("the block failed")
        assert len(p) == 0 and p.execute() == []
        assert c.get_var(names[0], local=False)["version"] == 3  # the failed block ran nothing
        # Past MAX_OPS on one name: sent in parts one after another, order kept.
        r = c.batch([{"op": "var.set", "agent": "u", "name": names[2], "value": k}
                     for k in range(1500)] + [{"op": "var.get", "name": names[2]}])
        assert r[-1]["value"] == 1499 and r[-1]["version"] == 3 + 1500
