"""Session pushes on the one-hop path: an agent attached to a worker (`session.attach` on its
shard endpoint, with the credential from hello) gets that worker's invitations straight
from it, not through the arbiter; a revoked credential, a gone connection or a restarted
worker sends them through the arbiter again, and the SDK attaches again. Real daemons,
real sockets, real signals."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from typing import Any

import zmq

from mabeamd.client import Agent, AsyncClient, Busy, Client, Invitation, invitation
from mabeamd.net import wire
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import Daemon
from tests.e2e.test_shard_endpoint import Wire


class Voter(Agent):
    capabilities = ["push-voter"]

    def __init__(self, agent_id: str, endpoint: str) -> None:
        super().__init__(agent_id, endpoint)
        self.sessions: list[str] = []

    @invitation("vote")
    async def ballot(self, inv: Invitation) -> Any:
        self.sessions.append(inv.session)
        return {"vote": "red"}


def traffic(daemon: Daemon, shard: int, key: str) -> int:
    """A worker's shard-endpoint counter, as its latest heartbeat reported it."""
    w = daemon.workers()[shard]
    return int((w.get("shard_traffic") or {}).get(key) or 0)


async def sessions_until(daemon: Daemon, c: AsyncClient, name: str, done: Any,
                         voters: int) -> list[str]:
    """Vote sessions, each checked applied with every vote, until done() holds; their ids."""
    deadline = time.monotonic() + 40
    ids = []
    while not ids or not done():
        assert time.monotonic() < deadline, f"gave up after {len(ids)} sessions"
        try:
            out = await c.start_session("boss", "vote",
                                        query={"capabilities": ["push-voter"]},
                                        variables=[name], params={"options": ["red", "blue"]},
                                        deadline=10)
        except Busy:  # a restarted worker between its hello and its first session
            await asyncio.sleep(0.05)
            continue
        assert out["state"] == "applied" and out["result"]["votes"] == voters, out
        ids.append(out["session"])
    return ids


