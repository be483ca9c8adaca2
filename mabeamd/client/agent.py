"""`Agent`: subclass it, declare capabilities, handle messages, call run().

    class Greeter(Agent):
        capabilities = ["greet"]

        @topic("hello")
        async def greet(self, msg: Message) -> None:
            await self.send(msg.sender, {"text": f"hello, {msg.sender}"}, topic="greeting")

    Greeter("greeter-1").run()

Coordination sessions: a method decorated with @invitation("PROTOCOL") answers that
protocol's invitations; whatever it returns is sent as the answer (None = no answer):

    class Voter(Agent):
        @invitation("vote")
        async def ballot(self, inv: Invitation) -> Any:
            return {"vote": inv.body["options"][0]}

Without arguments, the agent id, endpoint and token come from MABEAM_AGENT_ID,
MABEAM_ENDPOINT and MABEAM_AGENT_TOKEN: what a managed agent finds in its environment.

Many agents in one process can share one connection: `Agent(id, client=shared)` with one
connected AsyncClient; each agent reads only the pushes addressed to it. It is cheaper than
a connection each (scripts/bench: a 1,000-bidder auction at 0.65-0.88x the p95).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mabeamd.client.aio import AsyncClient
from mabeamd.client.bodies import Push
from mabeamd.client.errors import MabeamError

log = logging.getLogger("mabeamd.agent")

# The agents running on each event loop. A loop has one handler per signal, so each Agent
# setting its own replaced the one before: of two agents in one asyncio.gather only the last
# stopped on SIGTERM and the gather never ended. One handler per loop stops them all.
_RUNNING: dict[asyncio.AbstractEventLoop, set[Agent]] = {}


def _stop_all(loop: asyncio.AbstractEventLoop) -> None:
    for agent in list(_RUNNING.get(loop, ())):
        agent.stop()

F = TypeVar("F", bound=Callable[..., Awaitable[None]])
G = TypeVar("G", bound=Callable[..., Awaitable[Any]])


@dataclass
class Message:
    sender: str
    to: str
    topic: str
    body: Any


@dataclass
class Invitation:
    """One round of a session this agent takes part in (push `session.invite`)."""

    session: str
    protocol: str
    round: int
    kind: str  # the protocol's name for the round, e.g. "ballot", "cfp", "award"
    body: Any
    deadline_in: float
    to: str
    # A streaming round (markets): answer any number of times with Agent.answer() while it
    # is open; each answer's reply comes back at once (e.g. an order's fills).
    streaming: bool = False
    # The session's shard (None: answer through the agent endpoint): answers go straight to
    # its worker's shard endpoint.
    shard: int | None = None


def invitation(protocol: str) -> Callable[[G], G]:
    """Answer invitations of this protocol with the decorated coroutine method."""

    def mark(fn: G) -> G:
        fn._mabeam_protocol = protocol  # type: ignore[attr-defined]
        return fn
    return mark


def topic(name: str) -> Callable[[F], F]:
    """Route messages with this topic to the decorated coroutine method."""

    def mark(fn: F) -> F:
        fn._mabeam_topic = name  # type: ignore[attr-defined]
        return fn
    return mark


class Agent:
    capabilities: list[str] = []
    metadata: dict[str, Any] = {}
    weight: float = 1.0
    priority: int = 0

    def __init__(self, agent_id: str | None = None, endpoint: str | Sequence[str] | None = None, *,
                 client: AsyncClient | None = None, **client_options: Any) -> None:
        agent_id = agent_id or os.environ.get("MABEAM_AGENT_ID")
        if not agent_id:
            raise MabeamError("no agent id: pass one or set MABEAM_AGENT_ID")
        self.id = agent_id
        self.client = client or AsyncClient(endpoint, **client_options)
        self._own_client = client is None
        self._stop = asyncio.Event()
        self._routes: dict[str, Callable[[Message], Awaitable[None]]] = {}
        self._protocols: dict[str, Callable[[Invitation], Awaitable[Any]]] = {}
        for name in dir(type(self)):
            fn = getattr(self, name)
            if callable(fn) and hasattr(fn, "_mabeam_topic"):
                self._routes[fn._mabeam_topic] = fn
            if callable(fn) and hasattr(fn, "_mabeam_protocol"):
                self._protocols[fn._mabeam_protocol] = fn
        self._tasks: set[asyncio.Task[None]] = set()

    # --- to override -----------------------------------------------------------------------

    async def on_start(self) -> None:
        """Called once registered."""

    async def on_message(self, msg: Message) -> None:
        """Messages whose topic no @topic method handles."""
        log.debug("%s: unhandled message %r from %s", self.id, msg.topic, msg.sender)

    async def on_stop(self) -> None:
        """Called before the agent says bye."""

    async def on_invitation(self, inv: Invitation) -> Any:
        """Invitations of protocols no @invitation method handles: no answer by default."""
        log.debug("%s: no handler for %s invitation %s", self.id, inv.protocol, inv.session)
        return None

    async def on_session_notice(self, body: dict[str, Any]) -> None:
        """Notices from a session (e.g. contract net `reject` / `confirmed`)."""

    async def on_session_result(self, record: dict[str, Any]) -> None:
        """The final record of a session this agent started with notify=True."""

    # --- helpers ---------------------------------------------------------------------------

    async def send(self, to: str, body: Any, topic: str = "") -> dict[str, Any]:
        return await self.client.send(self.id, to, body, topic)

    async def answer(self, inv: Invitation, value: Any) -> Any:
        """Answer `inv` now; returns the session's reply (for streaming rounds, e.g. the
        fills of an order), or None."""
        reply = await self.client.respond(self.id, inv.session, inv.round, value,
                                          shard=inv.shard)
        return reply.get("reply")

    def stop(self) -> None:
        self._stop.set()

    # --- running ---------------------------------------------------------------------------

    async def _answer(self, b: dict[str, Any]) -> None:
        shard = b.get("shard")
        inv = Invitation(str(b.get("session")), str(b.get("protocol")), int(b.get("round", 0)),
                         str(b.get("kind")), b.get("body"), float(b.get("deadline_in", 0)),
                         str(b.get("to")), bool(b.get("streaming", False)),
                         shard if type(shard) is int else None)
        handler = self._protocols.get(inv.protocol, self.on_invitation)
        try:
            answer = await handler(inv)
            if answer is not None:
                await self.client.respond(self.id, inv.session, inv.round, answer,
                                          shard=inv.shard)
        except MabeamError as exc:
            log.warning("%s: answer to session %s round %d refused: %s", self.id, inv.session,
                        inv.round, exc)
        except Exception:
            log.exception("%s: invitation handler for %r failed", self.id, inv.protocol)

    async def _dispatch(self, push: Push) -> None:
        if push.op == "session.invite":
            # Answered in a task: a session waits for many agents, and one slow handler
            # must not hold up this agent's other messages.
            task = asyncio.create_task(self._answer(push.body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if push.op in ("session.notice", "session.result"):
            fn = self.on_session_notice if push.op == "session.notice" else \
                self.on_session_result
            try:
                await fn(push.body)
            except Exception:
                log.exception("%s: %s handler failed", self.id, push.op)
            return
        if push.op != "message":
            log.debug("%s: ignoring push %s", self.id, push.op)
            return
        b = push.body
        msg = Message(str(b.get("from")), str(b.get("to")), str(b.get("topic", "")),
                      b.get("body"))
        handler = self._routes.get(msg.topic, self.on_message)
        try:
            await handler(msg)
        except Exception:
            log.exception("%s: handler for %r failed", self.id, msg.topic)

    async def run_async(self) -> None:
        if self._own_client:
            await self.client.connect()
        loop = asyncio.get_running_loop()
        running = _RUNNING.setdefault(loop, set())
        if not running:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, _stop_all, loop)
        running.add(self)
        try:
            await self.client.register(self.id, self.capabilities, metadata=self.metadata,
                                       weight=self.weight, priority=self.priority)
            await self.on_start()
            stop = asyncio.ensure_future(self._stop.wait())
            while not self._stop.is_set():
                # Its own pushes only: Agents may share one client (client=...).
                nxt = asyncio.ensure_future(self.client.next_push(agent=self.id))
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    await self._dispatch(nxt.result())
                else:
                    nxt.cancel()
            await self.on_stop()
            with contextlib.suppress(MabeamError):
                await self.client.bye(self.id)
        finally:
            self.client.release_pushes(self.id)
            running.discard(self)
            if not running:
                _RUNNING.pop(loop, None)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)
            if self._own_client:
                await self.client.close()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT or stop(); uses uvloop when installed."""
        try:
            import uvloop
        except ImportError:
            asyncio.run(self.run_async())
        else:
            uvloop.run(self.run_async())
