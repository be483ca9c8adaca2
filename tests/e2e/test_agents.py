"""Agents end to end: the SDK against a real daemon over real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from mabeamd.client import (
    AsyncClient,
    BadRequest,
    Busy,
    Client,
    Exists,
    NotFound,
    NotRegistered,
    Timeout,
)
from mabeamd.net import wire
from mabeamd.testing import Daemon


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.agent_endpoint, timeout=5) as c:
        yield c


class Events:
    """A subscriber on the daemon's XPUB endpoint, collecting events in a thread."""

    def __init__(self, endpoint: str, prefix: str = "") -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        time.sleep(0.2)  # let the subscription reach the publisher

    def _run(self) -> None:
        while not self._stop:
            if self._sock.poll(50):
                topic, body = self._sock.recv_multipart()
                self.items.append((topic.decode(), wire.unpack(body)))

    def mark(self) -> int:
        return len(self.items)

    def wait(self, topic: str, agent: str | None = None, timeout: float = 5.0,
             start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, body in list(self.items)[start:]:
                if t == topic and (agent is None or body.get("agent") == agent):
                    return body
            time.sleep(0.01)
        raise AssertionError(f"no {topic} event for {agent}; got {self.items}")

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self._sock.close()
        self._ctx.term()


@pytest.fixture
def events(daemon: Daemon) -> Iterator[Events]:
    e = Events(daemon.event_endpoint)
    yield e
    e.close()


def test_register_discover_and_get(client: Client, events: Events) -> None:
    reply = client.register("planner-1", ["plan", "route"], metadata={"zone": "eu"},
                            weight=2.5, priority=7)
    assert reply["created"] is True
    assert reply["heartbeat_interval"] == 0.2 and reply["missed_beats"] == 3
    assert reply["token"]
    client.register("planner-2", ["plan"], metadata={"zone": "us"})
    client.register("router-1", ["route"])
    assert events.wait("agent.registered", "planner-1")["capabilities"] == ["plan", "route"]

    ids = lambda page: [a["id"] for a in page["agents"]]  # noqa: E731
    assert ids(client.list_agents(capabilities="plan")) == ["planner-1", "planner-2"]
    assert ids(client.list_agents(capabilities=["plan", "route"])) == ["planner-1"]
    assert ids(client.list_agents(metadata={"zone": "us"})) == ["planner-2"]
    assert ids(client.list_agents(prefix="router")) == ["router-1"]
    assert ids(client.list_agents(capabilities="nothing")) == []

    a = client.get_agent("planner-1")
    assert (a["weight"], a["priority"], a["status"]) == (2.5, 7, "healthy")
    with pytest.raises(NotFound):
        client.get_agent("nobody")

    # Re-registering from the same connection updates in place.
    again = client.register("planner-1", ["plan"])
    assert again["created"] is False
    assert client.get_agent("planner-1")["capabilities"] == ["plan"]
    events.wait("agent.updated", "planner-1")


def test_pagination_is_sorted_and_complete(client: Client) -> None:
    for i in range(25):
        client.register(f"agent-{i:02d}", ["p"])
    page = client.list_agents(capabilities="p", limit=10)
    assert [a["id"] for a in page["agents"]] == [f"agent-{i:02d}" for i in range(10)]
    assert page["next"] == "agent-09"
    everything = client.discover(capabilities="p", limit=7)
    assert [a["id"] for a in everything] == [f"agent-{i:02d}" for i in range(25)]


def test_one_connection_carries_many_agents_and_heartbeats_keep_them(client: Client) -> None:
    for i in range(50):
        client.register(f"pool/{i}", ["pool"])
    time.sleep(1.5)  # > unhealthy (0.6 s) + gone (0.5 s): only heartbeats keep them
    assert len(client.discover(capabilities="pool")) == 50
    beat = client.heartbeat()
    assert beat["alive"] == 50 and beat["unknown"] == []


def test_silent_agent_goes_unhealthy_then_gone(daemon: Daemon, events: Events) -> None:
    with Client(daemon.agent_endpoint, heartbeat=False) as quiet, \
            Client(daemon.agent_endpoint) as observer:
        quiet.register("quiet-1", ["q"])
        events.wait("agent.unhealthy", "quiet-1", timeout=3)
        assert observer.get_agent("quiet-1")["status"] == "unhealthy"
        assert observer.list_agents(capabilities="q")["agents"] == []  # healthy by default
        assert len(observer.list_agents(capabilities="q", status="any")["agents"]) == 1
        # A sign of life makes it healthy again.
        mark = events.mark()
        quiet.heartbeat()
        events.wait("agent.healthy", "quiet-1", start=mark)
        events.wait("agent.unhealthy", "quiet-1", timeout=3, start=mark)
        gone = events.wait("agent.gone", "quiet-1", timeout=3, start=mark)
        assert gone["reason"] == "silent"
        with pytest.raises(NotFound):
            observer.get_agent("quiet-1")
        # The daemon no longer knows it: the heartbeat reply says so, and the SDK
        # re-registers it with the same capabilities.
        assert quiet.heartbeat()["unknown"] == ["quiet-1"]
        assert observer.get_agent("quiet-1")["status"] == "healthy"
        assert observer.get_agent("quiet-1")["capabilities"] == ["q"]


def test_id_owned_by_connection_and_token_takeover(daemon: Daemon) -> None:
    with Client(daemon.agent_endpoint) as a, Client(daemon.agent_endpoint) as b:
        token = a.register("solo")["token"]
        with pytest.raises(Exists):
            b.register("solo")
        with pytest.raises(Exists):
            b.register("solo", token="wrong-token")
        with pytest.raises(NotRegistered):
            b.bye("solo")
        assert b.register("solo", token=token)["created"] is False  # takeover with the token
        with pytest.raises(NotRegistered):
            a.bye("solo")  # no longer a's
        b.bye("solo")
        with pytest.raises(NotFound):
            a.get_agent("solo")


def test_messages_are_pushed_to_the_target(daemon: Daemon) -> None:
    with Client(daemon.agent_endpoint) as a, Client(daemon.agent_endpoint) as b:
        a.register("alice")
        b.register("bob")
        assert a.send("alice", "bob", {"n": 1}, topic="greet")["delivered"] is True
        push = b.next_push(3)
        assert push.op == "message"
        assert push.body == {"to": "bob", "from": "alice", "topic": "greet", "body": {"n": 1}}
        with pytest.raises(NotFound):
            a.send("alice", "nobody", 1)
        with pytest.raises(NotRegistered):
            a.send("bob", "alice", 1)  # cannot send as an agent of another connection


def test_wait_for_agents(daemon: Daemon) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(daemon.agent_endpoint) as waiter, \
                AsyncClient(daemon.agent_endpoint) as joiner:
            task = asyncio.create_task(waiter.wait_for(3, timeout=5, capabilities=["w"]))
            await asyncio.sleep(0.1)
            assert not task.done()
            for i in range(3):
                await joiner.register(f"w{i}", ["w"])
            got = await task
            with pytest.raises(Timeout):
                await waiter.wait_for(5, timeout=0.3, capabilities=["w"])
            return [a["id"] for a in got]

    assert asyncio.run(scenario()) == ["w0", "w1", "w2"]


def test_in_flight_limit_answers_busy(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.config_path.write_text(d.config_path.read_text().replace(
        "gone_after = 0.5", "gone_after = 0.5\nmax_in_flight = 4"))
    d.start()

    async def scenario() -> tuple[int, int]:
        async with AsyncClient(d.agent_endpoint) as c:
            waits = [asyncio.create_task(c.wait_for(1, timeout=1.0, capabilities=["never"]))
                     for _ in range(6)]
            results = await asyncio.gather(*waits, return_exceptions=True)
            busy = sum(isinstance(r, Busy) for r in results)
            timed_out = sum(isinstance(r, Timeout) for r in results)
            assert (await c.request("ping"))["pong"]  # the connection still works
            return busy, timed_out

    busy, timed_out = asyncio.run(scenario())
    assert (busy, timed_out) == (2, 4)
    assert d.call("status")["agent_traffic"]["busy"] == 2


@pytest.mark.parametrize("op, body, error", [
    ("hello", {}, BadRequest),
    ("hello", {"agent": ""}, BadRequest),
    ("hello", {"agent": "/abs"}, BadRequest),
    ("hello", {"agent": "x" * 200}, BadRequest),
    ("hello", {"agent": "ok", "capabilities": "notalist"}, BadRequest),
    ("hello", {"agent": "ok", "capabilities": [1]}, BadRequest),
    ("hello", {"agent": "ok", "metadata": []}, BadRequest),
    ("hello", {"agent": "ok", "weight": -1}, BadRequest),
    ("hello", {"agent": "ok", "weight": float("inf")}, BadRequest),
    ("hello", {"agent": "ok", "priority": 1.5}, BadRequest),
    ("hello", {"agent": "ok", "bogus": 1}, BadRequest),
    ("agent.list", {"limit": 0}, BadRequest),
    ("agent.list", {"status": "sleepy"}, BadRequest),
    ("agent.wait", {"count": 0}, BadRequest),
    ("agent.wait", {"timeout": -1}, BadRequest),
    ("heartbeat", {"agents": "all"}, BadRequest),
    ("ping", {"bogus": 1}, BadRequest),  # unknown fields are refused on every op
    ("session.respond", {"agent": "x", "session": "s1", "round": "1", "response": {}},
     BadRequest),  # a string round is malformed, not a conflict
])
def test_bad_requests_are_refused_and_change_nothing(client: Client, op: str,
                                                     body: dict[str, Any],
                                                     error: type[Exception]) -> None:
    with pytest.raises(error):
        client.request(op, body)
    assert client.list_agents(status="any")["agents"] == []


def test_metadata_size_limit(client: Client) -> None:
    from mabeamd.client import TooLarge

    with pytest.raises(TooLarge):
        client.register("big", metadata={"blob": "x" * 5000})


def test_sdk_reregisters_after_daemon_restart(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    with Client(d.agent_endpoint) as c:
        c.register("survivor", ["s"])
        assert d.stop() == 0
        d.start()  # same runtime dir, same endpoint; the registry starts empty
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if c.get_agent("survivor")["status"] == "healthy":
                    break
            except Exception:
                pass
            time.sleep(0.05)
        assert c.get_agent("survivor")["capabilities"] == ["s"]
        assert c.aio.reregistrations >= 1


def test_mabeamctl_agents_list_and_show(daemon: Daemon, client: Client) -> None:
    client.register("shown-1", ["view"], metadata={"k": "v"})
    r = daemon.ctl("agents", "--socket", str(daemon.socket))
    assert r.returncode == 0 and "shown-1" in r.stdout and "view" in r.stdout
    r = daemon.ctl("agents", "list", "--capability", "view", "--json", "--socket",
                   str(daemon.socket))
    assert [a["id"] for a in json.loads(r.stdout)["agents"]] == ["shown-1"]
    r = daemon.ctl("agents", "show", "shown-1", "--socket", str(daemon.socket))
    assert r.returncode == 0 and '{"k": "v"}' in r.stdout
    r = daemon.ctl("agents", "show", "ghost", "--socket", str(daemon.socket))
    assert r.returncode == 1 and "no agent 'ghost'" in r.stderr
    assert daemon.call("status")["agents"]["total"] == 1


def test_worker_events_are_published(daemon: Daemon, events: Events) -> None:
    import os

    pid = daemon.workers()[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    exited = events.wait("worker.exited")
    assert exited["index"] == 0 and exited["status"] == "killed by SIGKILL"
    assert events.wait("worker.running")["index"] == 0
    seqs = [b["seq"] for _, b in events.items]
    assert seqs == sorted(seqs)


def test_async_close_returns_and_says_bye(daemon: Daemon) -> None:
    """AsyncClient.close() after register used to hang for good (its heartbeat task never
    finished cancelling); and without a bye the id stayed taken (`exists`) until the daemon
    gave up on the silent agent."""
    import asyncio

    from mabeamd.client import AsyncClient

    async def main() -> float:
        c = AsyncClient(daemon.agent_endpoint)
        await c.connect()
        await c.register("closer")
        t0 = time.monotonic()
        await asyncio.wait_for(c.close(), 10)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 5
    with Client(daemon.agent_endpoint) as c:  # the id is free again at once, no token
        assert c.register("closer")["created"] is True
    with Client(daemon.agent_endpoint) as c:  # and the sync Client's close said bye too
        assert c.register("closer")["created"] is True


TWO_AGENTS = """
import asyncio, sys
from mabeamd.client import Agent

class A(Agent):
    async def on_start(self):
        print("started", self.id, flush=True)

async def main():
    await asyncio.gather(A("twin-1", sys.argv[1]).run_async(),
                         A("twin-2", sys.argv[1]).run_async())
    print("both stopped", flush=True)

asyncio.run(main())
"""


def test_sigterm_stops_every_agent_running_in_one_loop(daemon: Daemon) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", TWO_AGENTS, daemon.agent_endpoint],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    started = {proc.stdout.readline().split()[-1] for _ in range(2)}
    assert started == {"twin-1", "twin-2"}
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "both stopped" in out


def test_broken_requests_are_answered_under_their_id(daemon: Daemon) -> None:
    """A broken request whose id can be read gets its error under that id, not nil (the
    client used to wait for its own timeout); an unknown op's error lists the known ops."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(daemon.agent_endpoint)
    try:
        head = wire.pack({"id": 41, "op": "ping"})
        for frames in ([b"XX9", head, wire.pack({})], [head, wire.pack({})],
                       [wire.PROTOCOL, head, wire.pack({}) + b"\x00"]):
            s.send_multipart(frames)
            reply = s.recv_multipart()
            assert wire.unpack(reply[1]) == {"id": 41, "status": "error"}, frames
        s.send_multipart(wire.encode({"id": 42, "op": "no.such.op"}, {}))
        header, body = wire.decode(s.recv_multipart())
        assert header["id"] == 42 and body["code"] == "unknown_op"
        assert "known: " in body["message"] and "var.get" in body["message"]
    finally:
        s.close(linger=0)
        ctx.term()


def test_an_id_taken_over_with_its_token_is_not_taken_back(daemon: Daemon) -> None:
    """Taking an id over with its token used to leave the old connection unaware: its
    heartbeats heard the id was unknown there and re-registered it with the token, and the
    two connections stole it from each other. The old connection is now pushed
    agent.taken_over, and the SDK stops speaking for that id."""
    with Client(daemon.agent_endpoint) as old, Client(daemon.agent_endpoint) as new:
        token = old.register("contested")["token"]
        assert new.register("contested", token=token)["created"] is False
        push = old.next_push(timeout=5)
        assert (push.op, push.body) == ("agent.taken_over", {"agent": "contested"})
        assert "contested" not in old.aio.registrations
        time.sleep(1.0)  # five heartbeat intervals: a ping-pong would have moved it back
        new.send("contested", "contested", {"still": "mine"}, topic="t")  # new holds it
        with pytest.raises(NotRegistered):
            old.send("contested", "contested", {}, topic="t")


def test_close_returns_even_when_a_cancellation_is_lost() -> None:
    """On Python 3.11 asyncio.wait_for can drop a cancellation (a reply arriving in the same
    instant, CPython gh-86296); close() once then waited for good on the heartbeat task.
    Here the heartbeat swallows its first cancellation on purpose: close() still returns."""
    from mabeamd.client.aio import AsyncClient, Registration

    swallowed = []

    async def main() -> float:
        c = AsyncClient("ipc:///nonexistent/mabeamd-test.sock", timeout=1)
        await c.connect()
        c.heartbeat_interval = 0.01
        c.registrations["x"] = Registration.__new__(Registration)

        async def heartbeat() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed.append(True)  # as wait_for does when the reply won the race

        c.heartbeat = heartbeat  # type: ignore[method-assign]
        await asyncio.sleep(0.1)  # the beat is inside heartbeat() now
        c.registrations.clear()
        t0 = time.monotonic()
        await asyncio.wait_for(c.close(), 10)
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert swallowed == [True] and took < 5