def test_sdk_agents_attach_and_get_invitations_from_the_worker(daemon: Daemon) -> None:
    name = "{push}colour"
    shard = shard_of(name, 2)

    async def main() -> None:
        voters = [Voter(f"pv{i}", daemon.agent_endpoint) for i in range(4)]
        tasks = [asyncio.create_task(v.run_async()) for v in voters]
        try:
            async with AsyncClient(daemon.agent_endpoint) as c:
                await c.register("boss")
                await c.wait_for(4, capabilities=["push-voter"])
                await c.create_var("boss", name, None)
                # The first invitations come through the arbiter (no voter is attached);
                # their answers' routes connect, then the voters attach. Sessions until the
                # worker reports four attached agents and pushes of its own.
                ids = await sessions_until(
                    daemon, c, name, lambda: traffic(daemon, shard, "attached") == 4
                    and traffic(daemon, shard, "pushed") >= 8, 4)
                # Not one invitation lost or doubled while the path changed.
                assert all(v.sessions == ids for v in voters)
                assert sum(v.client._attacher.attached for v in voters) >= 4

                # kill -9 the session's worker: its attachments die with it. Sessions go on
                # (through the arbiter), and the voters attach to the new worker.
                before = daemon.workers()[shard]
                os.kill(before["pid"], signal.SIGKILL)
                daemon.wait_until(lambda: daemon.workers()[shard]["state"] == "running"
                                  and daemon.workers()[shard]["pid"] != before["pid"],
                                  timeout=30, what="worker restarted")
                for v in voters:
                    v.sessions.clear()
                ids = await sessions_until(
                    daemon, c, name, lambda: traffic(daemon, shard, "attached") == 4
                    and traffic(daemon, shard, "pushed") >= 8, 4)
                assert all(v.sessions == ids for v in voters)
        finally:
            for v in voters:
                v.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def invite_on(sock: zmq.Socket[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next push on `sock` (skipping other messages)."""
    while True:
        frames = sock.recv_multipart()
        header = wire.unpack(frames[-2])
        if "push" in header:
            return header, wire.unpack(frames[-1])


def no_push(sock: zmq.Socket[Any]) -> None:
    while sock.poll(200):
        frames = sock.recv_multipart()
        assert "push" not in wire.unpack(frames[-2]), "a push took the other path"


def test_attach_over_the_bare_wire(daemon: Daemon) -> None:
    """What a client in another language does: attach on the shard endpoint with the
    credential from hello, read invitations there. Refused attaches change nothing; a
    revoked credential ends the attachment."""
    bare = Wire(daemon.agent_endpoint)
    try:
        alice = bare.ok(bare.agent, "hello", {"agent": "alice", "capabilities": ["bare"]})
        bob = bare.ok(bare.agent, "hello", {"agent": "bob"})
        eps, cred = alice["shard_endpoints"], alice["credential"]
        name = "{bare}plan"
        shard = shard_of(name, 2)
        s = bare.sock(eps[shard])
        attach = {"agent": "alice", "credential": cred}
        for body, code in (
            ({**attach, "credential": cred[:-2] + "00"}, "not_registered"),
            ({**attach, "credential": bob["credential"]}, "not_registered"),
            ({"agent": "alice"}, "bad_request"),
            ({**attach, "agent": 7}, "bad_request"),
            ({**attach, "extra": 1}, "bad_request"),
        ):
            assert bare.code(s, "session.attach", body) == code, body
        # A batch carries variable ops only: its element is refused, nothing attached.
        results = bare.ok(s, "var.batch", {"ops": [{"op": "session.attach", **attach}]})
        assert results["results"][0]["error"]["code"] == "bad_request"

        def vote(c: Client) -> dict[str, Any]:
            return c.start_session("boss", "vote", participants=["alice"], variables=[name],
                                   params={"options": ["a", "b"]}, deadline=10)

        with Client(daemon.agent_endpoint) as c, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            c.register("boss")
            c.create_var("boss", name, None)
            # Not attached (every attach so far was refused): through the arbiter.
            started = pool.submit(vote, c)
            _, inv = invite_on(bare.agent)
            assert inv["to"] == "alice" and inv["shard"] == shard
            assert bare.ok(s, "session.respond", {**attach, "session": inv["session"],
                                                  "round": inv["round"],
                                                  "response": {"vote": "a"}})["recorded"]
            assert started.result(20)["state"] == "applied"

            assert bare.ok(s, "session.attach", attach) == {"attached": True,
                                                            "agent": "alice"}
            started = pool.submit(vote, c)
            header, inv = invite_on(s)  # from the worker, on the shard endpoint
            assert header["push"] == "session.invite"
            assert inv["to"] == "alice" and inv["shard"] == shard
            assert bare.ok(s, "session.respond", {**attach, "session": inv["session"],
                                                  "round": inv["round"],
                                                  "response": {"vote": "b"}})["recorded"]
            out = started.result(20)
            assert out["state"] == "applied" and out["result"]["decision"] == "b"
            no_push(bare.agent)

            # bye revokes the credential, and the attachment made with it; alice's next
            # registration (a new credential) is not attached until it attaches again.
            bare.ok(bare.agent, "bye", {"agent": "alice"})
            alice = bare.ok(bare.agent, "hello", {"agent": "alice"})
            started = pool.submit(vote, c)
            _, inv = invite_on(bare.agent)
            assert inv["to"] == "alice"
            bare.ok(s, "session.respond", {"agent": "alice", "credential": alice["credential"],
                                           "session": inv["session"], "round": inv["round"],
                                           "response": {"vote": "a"}})
            assert started.result(20)["state"] == "applied"
            no_push(s)
    finally:
        bare.close()
    assert all(w["crashes"] == 0 for w in daemon.workers())
