"""Session answers on the one-hop path: an invitation names its session's shard, and the
participant answers that shard's worker on its shard endpoint with its credential, past
the arbiter; refusals there change nothing, and the SDK falls back to the agent endpoint
when the route cannot take the answer. Real daemons, real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mabeamd.client import Agent, AsyncClient, Client, Invitation, invitation
from mabeamd.net import wire
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import Daemon
from tests.e2e.test_shard_endpoint import Wire


class Voter(Agent):
    capabilities = ["hop-voter"]

    def __init__(self, agent_id: str, endpoint: str) -> None:
        super().__init__(agent_id, endpoint)
        self.shards: list[int | None] = []

    @invitation("vote")
    async def ballot(self, inv: Invitation) -> Any:
        self.shards.append(inv.shard)
        return {"vote": "red"}


def responds_served(daemon: Daemon) -> int:
    total = 0
    for w in daemon.workers():
        for op, code, n in (w["shard_ops"] or {}).get("codes", []):
            if op == "session.respond" and code == "ok":
                total += n
    return total


def test_sdk_participants_answer_the_sessions_worker_directly(daemon: Daemon) -> None:
    name = "{hop}colour"
    shard = shard_of(name, 2)

    async def main() -> tuple[list[Voter], int]:
        voters = [Voter(f"hv{i}", daemon.agent_endpoint) for i in range(4)]
        tasks = [asyncio.create_task(v.run_async()) for v in voters]
        try:
            async with AsyncClient(daemon.agent_endpoint) as c:
                await c.register("boss")
                await c.wait_for(4, capabilities=["hop-voter"])
                await c.create_var("boss", name, None)
                # An answer takes the agent endpoint while its voter's route still connects
                # (longer on a loaded machine): sessions until the workers have counted
                # answers on their shard endpoints (reported with their heartbeats).
                deadline = time.monotonic() + 30
                sessions = 0
                while sessions < 6 or responds_served(daemon) < 8:
                    assert time.monotonic() < deadline, "no answer reached a shard endpoint"
                    out = await c.start_session(
                        "boss", "vote", query={"capabilities": ["hop-voter"]},
                        variables=[name], params={"options": ["red", "blue"]}, deadline=10)
                    assert out["state"] == "applied" and out["result"]["votes"] == 4, out
                    sessions += 1
            return voters, sessions
        finally:
            for v in voters:
                v.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    voters, sessions = asyncio.run(main())
    assert all(v.shards == [shard] * sessions for v in voters)


@pytest.fixture
def bare(daemon: Daemon) -> Iterator[Wire]:
    w = Wire(daemon.agent_endpoint)
    yield w
    w.close()


def next_push(w: Wire) -> tuple[dict[str, Any], dict[str, Any]]:
    while True:
        frames = w.agent.recv_multipart()
        header = wire.unpack(frames[-2])
        if "push" in header:
            return header, wire.unpack(frames[-1])


def test_answers_on_the_shard_endpoint_over_the_bare_wire(daemon: Daemon, bare: Wire) -> None:
    """What a client in another language does: read the invitation's "shard", answer there
    with the credential from hello. Refused answers change nothing."""
    alice = bare.ok(bare.agent, "hello", {"agent": "alice", "capabilities": ["bare"]})
    bob = bare.ok(bare.agent, "hello", {"agent": "bob"})  # not a participant
    eps, cred = alice["shard_endpoints"], alice["credential"]
    name = "{bare}plan"
    shard = shard_of(name, 2)
    s, other = bare.sock(eps[shard]), bare.sock(eps[1 - shard])
    with Client(daemon.agent_endpoint) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        c.register("boss")
        c.create_var("boss", name, None)
        started = pool.submit(c.start_session, "boss", "vote", participants=["alice"],
                              variables=[name], params={"options": ["a", "b"]}, deadline=10)
        header, inv = next_push(bare)
        assert header["push"] == "session.invite" and inv["to"] == "alice"
        assert inv["shard"] == shard
        sess, rnd = inv["session"], inv["round"]
        answer = {"agent": "alice", "credential": cred, "session": sess, "round": rnd,
                  "response": {"vote": "b"}}
        for sock, body, code in (
            (s, {**answer, "credential": cred[:-2] + "00"}, ("not_registered", "bad_request")),
            (s, {k: v for k, v in answer.items() if k != "credential"}, ("bad_request",)),
            (s, {**answer, "round": "1"}, ("bad_request",)),
            (s, {**answer, "round": rnd + 1}, ("conflict",)),
            (s, {**answer, "session": "nope"}, ("not_found",)),
            (s, {**answer, "agent": "bob", "credential": bob["credential"]}, ("forbidden",)),
            (s, {**answer, "extra": 1}, ("bad_request",)),
            (other, answer, ("not_found",)),  # not that worker's session
        ):
            assert bare.code(sock, "session.respond", body) in code, body
        assert bare.ok(s, "session.respond", answer)["recorded"] is True
        out = started.result(20)
    assert out["state"] == "applied" and out["result"]["decision"] == "b"
    assert all(w["crashes"] == 0 for w in daemon.workers())
