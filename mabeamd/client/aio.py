"""The asyncio client: one DEALER connection carrying any number of agent identities.

Reliability comes in three layers:
- libzmq reconnects by itself, with exponential backoff (RECONNECT_IVL .. RECONNECT_IVL_MAX),
  and ZMTP heartbeats notice a dead peer even when TCP does not;
- IMMEDIATE keeps requests from queueing into a connection that is not up: they fail fast
  (ConnectionLost) instead of reaching a restarted daemon as stale surprises;
- application heartbeats: every interval the client beats for its agents; the daemon answers
  with the ids it does not know on this connection (after a restart, or after the
  connection was replaced) and the client re-registers them with their resume tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.client import routes as routing
from mabeamd.client.bodies import Push, Pushes, Registration
from mabeamd.client.errors import (
    Busy,
    ConnectionLost,
    MabeamError,
    NotRegistered,
    RateLimited,
    Timeout,
    TooLarge,
    WrongShard,
    error_for,
)
from mabeamd.client.local import LocalReads
from mabeamd.client.routes import Lost, NoRoute, Routes, direct_fallback
from mabeamd.client.variables import VariableMethods
from mabeamd.net import wire
from mabeamd.net.drain import UNBOUNDED, Drain, each, recv_ready_batch
from mabeamd.net.frames import NOBLOCK, send_frames

log = logging.getLogger("mabeamd.client")
BYE_WAIT = 1.0  # seconds close() gives the byes of its agents
FAILOVER_AFTER = 2  # heartbeats in a row without an answer before the next endpoint is tried


class _Expired(Exception):
    """A request's deadline passed (set on its future by its timer)."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class AsyncClient(VariableMethods):
    """Connect with `async with AsyncClient(endpoint) as c:` or `await c.connect()`."""

    def __init__(self, endpoint: str | Sequence[str] | None = None, *, timeout: float = 10.0,
                 server_key: bytes | None = None,
                 client_keys: tuple[bytes, bytes] | None = None,
                 heartbeat: bool = True, push_queue: int = 10000, direct: bool = True,
                 prefault: bool = False) -> None:
        """`endpoint`: one agent endpoint, or several (a list, or one string with commas;
        also $MABEAM_ENDPOINT): the nodes of a cluster. The client talks to one at a time
        and fails over to the next when FAILOVER_AFTER heartbeats in a row get no answer,
        registering its agents there again (see `failover`)."""
        given = endpoint or os.environ.get("MABEAM_ENDPOINT", "tcp://127.0.0.1:7700")
        self.endpoints = [e.strip() for e in given.split(",") if e.strip()] \
            if isinstance(given, str) else list(given)
        if not self.endpoints:
            raise MabeamError("no endpoint given")
        self.endpoint = self.endpoints[0]
        self.failovers = 0
        self.direct = direct  # variable requests to shard endpoints when offered
        self.timeout = timeout
        self.server_key = server_key
        self.client_keys = client_keys
        self.heartbeat_interval = 5.0
        self.registrations: dict[str, Registration] = {}
        self.on_push: Callable[[Push], Any] | None = None
        self._heartbeat = heartbeat
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._pushes = Pushes(push_queue)
        self._ctx: zmq.Context[zmq.Socket[Any]] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: Drain[list[bytes]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._wake = asyncio.Event()
        # Learned at hello: where the daemon's shards and events are.
        self.shards = 0
        self.max_message = 0  # the daemon's request limit, from hello
        self._local = LocalReads(prefault)  # same-host reads from the shard segments
        self.events_endpoint: str | None = None
        # Variable requests straight to their shard's endpoint (routes.py); not for CURVE
        # clients, whose traffic stays on the encrypted agent endpoint.
        self._routes: Routes | None = None
        self._attacher = routing.Attacher()  # invitations on the routes too
        self.reregistrations = 0

    # --- connection ------------------------------------------------------------------------

    async def connect(self) -> AsyncClient:
        self._loop = asyncio.get_running_loop()
        # One ZeroMQ context (and I/O thread) per process, shared by every client in it: a
        # context per client meant a process hosting 500 agents ran 500 I/O threads, and
        # each send woke one of them (measured as most of an agent's cost; docs/benchmarks.md).
        self._ctx = routing.shared_context()
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if self.server_key is not None:
            if self.client_keys is None:
                raise MabeamError("a CURVE server key needs client_keys=(public, secret)")
            s.curve_serverkey = self.server_key
            s.curve_publickey, s.curve_secretkey = self.client_keys
        s.connect(self.endpoint)
        self._sock = s
        # A plain socket drained from its ZMQ_FD, which halves the client's cost of a request
        # (net/drain.py). Replies only complete futures: no sends from the batch's handling.
        self._drain = Drain(s, each(self._handle), recv_ready_batch, limit=UNBOUNDED)
        self._drain.start(self._loop)
        if self.direct and self.server_key is None:
            self._routes = Routes(self._ctx, self._loop, self.endpoint, self._handle_routed)
        self._tasks = []
        self._closing = False
        if self._heartbeat:
            self._tasks.append(asyncio.create_task(self._beat()))
        return self

    async def close(self) -> None:
        """Say bye for every agent still registered (so a restarted agent can take its id
        again at once, instead of getting `exists` until the daemon gives up on it; at most
        BYE_WAIT seconds), then close. Returns even when the daemon is gone."""
        if self.registrations and self._sock is not None:
            byes = [asyncio.ensure_future(self.request("bye", {"agent": a}, timeout=BYE_WAIT))
                    for a in list(self.registrations)]
            await asyncio.wait(byes, timeout=BYE_WAIT)
            for b in byes:  # retrieve every outcome (a refusal or a timeout is fine here)
                if b.done() and not b.cancelled():
                    b.exception()
                else:
                    b.cancel()
            self.registrations.clear()
        # A cancel can be lost on Python 3.11: asyncio.wait_for returns a reply that came in
        # the same instant and drops the cancellation (CPython gh-86296), and close() once
        # waited for good on a heartbeat task that carried on. So the task also stops on
        # _closing, and a task still running after a moment is cancelled again.
        self._closing = True
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._tasks = []
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost("client closed"))
        self._pending.clear()
        self._local.close()
        self._attacher.close()
        if self._routes is not None:
            self._routes.close()
            self._routes = None
        if self._sock is not None:
            if self._drain is not None:
                self._drain.close()
            self._sock.close(linger=0)
            self._sock = None
        self._ctx = None  # shared by the process: not ours to terminate

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------

    async def request(self, op: str, body: dict[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Send one request; return the result or raise the error's exception type."""
        return await self._request(op, body or {}, timeout, None)

    async def _request(self, op: str, body: dict[str, Any], timeout: float | None,
                       shard: int | None) -> Any:
        """To the agent endpoint (shard None) or to a shard's route: raises NoRoute when
        that route cannot take it now, routes.Lost when its connection dropped."""
        if self._sock is None:
            raise ConnectionLost("not connected")
        rid = next(self._ids)
        frames = wire.encode({"id": rid, "op": op}, body)  # before a future waits on it
        size = sum(map(len, frames))
        if self.max_message and size > self.max_message:  # refused, or the link cut, there
            raise TooLarge(f"{op}: a request of {size} bytes is over the daemon's limit of "
                           f"{self.max_message} ([agents] max_message); split it", "too_large")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[rid] = fut
        wait = self.timeout if timeout is None else timeout
        deadline = loop.time() + wait
        try:
            if shard is None:
                await self._send(frames, deadline, op)
            elif self._routes is None or not self._routes.send(shard, rid, frames, fut):
                raise NoRoute
            # A timer that fails the future, not asyncio.wait_for: that wraps every request
            # in callbacks and a cancellation dance, a good part of a request's client CPU.
            timer = loop.call_at(deadline, _expire, fut)
            try:
                return await fut
            except _Expired:
                raise Timeout(f"{op}: no reply from {self.endpoint} in {wait:g}s") from None
            finally:
                timer.cancel()
        finally:
            self._pending.pop(rid, None)
            if shard is not None and self._routes is not None:
                self._routes.done(shard, rid)

    def direct_target(self, body: dict[str, Any], agent: str | None,
                      ) -> tuple[int, dict[str, Any]] | None:
        """(shard, body to send there), or None for the agent endpoint (routes.py)."""
        return routing.direct_target(self, body, agent)

    async def _var(self, op: str, body: dict[str, Any], agent: str | None = None) -> Any:
        """A variable request: to its shard's endpoint when there is a route (and, for a
        write, a credential for `agent`), else, or when that route cannot serve it, to the
        agent endpoint. Same answer either way (see `direct_fallback`)."""
        target = self.direct_target(body, agent)
        if target is not None:
            try:
                return await self._request(op, target[1], None, target[0])
            except (NoRoute, Lost, Busy, NotRegistered, WrongShard) as exc:
                direct_fallback(exc, op, body, agent, self.shards)
        return await self.request(op, body)

    async def _send(self, frames: list[bytes], deadline: float, op: str) -> None:
        """Send without blocking the loop. EAGAIN means no connection is up (IMMEDIATE keeps
        requests out of a queue for a peer that is not there) or the daemon is not reading:
        retry, backing off, within the request's own timeout."""
        assert self._sock is not None and self._loop is not None and self._drain is not None
        pause = 0.001
        while True:
            try:
                send_frames(self._sock, frames, NOBLOCK)
                break
            except zmq.Again:
                if self._loop.time() + pause > deadline:
                    raise ConnectionLost(f"{op}: no connection to {self.endpoint} in time") \
                        from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                if self._sock is None:
                    raise ConnectionLost("client closed") from None
        self._drain.wake()  # a send can consume ZMQ_FD's edge: look for replies anyway

    def _handle_routed(self, frames: list[bytes]) -> None:
        self._handle(frames, True)

    def _handle(self, frames: list[bytes], routed: bool = False) -> None:
        try:
            header, body = wire.decode(frames, max_size=1 << 30)
        except wire.WireError as exc:
            log.warning("dropping undecodable message from the daemon: %s", exc.message)
            return
        if "push" in header:
            push = Push(str(header["push"]), int(header.get("id") or 0),
                        body if isinstance(body, dict) else {"value": body})
            if push.op == "agent.taken_over":
                # Another connection presented the token: the id is no longer ours, and
                # heartbeats must not re-register it (the two would take it back and forth).
                agent = push.body.get("agent")
                if isinstance(agent, str) and self.registrations.pop(agent, None) is not None:
                    log.warning("agent %s was taken over by another connection; this client "
                                "no longer speaks for it", agent)
            if push.op == "session.invite" and not routed and self._routes is not None:
                self._attacher.on_invitation(self, push.body)  # not attached there (yet)
            self._pushes.put(push) if self.on_push is None else self.on_push(push)
            return
        fut = self._pending.get(header.get("id"))  # type: ignore[arg-type]
        if fut is None or fut.done():
            return
        status = header.get("status")
        if status == "ok":
            fut.set_result(body)
        elif status == "error" and isinstance(body, dict):
            fut.set_exception(error_for(str(body.get("code")), str(body.get("message")), body))

    @property
    def dropped_pushes(self) -> int:
        return self._pushes.dropped

    async def pushes(self) -> AsyncIterator[Push]:
        """Messages the daemon pushes, in arrival order (unless on_push is set)."""
        while True:
            yield await self._pushes.all.get()

    async def next_push(self, timeout: float | None = None, *,
                        agent: str | None = None) -> Push:
        """The next push; with `agent`, the next one addressed to it: Agents sharing this
        client each read their own (bodies.Pushes), until release_pushes(agent)."""
        queue = self._pushes.all if agent is None else self._pushes.of(agent)
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Timeout("no push message in time") from None

    def release_pushes(self, agent: str) -> None:
        self._pushes.release(agent)

    # --- agents ----------------------------------------------------------------------------

    async def register(self, agent: str, capabilities: list[str] | tuple[str, ...] = (),
                       *, metadata: dict[str, Any] | None = None, weight: float = 1.0,
                       priority: int = 0, token: str | None = None) -> dict[str, Any]:
        """Register an agent id on this connection (again, if it already is: an update)."""
        known = self.registrations.get(agent)
        if token is None and known is not None:
            token = known.token
        if token is None and agent == os.environ.get("MABEAM_AGENT_ID"):
            token = os.environ.get("MABEAM_AGENT_TOKEN")  # a managed agent's credential
        reg = Registration(agent, list(capabilities), dict(metadata or {}), weight, priority,
                           token)
        reply: dict[str, Any] = await self.request("hello", reg.hello())
        self.registrations[agent] = reg
        self._registered(reg, reply)
        self.heartbeat_interval = float(reply.get("heartbeat_interval", 5.0))
        self._wake.set()
        return reply

    def _registered(self, reg: Registration, reply: dict[str, Any]) -> None:
        """Take what a hello reply hands this registration (token, credential) and this
        connection (routes, shards, segments, events: perhaps of another node now)."""
        reg.token = reply["token"]
        reg.credential = reply.get("credential")
        if self._routes is not None:
            self._routes.update(reply.get("shard_endpoints"))
        self.shards = int(reply.get("shards") or 0)
        self.max_message = int(reply.get("max_message") or 0)  # 0: not said (older daemon)
        self._local.hello(reply.get("shm"), self.shards)
        self.events_endpoint = reply.get("events")

    async def bye(self, agent: str) -> None:
        self.registrations.pop(agent, None)
        await self.request("bye", {"agent": agent})

    async def get_agent(self, agent: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("agent.get", {"agent": agent})
        return result

    async def list_agents(self, *, capabilities: list[str] | str | None = None,
                   status: str = "healthy", metadata: dict[str, Any] | None = None,
                   prefix: str = "", after: str = "", limit: int = 100) -> dict[str, Any]:
        """One page of matching agents: {"agents": [...], "next": cursor or None}."""
        body: dict[str, Any] = {"status": status, "prefix": prefix, "limit": limit}
        if capabilities:
            body["capabilities"] = capabilities
        if metadata:
            body["metadata"] = metadata
        if after:
            body["after"] = after
        result: dict[str, Any] = await self.request("agent.list", body)
        return result

    async def discover(self, **query: Any) -> AsyncIterator[dict[str, Any]]:
        """Every matching agent, following the pages."""
        after = ""
        while True:
            page = await self.list_agents(after=after, **query)
            for agent in page["agents"]:
                yield agent
            if not page["next"]:
                return
            after = page["next"]

    async def wait_for(self, count: int = 1, timeout: float = 10.0, **query: Any,
                       ) -> list[dict[str, Any]]:
        """Wait until `count` healthy agents match the query; returns them."""
        body = {"count": count, "timeout": timeout, **query}
        reply = await self.request("agent.wait", body, timeout=timeout + self.timeout)
        agents: list[dict[str, Any]] = reply["agents"]
        return agents

    async def send(self, sender: str, to: str, body: Any, topic: str = "") -> dict[str, Any]:
        """Send a message from one of our agents to another agent (pushed to it)."""
        result: dict[str, Any] = await self.request(
            "agent.send", {"from": sender, "to": to, "topic": topic, "body": body})
        return result

    # --- coordination sessions -------------------------------------------------------------

    async def start_session(self, agent: str, protocol: str, *,
                            participants: list[str] | None = None,
                            query: dict[str, Any] | None = None,
                            variables: list[str] | tuple[str, ...] = (),
                            params: dict[str, Any] | None = None,
                            deadline: float | None = None, wait: bool = True,
                            notify: bool = False, on_conflict: str = "refuse",
                            key: str | None = None) -> dict[str, Any]:
        """Start a session as `agent`. Participants by id or by a capability query (e.g.
        {"capabilities": ["voter"]}). With wait (the default) the call returns the final
        record once the session ended; without, {"session": ID, ...} at once (then
        get_session, or notify=True to have the final record pushed as `session.result`)."""
        body: dict[str, Any] = {"agent": agent, "protocol": protocol,
                                "variables": list(variables), "params": params or {},
                                "wait": wait, "notify": notify, "on_conflict": on_conflict}
        for k, v in (("participants", participants), ("query", query),
                     ("deadline", deadline), ("key", key)):
            if v is not None:
                body[k] = v
        timeout = None
        if wait:  # the reply comes when the session ends
            timeout = (deadline if deadline is not None else 3600.0) + 5.0 + self.timeout
        result: dict[str, Any] = await self.request("session.start", body, timeout=timeout)
        return result

    async def get_session(self, session: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("session.get", {"session": session})
        return result

    async def cancel_session(self, agent: str, session: str,
                             reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": agent, "session": session}
        if reason is not None:
            body["reason"] = reason
        result: dict[str, Any] = await self.request("session.cancel", body)
        return result

    async def respond(self, agent: str, session: str, round: int, response: Any, *,
                      shard: int | None = None) -> dict[str, Any]:
        """Answer round `round` of a session invitation as `agent`; `shard` (the
        invitation's) sends it to the session's worker in one hop (routes.respond)."""
        result: dict[str, Any] = await routing.respond(self, {
            "agent": agent, "session": session, "round": round, "response": response}, shard)
        return result

    async def heartbeat(self) -> dict[str, Any]:
        """Beat for all our agents; re-register any the daemon no longer knows here."""
        reply: dict[str, Any] = await self.request(
            "heartbeat", {"agents": list(self.registrations)},
            timeout=min(self.timeout, max(1.0, self.heartbeat_interval)))
        self.heartbeat_interval = float(reply.get("heartbeat_interval", self.heartbeat_interval))
        for agent in reply.get("unknown", []):
            reg = self.registrations.get(agent)
            if reg is None:
                continue
            try:
                result = await self.request("hello", reg.hello())
                self._registered(reg, result)
                self.reregistrations += 1
                log.info("agent %s re-registered", agent)
            except MabeamError as exc:
                log.warning("agent %s: re-registration failed: %s", agent, exc)
        return reply

    async def failover(self) -> str:
        """Move the connection to the next endpoint (round the list) and register every
        agent there again; returns the new endpoint. Requests in flight on the old one end
        with Timeout. What lives in the cluster (variables) carries on; what lived on the old
        node alone (its sessions, its pushes not yet delivered) does not."""
        assert self._sock is not None and self._ctx is not None and self._loop is not None
        old = self.endpoint
        self.endpoint = self.endpoints[(self.endpoints.index(old) + 1) % len(self.endpoints)]
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disconnect(old)
        self._sock.connect(self.endpoint)
        if self._routes is not None:
            self._routes.close()
            self._routes = Routes(self._ctx, self._loop, self.endpoint, self._handle_routed)
        self._local.hello(None, 0)  # no same-host reads of the old node's segments
        self.shards = 0
        self.failovers += 1
        log.warning("no answer from %s: failing over to %s", old, self.endpoint)
        with contextlib.suppress(MabeamError):
            await self.heartbeat()  # the new node knows none of our agents: they re-register
        return self.endpoint

    async def _beat(self) -> None:
        pause = None
        silent = 0  # heartbeats in a row that got no answer
        while not self._closing:
            # asyncio.wait, not wait_for: cancelled, wait_for waits for its inner task's
            # cancellation, and on Python 3.11 an Event.wait() inner task could leave it
            # waiting for good (close() hung).
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=pause or self.heartbeat_interval)
            finally:
                waiter.cancel()
            if self._wake.is_set():  # a registration changed the interval: new period
                self._wake.clear()
                continue
            if not self.registrations:
                continue
            pause = None
            try:
                await self.heartbeat()
                silent = 0
            except (ConnectionLost, Timeout) as exc:
                silent += 1
                log.debug("heartbeat got no answer (%s)", exc)
                if silent >= FAILOVER_AFTER and len(self.endpoints) > 1 and not self._closing:
                    silent = 0
                    await self.failover()
            except RateLimited as exc:  # the one retry the SDK makes itself: a beat put
                # off by whole intervals could cost the agents their liveness ([limits])
                pause = max(0.001, min(exc.retry_after, self.heartbeat_interval))
            except MabeamError as exc:
                log.debug("heartbeat failed (%s); libzmq keeps reconnecting", exc)
