"""Shard endpoints: variable requests served by the workers themselves (one hop), write
credentials and their revocation, events, fallbacks. Real daemons, real sockets, real
signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from mabeamd.agents import credentials
from mabeamd.client import AsyncClient, Busy, Client, Forbidden, NotFound
from mabeamd.net import wire
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import Daemon, free_port, free_ports, short_tmpdir
from tests.e2e.test_plugins import install


class Wire:
    """A bare wire client, as someone writing one in another language would."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket[Any]] = {}
        self.agent = self.sock(endpoint)
        self.rid = 0

    def sock(self, endpoint: str) -> zmq.Socket[Any]:
        if endpoint not in self.socks:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 5000)
            s.connect(endpoint)
            self.socks[endpoint] = s
        return self.socks[endpoint]

    def call(self, sock: zmq.Socket[Any], op: str, body: Any) -> tuple[str, Any]:
        self.rid += 1
        sock.send_multipart(wire.encode({"id": self.rid, "op": op}, body))
        _, header, reply = sock.recv_multipart()
        h = wire.unpack(header)
        assert h["id"] == self.rid
        return h["status"], wire.unpack(reply)

    def ok(self, sock: zmq.Socket[Any], op: str, body: Any) -> Any:
        status, reply = self.call(sock, op, body)
        assert status == "ok", reply
        return reply

    def code(self, sock: zmq.Socket[Any], op: str, body: Any) -> str:
        status, reply = self.call(sock, op, body)
        assert status == "error", reply
        return str(reply["code"])

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.ctx.term()


@pytest.fixture
def bare(daemon: Daemon) -> Iterator[Wire]:
    w = Wire(daemon.agent_endpoint)
    yield w
    w.close()


def shard_sock(w: Wire, hello: dict[str, Any], name: str) -> zmq.Socket[Any]:
    eps = hello["shard_endpoints"]
    return w.sock(eps[shard_of(name, len(eps))])


def test_hello_offers_shard_endpoints_and_a_credential(daemon: Daemon, bare: Wire) -> None:
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    assert hello["shard_endpoints"] == [f"ipc://{daemon.run_dir}/shard-{i}" for i in range(2)]
    assert hello["credential"].startswith(f"{hello['credential'].split('.')[0]}.")
    name = "plan/x"
    s = shard_sock(bare, hello, name)
    cred = hello["credential"]
    created = bare.ok(s, "var.create", {"agent": "alice", "credential": cred, "name": name,
                                        "value": 1, "type": "int"})
    assert (created["owner"], created["version"]) == ("alice", 1)
    bare.ok(s, "var.set", {"agent": "alice", "credential": cred, "name": name, "value": 2,
                           "expect_version": 1})
    # The agent endpoint and the shard endpoint see the same variable.
    via_arbiter = bare.ok(bare.agent, "var.get", {"name": name})
    assert via_arbiter == bare.ok(s, "var.get", {"name": name})
    assert via_arbiter["value"] == 2 and via_arbiter["modified_by"] == "alice"
    assert [h["value"] for h in bare.ok(s, "var.history", {"name": name})["history"]] == [1]
    assert bare.code(s, "var.set", {"agent": "alice", "credential": cred, "name": name,
                                    "value": 3, "expect_version": 1}) == "version_mismatch"
    assert bare.code(s, "var.set", {"agent": "alice", "credential": cred, "name": name,
                                    "value": "text"}) == "constraint_violation"
    assert bare.ok(s, "var.delete", {"agent": "alice", "credential": cred,
                                     "name": name})["deleted"] is True
    assert bare.code(bare.agent, "var.get", {"name": name}) == "not_found"


