"""A daemon with the web console on, live SDK agents, and three sessions that ran on it: a
vote, a sealed-bid auction and a continuous double auction whose book keeps resting orders
at the close. Shared by the console's HTTP and browser tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mabeamd.client import Agent, Client, Invitation, invitation
from mabeamd.testing import Daemon, free_port

CONFIG = ('[metrics]\nlisten = "127.0.0.1:{port}"\n'
          "[console]\nenabled = true\nshow_answers = true\n")
# The CDA's orders: two sells rest, a market buy takes 5 at 10 and 2 at 11; at the close
# the book holds 3 at 11 and 3 at 12 (asks), 2 at 9 and 3 at 8 (bids): four levels.
MAKER = [{"order": {"side": "sell", "quantity": 5, "price": 10}},
         {"order": {"side": "sell", "quantity": 5, "price": 11}},
         {"order": {"side": "sell", "quantity": 3, "price": 12}}]
BUYER = [{"order": {"side": "buy", "quantity": 2, "price": 9}},
         {"order": {"side": "buy", "quantity": 3, "price": 8}}]
TAKER = [{"sleep": 0.3}, {"order": {"side": "buy", "quantity": 7}}]


class Voter(Agent):
    capabilities = ["console-voter"]

    @invitation("vote")
    async def ballot(self, inv: Invitation) -> Any:
        return {"vote": "red" if self.id != "voter-2" else "blue"}


class Bidder(Agent):
    capabilities = ["console-bidder"]

    @invitation("sealed_bid")
    async def bid(self, inv: Invitation) -> Any:
        return {"bid": {"bidder-0": 30, "bidder-1": 50, "bidder-2": 40}[self.id]}


class Trader(Agent):
    capabilities = ["console-trader"]

    def __init__(self, agent_id: str, endpoint: str, script: list[dict[str, Any]]) -> None:
        super().__init__(agent_id, endpoint, timeout=10)
        self.script = script

    async def on_invitation(self, inv: Invitation) -> Any:
        for step in self.script:
            if "sleep" in step:
                await asyncio.sleep(step["sleep"])
            else:
                await self.answer(inv, step)
        return None


class AgentsThread:
    """SDK agents on an event loop of their own, until stop()."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        tasks = [asyncio.create_task(a.run_async()) for a in self.agents]
        while not self._done.is_set():
            await asyncio.sleep(0.05)
        for a in self.agents:
            a.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(15)


@dataclass
class Scenario:
    daemon: Daemon
    port: int
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_scenario(daemon: Daemon, port: int) -> Iterator[Scenario]:
    ep = daemon.agent_endpoint
    agents: list[Agent] = [Voter(f"voter-{i}", ep) for i in range(3)]
    agents += [Bidder(f"bidder-{i}", ep) for i in range(3)]
    agents += [Trader("maker", ep, MAKER), Trader("buyer", ep, BUYER),
               Trader("taker", ep, TAKER)]
    live = AgentsThread(agents)
    s = Scenario(daemon, port)
    try:
        with Client(ep, timeout=20) as c:
            c.register("boss", capabilities=["console-boss"])
            for cap, n in (("console-voter", 3), ("console-bidder", 3), ("console-trader", 3)):
                c.wait_for(n, capabilities=[cap], timeout=20)
            for name in ("{con}colour", "{con}item", "{con}market"):
                c.create_var("boss", name, None)
            s.sessions["vote"] = c.start_session(
                "boss", "vote", query={"capabilities": ["console-voter"]},
                variables=["{con}colour"], params={"options": ["red", "blue"]}, deadline=10)
            s.sessions["sealed_bid"] = c.start_session(
                "boss", "sealed_bid", query={"capabilities": ["console-bidder"]},
                variables=["{con}item"], params={"item": "lamp", "rule": "second"},
                deadline=10)
            s.sessions["cda"] = c.start_session(
                "boss", "continuous_double_auction",
                participants=["maker", "buyer", "taker"], variables=["{con}market"],
                params={"good": "wheat", "duration": 1.2}, deadline=10)
        for k, out in s.sessions.items():
            assert out["state"] == "applied", (k, out)
        yield s
    finally:
        live.stop()


def console_daemon(make_daemon: Any) -> tuple[Daemon, int]:
    port = free_port()
    return make_daemon(CONFIG.format(port=port)).start(), port


def hold_streams(port: int, n: int, page: str = "%2Fconsole%2F") -> list[socket.socket]:
    """`n` live streams opened and held (their headers read); the caller closes them."""
    held = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /console/live?page={page} HTTP/1.1\r\n\r\n".encode())
        assert b"text/event-stream" in sock.recv(4096)
        held.append(sock)
    return held