def test_bad_requests_and_forged_credentials_change_nothing(daemon: Daemon, bare: Wire) -> None:
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    bare.ok(bare.agent, "hello", {"agent": "bob"})
    cred, name = hello["credential"], "acl/x"
    s = shard_sock(bare, hello, name)
    bare.ok(s, "var.create", {"agent": "alice", "credential": cred, "name": name, "value": 0})
    epoch, _, mac = cred.partition(".")
    forged = [f"{epoch}.{'0' * len(mac)}", f"{int(epoch) + 1}.{mac}", "", "x", 17, None,
              f"{'9' * 40}.{mac}"]
    for bad in forged:
        assert bare.code(s, "var.set", {"agent": "alice", "credential": bad, "name": name,
                                        "value": 1}) in ("not_registered", "bad_request")
    # alice's credential does not speak for bob
    assert bare.code(s, "var.set", {"agent": "bob", "credential": cred, "name": name,
                                    "value": 1}) == "not_registered"
    assert bare.code(s, "var.set", {"agent": "alice", "name": name, "value": 1}) == \
        "bad_request"  # no credential
    assert bare.code(s, "var.set", {"agent": "alice", "credential": cred, "name": name,
                                    "value": 1, "extra": 1}) == "bad_request"
    assert bare.code(s, "var.list", {}) == "unknown_op"
    assert bare.code(s, "hello", {"agent": "mallory"}) == "unknown_op"
    assert bare.code(s, "var.get", {"name": 5}) == "bad_request"
    s.send_multipart([b"MB1", b"\xc1", b"\x80"])  # not msgpack
    assert wire.unpack(s.recv_multipart()[1])["status"] == "error"
    s.send_multipart([b"XX9", wire.pack({"id": 1, "op": "var.get"}), wire.pack({})])
    assert wire.unpack(s.recv_multipart()[2])["code"] == "unsupported_version"
    got = bare.ok(bare.agent, "var.get", {"name": name})
    assert (got["version"], got["value"]) == (1, 0)
    assert all(w["state"] == "running" and w["crashes"] == 0 for w in daemon.workers())


def test_bye_revokes_the_credential_and_a_new_hello_issues_another(
        daemon: Daemon, bare: Wire) -> None:
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    name = "rev/x"
    s = shard_sock(bare, hello, name)
    old = hello["credential"]
    bare.ok(s, "var.create", {"agent": "alice", "credential": old, "name": name, "value": 0})
    bare.ok(bare.agent, "bye", {"agent": "alice"})
    body = {"agent": "alice", "credential": old, "name": name, "value": 1}
    daemon.wait_until(lambda: bare.call(s, "var.set", body)[0] == "error", timeout=5)
    assert bare.code(s, "var.set", body) == "not_registered"
    again = bare.ok(bare.agent, "hello", {"agent": "alice"})
    assert again["credential"] != old
    bare.ok(s, "var.set", {**body, "credential": again["credential"]})
    assert bare.code(s, "var.set", body) == "not_registered"  # the old one stays revoked


def test_takeover_by_another_connection_revokes_the_old_credential(
        daemon: Daemon, bare: Wire) -> None:
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    name = "take/x"
    s = shard_sock(bare, hello, name)
    bare.ok(s, "var.create", {"agent": "alice", "credential": hello["credential"],
                              "name": name, "value": 0})
    other = Wire(daemon.agent_endpoint)
    try:
        taken = other.ok(other.agent, "hello", {"agent": "alice", "token": hello["token"]})
        body = {"agent": "alice", "credential": hello["credential"], "name": name, "value": 1}
        daemon.wait_until(lambda: bare.call(s, "var.set", body)[0] == "error",
                                 timeout=5)
        assert bare.code(s, "var.set", body) == "not_registered"
        t = shard_sock(other, taken, name)
        assert other.ok(t, "var.set", {**body, "credential": taken["credential"]})[
            "version"] >= 2
    finally:
        other.close()


def test_a_restarted_worker_knows_earlier_revocations(daemon: Daemon, bare: Wire) -> None:
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    name = "rev/restart"
    s = shard_sock(bare, hello, name)
    body = {"agent": "alice", "credential": hello["credential"], "name": name, "value": 0}
    bare.ok(s, "var.create", body)
    bare.ok(bare.agent, "bye", {"agent": "alice"})
    index = shard_of(name, 2)
    before = daemon.workers()[index]
    os.kill(before["pid"], signal.SIGKILL)
    daemon.wait_until(lambda: daemon.workers()[index]["generation"] > before["generation"]
                      and daemon.workers()[index]["state"] == "running")
    # The reconnected DEALER reaches the new worker; the old credential stays dead there.
    daemon.wait_until(lambda: bare.call(s, "var.get", {"name": name})[0] == "ok",
                             timeout=10)
    assert bare.code(s, "var.set", {**body, "value": 1}) == "not_registered"


def test_sdk_routes_variable_requests_past_the_arbiter(daemon: Daemon) -> None:
    with Client(daemon.agent_endpoint, timeout=5) as c:
        c.register("alice")
        for i in range(10):  # first requests may fall back while the routes connect
            c.create_var("alice", f"warm/{i}", i)
        before = daemon.call("status")["agent_traffic"]["requests"]
        for i in range(50):
            c.set_var("alice", f"warm/{i % 10}", i)
            assert c.get_var(f"warm/{i % 10}", local=False)["value"] == i
        after = daemon.call("status")["agent_traffic"]["requests"]
        assert after - before < 10, "variable requests went through the agent endpoint"
        served = {}

        def counted() -> bool:
            served.update({w["index"]: (w["shard_traffic"] or {}).get("requests", 0)
                           for w in daemon.workers()})
            return sum(served.values()) >= 100
        daemon.wait_until(counted, timeout=5), served
        assert all(w["shard_endpoint"] for w in daemon.workers())


def test_var_events_of_direct_writes_reach_subscribers(daemon: Daemon) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with AsyncClient(daemon.agent_endpoint, timeout=5) as c:
            await c.register("alice")
            await c.create_var("alice", "ev/warm", 0)
            seen: list[dict[str, Any]] = []

            async def watch() -> None:
                async for ev in c.watch_vars("ev/"):
                    seen.append(ev)
                    if ev.get("name") == "ev/x" and ev.get("version") == 3:
                        return
            task = asyncio.create_task(watch())
            for _ in range(100):  # until the subscription is in place and workers know it
                await asyncio.sleep(0.02)
                await c.set_var("alice", "ev/warm", 0)
                if seen:
                    break
            await c.create_var("alice", "ev/x", 1)
            await c.set_var("alice", "ev/x", 2)
            await c.set_var("alice", "ev/x", 3)
            await asyncio.wait_for(task, 5)
            return [e for e in seen if e["name"] == "ev/x"]
    events = asyncio.run(scenario())
    assert [(e["op"], e["version"], e["value"], e["by"]) for e in events] == \
        [("create", 1, 1, "alice"), ("set", 2, 2, "alice"), ("set", 3, 3, "alice")]


def test_requests_in_flight_when_the_route_drops(daemon: Daemon) -> None:
    """A read in flight on a dropped route is asked again through the agent endpoint; a
    write fails busy (it may or may not have been applied)."""
    black = zmq.Context.instance().socket(zmq.ROUTER)  # takes requests, never answers
    black.setsockopt(zmq.LINGER, 0)
    port = black.bind_to_random_port("tcp://127.0.0.1")

    async def scenario() -> tuple[Any, Any]:
        async with AsyncClient(daemon.agent_endpoint, timeout=5) as c:
            await c.register("alice")
            await c.create_var("alice", "drop/x", 7)
            assert c._routes is not None
            c._routes.update([f"tcp://127.0.0.1:{port}"] * 2)
            c._routes._socket(shard_of("drop/x", 2))  # connect now, before the requests
            await asyncio.sleep(0.3)

            async def in_flight(coro: Any) -> Any:
                task = asyncio.ensure_future(coro)
                for _ in range(500):  # until the black hole has it
                    await asyncio.sleep(0.01)
                    if black.poll(0):
                        black.recv_multipart()
                        return task
                raise AssertionError("the request never reached the route")
            read = await in_flight(c.get_var("drop/x", local=False))
            write = await in_flight(c.set_var("alice", "drop/x", 8))
            black.close(linger=0)  # the "worker" dies with both in flight
            got = await asyncio.wait_for(read, 5)
            with pytest.raises(Busy, match="may or may not have been applied"):
                await asyncio.wait_for(write, 5)
            return got, await c.get_var("drop/x", local=False)
    got, after = asyncio.run(scenario())
    assert got["value"] == 7 and after["value"] == 7


def test_sdk_survives_a_worker_kill(daemon: Daemon) -> None:
    with Client(daemon.agent_endpoint, timeout=5) as c:
        c.register("alice")
        names = [f"k/{i}" for i in range(20)]
        for n in names:
            c.create_var("alice", n, 0)
        victim = daemon.workers()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 15
        for n in names:  # every write lands once the shard serves again
            while True:
                try:
                    c.set_var("alice", n, 1)
                    break
                except Busy:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        assert [c.get_var(n, local=False)["value"] for n in names] == [1] * 20


def test_no_shard_endpoints_when_configured_empty(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("""
[agents]
endpoints = ["ipc://{run}/agents.sock"]
shard_endpoint = ""
[events]
endpoint = ""
""")
    d.start()
    w = Wire(d.agent_endpoint)
    try:
        hello = w.ok(w.agent, "hello", {"agent": "alice"})
        assert "shard_endpoints" not in hello and "credential" not in hello
    finally:
        w.close()
    with Client(d.agent_endpoint, timeout=5) as c:
        c.register("bob")
        c.create_var("bob", "plain/x", 1)
        assert c.set_var("bob", "plain/x", 2)["version"] == 2
    assert all(w["shard_endpoint"] is None for w in d.workers())


def test_a_worker_that_cannot_bind_serves_through_the_arbiter(
        make_daemon: Callable[..., Daemon]) -> None:
    base = free_ports(2)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", base + 1))  # worker 1's port is taken
    squatter.listen()
    try:
        port = free_port()
        d = make_daemon(f"""
[agents]
endpoints = ["tcp://127.0.0.1:{port}"]
shard_endpoint = "tcp://127.0.0.1:{base}"
[events]
endpoint = ""
""")
        d.start()
        assert [w["shard_endpoint"] for w in d.workers()] == \
            [f"tcp://127.0.0.1:{base}", None]
        assert "cannot bind shard endpoint" in d.log()
        with Client(f"tcp://127.0.0.1:{port}", timeout=5) as c:
            c.register("alice")
            names = [f"bind/{i}" for i in range(20)]
            assert {shard_of(n, 2) for n in names} == {0, 1}
            for n in names:
                c.create_var("alice", n, n)
            assert [c.get_var(n, local=False)["value"] for n in names] == names
    finally:
        squatter.close()


def test_credentials_unit() -> None:
    key = os.urandom(32)
    v = credentials.Verifier(key)
    c1 = credentials.issue(key, "alice", 5)
    assert v.check("alice", c1) and not v.check("bob", c1)
    assert not v.check("alice", credentials.issue(os.urandom(32), "alice", 5))
    v.revoke({"alice": 5})
    assert not v.check("alice", c1)
    assert v.check("alice", credentials.issue(key, "alice", 6))
    v.revoke({"alice": 3})  # an older revocation does not undo a newer one
    assert not v.check("alice", c1)
    for bad in ("5", ".abc", "-1.00", "5.zz", 5, None, "5." + "0" * 32):
        assert not v.check("alice", bad)


def test_sync_client_waits_in_the_callers_thread(daemon: Daemon) -> None:
    """Client (blocking) serves variable requests on per-thread routes; a dropped route
    retries reads through the agent endpoint and fails writes busy, as AsyncClient does."""
    import concurrent.futures
    import threading

    with Client(daemon.agent_endpoint, timeout=5) as c:
        c.register("alice")
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(30):
                    name = f"thr/{k}/{i % 5}"
                    if i < 5:
                        c.create_var("alice", name, i)
                    else:
                        c.set_var("alice", name, i)
                    assert c.get_var(name, local=False)["value"] == i
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

        black = zmq.Context.instance().socket(zmq.ROUTER)
        black.setsockopt(zmq.LINGER, 0)
        port = black.bind_to_random_port("tcp://127.0.0.1")

        async def reroute() -> None:
            assert c.aio._routes is not None
            c.aio._routes.update([f"tcp://127.0.0.1:{port}"] * 2)
        c._run(reroute())
        # One helper thread for every call: its route is made (and connected) once.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        warm = pool.submit(c.get_var, "thr/0/0", local=False)
        if black.poll(1000):  # the route connected at once: answer, as a worker would
            envelope, _, header, _ = black.recv_multipart()
            black.send_multipart([envelope, *wire.reply_ok(wire.unpack(header)["id"], {})])
        warm.result(5)  # else it went to the agent endpoint while the route connected
        time.sleep(0.3)
        results: dict[str, Any] = {}
        for key, fn in (("read", lambda: c.get_var("thr/0/0", local=False)),
                        ("write", lambda: c.set_var("alice", "thr/0/0", 99))):
            fut = pool.submit(fn)
            assert black.poll(5000), f"the {key} never reached the route"
            black.recv_multipart()
            black.close(linger=0)
            try:
                results[key] = fut.result(10)
            except Exception as exc:
                results[key] = exc
            black = zmq.Context.instance().socket(zmq.ROUTER)
            black.setsockopt(zmq.LINGER, 0)
            black.bind(f"tcp://127.0.0.1:{port}")
            time.sleep(0.3)  # the route reconnects
        pool.shutdown()
        black.close(linger=0)
        assert results["read"]["value"] == 25  # thread 0 wrote 25 last to thr/0/0
        assert isinstance(results["write"], Busy), results["write"]


GUARD = """
import pluggy

hookimpl = pluggy.HookimplMarker("mabeamd")


@hookimpl
def mabeamd_authorize(actor, op, details):
    if str(details.get("name", "")).startswith("guarded/") and actor != "warden":
        return f"{actor} may not {op} guarded variables"
    return None
"""


@pytest.mark.parametrize("direct", [True, False], ids=["shard-endpoints", "agent-endpoint"])
def test_authorize_hook_guards_both_paths(make_daemon: Callable[..., Daemon],
                                          direct: bool) -> None:
    site = short_tmpdir()
    install(site, "guardplug", {"guard": "guardplug"}, {"guardplug": GUARD})
    d = make_daemon(env={"PYTHONPATH": str(site)}).start()
    with Client(d.agent_endpoint, timeout=5, direct=direct) as c:
        c.register("warden")
        c.register("intruder")
        for _ in range(20):  # until the routes are up (the first writes may fall back)
            c.create_var("warden", f"open/{_}", 0)
        c.create_var("warden", "guarded/x", 1)
        with pytest.raises(Forbidden, match=r"may not var\.set guarded"):
            c.set_var("intruder", "guarded/x", 2)
        with pytest.raises(Forbidden):
            c.delete_var("intruder", "guarded/x")
        assert c.set_var("warden", "guarded/x", 3)["version"] == 2
        assert c.get_var("guarded/x", local=False)["value"] == 3

    def refused_by_workers() -> int:
        return sum((w["shard_traffic"] or {}).get("errors", 0) for w in d.workers())
    if direct:  # the workers refused them (their counters arrive with heartbeats)
        d.wait_until(lambda: refused_by_workers() >= 2, what="the workers' refusals")
    else:
        time.sleep(0.3)
        assert refused_by_workers() == 0


def test_routes_open_at_the_first_variable_request_not_at_hello(daemon: Daemon) -> None:
    """A process may host hundreds of agents that never touch a variable (the bench's
    1,000-bidder auction): routes cost sockets only once variables are used, and then every
    shard's at once."""
    async def scenario() -> tuple[int, int, int]:
        async with AsyncClient(daemon.agent_endpoint, timeout=5) as c:
            await c.register("quiet")
            assert c._routes is not None
            at_hello = len(c._routes._socks)
            with pytest.raises(NotFound):
                await c.get_var("nothing/here", local=False)
            return at_hello, len(c._routes._socks), c.shards
    at_hello, after, shards = asyncio.run(scenario())
    assert at_hello == 0 and after == shards == 2


def test_a_shard_endpoint_refuses_names_it_does_not_own(daemon: Daemon, bare: Wire) -> None:
    """A create sent to the wrong worker used to succeed; a second create of the same name
    through the agent endpoint succeeded too, and var.list showed two variables with one
    name. Every named op on the wrong shard is refused `wrong_shard`, with the owner and the
    count, and changes nothing."""
    hello = bare.ok(bare.agent, "hello", {"agent": "alice"})
    eps, cred, name = hello["shard_endpoints"], hello["credential"], "split/x"
    owner = shard_of(name, len(eps))
    wrong = bare.sock(eps[1 - owner])
    write = {"agent": "alice", "credential": cred, "name": name}
    for op, body in (("var.create", {**write, "value": 1}), ("var.set", {**write, "value": 2}),
                     ("var.delete", write), ("var.get", {"name": name}),
                     ("var.history", {"name": name})):
        status, reply = bare.call(wrong, op, body)
        assert status == "error", (op, reply)
        assert (reply["code"], reply["shard"], reply["shards"]) == ("wrong_shard", owner, 2)
        assert f"belongs to shard {owner} of 2" in reply["message"]
    bare.ok(bare.agent, "var.create", {"agent": "alice", "name": name, "value": 1})
    listed = bare.ok(bare.agent, "var.list", {"prefix": "split/"})["vars"]
    assert [v["name"] for v in listed] == [name]
    # Still refused once the name exists (not `exists` from the wrong store).
    assert bare.code(wrong, "var.create", {**write, "value": 1}) == "wrong_shard"


def test_the_sdk_sends_a_refused_wrong_shard_request_through_the_arbiter(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """A client that hashes with a stale shard count reaches the wrong worker: it is told
    `wrong_shard`, nothing is done there, and the SDK asks the agent endpoint instead."""
    from mabeamd.client import WrongShard, error_for

    with Client(daemon.agent_endpoint) as c:
        c.register("stale")
        name = next(f"stale/{i}" for i in range(100)
                    if shard_of(f"stale/{i}", 2) != shard_of(f"stale/{i}", 1))
        assert c.create_var("stale", name, 0)["version"] == 1
        c.aio.shards = 1  # as if the daemon had been resharded since hello
        sets = 0
        # The first requests may take the agent endpoint while the routes connect; once a
        # route is up the stale hash sends a write to the wrong worker.
        while "sent through the agent endpoint instead" not in caplog.text:
            assert sets < 200, "no request ever reached the wrong shard's route"
            sets += 1
            assert c.set_var("stale", name, sets)["version"] == sets + 1
            time.sleep(0.01)
        assert "belongs to shard" in caplog.text
        c.aio.shards = 2
        got = c.get_var(name, local=False)
        assert (got["version"], got["value"]) == (sets + 1, sets)
    # The SDK's exception carries the owner and the count from the error body.
    err = error_for("wrong_shard", "m", {"code": "wrong_shard", "shard": 1, "shards": 2})
    assert isinstance(err, WrongShard) and (err.shard, err.shards) == (1, 2)


def test_an_oversized_request_is_answered_too_large_and_the_connection_stays(
        make_daemon: Callable[..., Daemon]) -> None:
    """A frame over agents.max_message used to make ZeroMQ cut the connection (the client
    timed out; on a shard endpoint the SDK said "busy, may or may not have been applied" for
    a write that never could be). Now: `too_large` under the request's id, on the agent and
    the shard endpoints alike, and the same connection goes on. A value of max_value bytes
    fits (max_message must leave room for it)."""
    from mabeamd.client import TooLarge
    from mabeamd.testing import ENDPOINTS

    config = ENDPOINTS.replace("[agents]\n", "[agents]\nmax_message = 70000\n") + \
        "[variables]\nmax_value = 4096\n"
    d = make_daemon(config).start()
    w = Wire(d.agent_endpoint)
    try:
        hello = w.ok(w.agent, "hello", {"agent": "big"})
        name = "big/x"
        shard = shard_sock(w, hello, name)
        blob = b"x" * 100_000  # over max_message, under twice it
        for sock in (w.agent, shard):
            body = {"agent": "big", "name": name, "value": blob}
            if sock is shard:
                body["credential"] = hello["credential"]
            assert w.code(sock, "var.create", body) == "too_large"
            assert w.code(sock, "var.get", {"name": name}) == "not_found"  # same connection
        assert w.ok(w.agent, "ping", {})["pong"] is True
    finally:
        w.close()
    with Client(d.agent_endpoint) as c:
        c.register("sdk")
        assert c.create_var("sdk", "big/fits", "v" * 4000)["version"] == 1
        with pytest.raises(TooLarge):
            c.set_var("sdk", "big/fits", "v" * 5000)  # over max_value: the variable's limit
        with pytest.raises(TooLarge):
            c.set_var("sdk", "big/fits", "v" * 100_000)  # over max_message: the frame's
        assert c.get_var("big/fits", local=False)["version"] == 1


def test_max_message_must_leave_room_for_a_max_value_variable(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("[variables]\nmax_value = 2097152\n")
    d.start(wait_ready=False)
    assert d.wait() == 78
    assert "[agents] max_message: expected at least [variables] max_value + 65536" in d.log()
