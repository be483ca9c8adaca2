"""The SDK's direct routes: one DEALER per shard endpoint, for variable requests.

At hello the daemon lists each shard's endpoint (`shard_endpoints`, docs/protocol.md) and
gives the agent a write credential. A variable request then goes straight to the worker that
owns its name (sharding.py): one hop instead of two through the agent endpoint. The agent
endpoint stays the fallback, and the answer is the same either way:

- no route yet (not connected: IMMEDIATE keeps messages out of a connection that is not up,
  so a send fails at once instead of queueing), a CURVE client (shard endpoints are plain),
  or an agent without a credential: the request goes to the agent endpoint;
- the connection to a worker drops with requests in flight (its worker died): a read is
  asked again through the agent endpoint, a write fails `busy` ("may or may not have been
  applied"), as it would through the arbiter.

Replies come back on the route's socket and are handed to the client's reply handler; the
client owns the request ids and their futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from mabeamd.client.errors import Busy, NotFound, NotRegistered, UnknownOp, WrongShard
from mabeamd.net import wire
from mabeamd.net.drain import UNBOUNDED, Drain, each
from mabeamd.net.frames import NOBLOCK, recv_batch, recv_frames, send_frames
from mabeamd.storage.sharding import shard_of

log = logging.getLogger("mabeamd.client")

WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]", "::")
WATCH_MS = 50  # a blocked caller looks for a dropped route this often
ATTACH = "session.attach"  # worker/attach.py


def shared_context() -> zmq.Context[Any]:
    """The process's one ZeroMQ context (one I/O thread for every client in it), with room
    for as many sockets as the process may open files. libzmq's default of 1,023 sockets
    a context is about 200 clients (each has its connection, a route and a monitor per
    shard): past it, routes failed with "Too many open files" and those agents' requests
    all went through the arbiter. Only effective before the context's first socket."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    try:
        import resource
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return ctx
    want = min(ctx.get(zmq.SOCKET_LIMIT),
               files if files != resource.RLIM_INFINITY else 1 << 16)
    if want > ctx.get(zmq.MAX_SOCKETS):
        with contextlib.suppress(zmq.ZMQError):
            ctx.set(zmq.MAX_SOCKETS, want)
    return ctx


def resolve(advertised: str, via: str) -> str:
    """The address to connect to: a shard endpoint bound on a wildcard host is reached on
    the host the client reached the agent endpoint at."""
    if advertised.startswith("tcp://") and via.startswith("tcp://"):
        host, _, port = advertised[len("tcp://"):].rpartition(":")
        if host in WILDCARD_HOSTS:
            via_host = via[len("tcp://"):].rpartition(":")[0]
            return f"tcp://{via_host}:{port}"
    return advertised


def _route_socket(ctx: zmq.Context[Any], address: str,
                  ) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A DEALER to a shard endpoint and the monitor that reports its drops. IMMEDIATE: a
    send while the connection is not up fails at once (the caller falls back) instead of
    queueing for a worker that may be restarting."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    try:
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    sock.connect(address)
    # Process the monitor's pending commands now: until its side of the inproc pipe is
    # attached, events the monitored socket emits can be lost (seen: a DISCONNECTED that
    # never arrived, requests left waiting for their timeout).
    monitor.getsockopt(zmq.EVENTS)
    return sock, monitor


class Lost(Exception):
    """The route's connection dropped with this request in flight."""


class Routes:
    def __init__(self, ctx: zmq.Context[Any], loop: asyncio.AbstractEventLoop, via: str,
                 on_reply: Callable[[list[bytes]], None]) -> None:
        self._ctx = ctx
        self._loop = loop
        self._via = via
        self._on_reply = on_reply
        self.addresses: list[str | None] = []
        self._socks: dict[int, zmq.Socket[Any]] = {}
        # Each route's two readers: its replies (only handed on, nothing sent from there, and
        # all that wait taken at once) and its monitor's events.
        self._replies: dict[int, Drain[list[bytes]]] = {}
        self._watches: dict[int, Drain[int]] = {}
        self._unroutable: set[int] = set()  # shards whose route could not be made
        # shard -> {request id: future} of requests in flight on that route
        self._in_flight: dict[int, dict[int, asyncio.Future[Any]]] = {}

    def update(self, addresses: Any) -> None:
        """The shard endpoints a hello reply listed (a changed address reconnects)."""
        if not isinstance(addresses, list):
            return
        new = [resolve(a, self._via) if isinstance(a, str) else None for a in addresses]
        for shard in list(self._socks):
            if shard >= len(new) or new[shard] != self.addresses[shard]:
                self._drop(shard)
        self.addresses = new
        self._unroutable.clear()

    def _socket(self, shard: int) -> zmq.Socket[Any] | None:
        """The shard's route. The first variable request connects every shard's route, so
        the requests after it find theirs up; not at hello, because a process may host
        hundreds of agents that never touch a variable (a route is two sockets)."""
        if shard not in self._socks:
            for other in range(len(self.addresses)):
                self._connect(other)
        return self._socks.get(shard)

    def _connect(self, shard: int) -> None:
        address = self.addresses[shard]
        if not address or shard in self._socks or shard in self._unroutable:
            return
        try:
            sock, monitor = _route_socket(self._ctx, address)
        except zmq.ZMQError as exc:  # out of sockets or descriptors: the agent endpoint
            log.warning("no route to shard %d at %s (%s): its variable requests go to the "
                        "agent endpoint", shard, address, exc)
            self._unroutable.add(shard)
            return
        self._socks[shard] = sock
        self._in_flight[shard] = {}
        replies = self._replies[shard] = Drain(sock, each(self._on_reply), recv_batch,
                                               limit=UNBOUNDED)
        watch = self._watches[shard] = Drain(monitor, functools.partial(self._watch, shard),
                                             _monitor_batch, limit=UNBOUNDED)
        replies.start(self._loop)
        watch.start(self._loop)

    def send(self, shard: int, rid: int, frames: list[bytes], fut: asyncio.Future[Any],
             ) -> bool:
        """Send on the shard's route; False when there is none up right now."""
        sock = self._socket(shard)
        if sock is None:
            return False
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.ZMQError:  # EAGAIN: not connected (yet, or any more)
            return False
        self._in_flight[shard][rid] = fut
        self._replies[shard].wake()  # a send can consume ZMQ_FD's edge
        return True

    def done(self, shard: int, rid: int) -> None:
        flights = self._in_flight.get(shard)
        if flights is not None:
            flights.pop(rid, None)

    def _watch(self, shard: int, events: list[int]) -> None:
        if zmq.EVENT_DISCONNECTED in events:
            self._replies[shard].drain()  # replies that arrived before the drop still count
            lost = self._in_flight.get(shard, {})
            for fut in lost.values():
                if not fut.done():
                    fut.set_exception(Lost())
            lost.clear()

    def _drop(self, shard: int) -> None:
        sock = self._socks.pop(shard, None)
        replies, watch = self._replies.pop(shard, None), self._watches.pop(shard, None)
        for reader in (replies, watch):
            if reader is not None:
                reader.close()
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            sock.close(linger=0)
        if watch is not None:
            watch.sock.close(linger=0)
        for fut in self._in_flight.pop(shard, {}).values():
            if not fut.done():
                fut.set_exception(Lost())

    def close(self) -> None:
        for shard in list(self._socks):
            self._drop(shard)
        self.addresses = []


class NoRoute(Exception):
    """The shard's route cannot take the request now: use the agent endpoint."""


class ThreadRoutes:
    """Blocking routes for the synchronous Client: each calling thread gets its own DEALER
    per shard endpoint and waits on it itself. Handing the call to the client's event-loop
    thread instead costs two thread wake-ups, as much as the hop the route saves."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self._ctx = ctx
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[zmq.Socket[Any]] = []
        self._closed = False

    def _route(self, address: str) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        routes: dict[str, Any] = self._local.__dict__.setdefault("routes", {})
        route = routes.get(address)
        if route is None:
            with self._lock:
                if self._closed:
                    raise NoRoute
                try:
                    sock, monitor = _route_socket(self._ctx, address)
                except zmq.ZMQError as exc:  # out of sockets or descriptors
                    log.warning("no route to %s (%s): using the agent endpoint", address, exc)
                    raise NoRoute from None
                sock.setsockopt(zmq.RCVTIMEO, WATCH_MS)
                self._all += [sock, monitor]
            route = routes[address] = (sock, monitor)
        return route

    def call(self, addresses: list[str | None], shard: int, rid: int, frames: list[bytes],
             timeout: float) -> tuple[dict[str, Any], Any]:
        """Send to `addresses[shard]` and wait for the reply with id `rid`: (header, body).
        Raises NoRoute (no route up: nothing was sent), Lost (the connection dropped while
        waiting) or TimeoutError. A thread's first request connects its routes to every
        shard, so the requests after it find theirs up (as Routes does)."""
        address = addresses[shard]
        if address is None:
            raise NoRoute
        routes: dict[str, Any] = self._local.__dict__.setdefault("routes", {})
        if address not in routes:
            for other in addresses:
                if other:
                    self._route(other)
        sock, monitor = self._route(address)
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.ZMQError:
            raise NoRoute from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                # A plain blocking receive (the GIL released), in slices of WATCH_MS: no
                # poller to build per call; between slices, a look for a dropped connection.
                reply = recv_frames(sock)
            except zmq.Again:
                if zmq.EVENT_DISCONNECTED in _monitor_events(monitor):
                    raise Lost from None
                if time.monotonic() > deadline:
                    raise TimeoutError from None
                continue
            header, body = wire.decode(reply, max_size=1 << 30)
            if header.get("id") == rid:
                return header, body
            # else a reply to a request that timed out earlier: dropped

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for s in self._all:
                s.close(linger=0)
            self._all = []


def _monitor_batch(monitor: zmq.Socket[Any], limit: int) -> list[int]:
    """Drain's receive for a monitor: every event waiting (their queue is short)."""
    return _monitor_events(monitor)


def _monitor_events(monitor: zmq.Socket[Any]) -> list[int]:
    events = []
    while True:
        try:
            events.append(int(recv_monitor_message(monitor, NOBLOCK)["event"]))
        except zmq.ZMQError:
            return events


def direct_fallback(exc: Exception, op: str, body: dict[str, Any], agent: str | None,
                    shards: int = 0) -> None:
    """Whether a request a shard route could not serve goes to the agent endpoint (return)
    or fails (raise): no route, a worker still starting (`busy`), a stale credential
    (`not_registered`) or a name the worker does not own (`wrong_shard`: a stale shard
    count) mean nothing was done, so ask the arbiter; a connection lost with the request in
    flight means a read can be asked again, a write may or may not have been applied."""
    if isinstance(exc, Lost) and agent is not None:
        raise Busy(f"{op}: the worker of {body['name']!r} went away while serving it; it may "
                   "or may not have been applied: read it back, then retry", "busy") from None
    if isinstance(exc, WrongShard):  # refused, so nothing done: the arbiter routes it right
        log.warning("%s %r: %s (this client counts %s shards); sent through the agent "
                    "endpoint instead", op, body["name"], exc.message, shards)


def direct_target(client: Any, body: dict[str, Any], agent: str | None,
                  ) -> tuple[int, dict[str, Any]] | None:
    """(shard, body to send there) when a variable request may take its shard's route:
    there is one, and a write's `agent` has a credential. None: the agent endpoint."""
    routes = client._routes
    if routes is None or not routes.addresses or not client.shards:
        return None
    direct = body if agent is None else credentialed(client, agent, body)
    return None if direct is None else (shard_of(body["name"], client.shards), direct)


def credentialed(client: Any, agent: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """`body` with `agent`'s write credential (from hello) for a shard endpoint, or None
    when it has none."""
    reg = client.registrations.get(agent)
    if reg is None or not reg.credential:
        return None
    return {**body, "credential": reg.credential}


async def respond(client: Any, body: dict[str, Any], shard: int | None) -> Any:
    """A session.respond: to the session's worker (`shard`, from the invitation) when there
    is a route to it and the agent has a credential, else, or when that route cannot take
    it (respond_fallback), to the agent endpoint."""
    target = respond_target(client, body, shard)
    if target is not None:
        try:
            return await client._request("session.respond", target, None, shard)
        except (NoRoute, Lost, Busy, NotRegistered, NotFound) as exc:
            respond_fallback(exc, body["session"])
    return await client.request("session.respond", body)


def respond_target(client: Any, body: dict[str, Any], shard: int | None,
                   ) -> dict[str, Any] | None:
    """The body of a session.respond for the session's worker (`shard`, from the
    invitation), or None for the agent endpoint: no shard given, no route to it, or no
    credential for the agent."""
    routes = client._routes
    if shard is None or routes is None or not 0 <= shard < len(routes.addresses):
        return None
    return credentialed(client, body["agent"], body)


def respond_fallback(exc: Exception, session: str) -> None:
    """A session.respond the worker's route could not take: no route, `busy` (a worker still
    starting), `not_registered` (a stale credential) or `not_found` (no such session running
    there) mean nothing was recorded, so the agent endpoint is asked (return), whose answer
    is authoritative; a connection lost with it in flight raises `busy` (it may or may not
    have been recorded)."""
    if isinstance(exc, Lost):
        raise Busy(f"session.respond {session}: the session's worker went away while taking "
                   "it; it may or may not have been recorded", "busy") from None


class Attacher:
    """Asks the workers to push this client's agents' invitations and notices on its routes
    (worker/attach.py), not through the arbiter: one hop, and no arbiter wake-up per
    invitation. An invitation that arrives through the agent endpoint naming its session's
    shard means its agent is not attached there (never yet, or its worker restarted, or the
    route was reconnected): `session.attach` goes on that shard's route, without waiting,
    next to the answer. At most one attach per agent and shard is in flight; a daemon that
    does not know the op is not asked again."""

    def __init__(self) -> None:
        self._in_flight: set[tuple[str, int]] = set()
        self._unsupported: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.attached = 0  # attaches the workers took (tests, diagnostics)

    def on_invitation(self, client: Any, body: dict[str, Any]) -> None:
        """An invitation pushed through the agent endpoint."""
        shard, agent = body.get("shard"), body.get("to")
        routes = client._routes
        if type(shard) is not int or not isinstance(agent, str) or routes is None \
                or not 0 <= shard < len(routes.addresses) or shard in self._unsupported \
                or (agent, shard) in self._in_flight:
            return
        target = credentialed(client, agent, {"agent": agent})
        if target is None:
            return
        self._in_flight.add((agent, shard))
        task = asyncio.ensure_future(self._attach(client, agent, shard, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, client: Any, agent: str, shard: int, body: dict[str, Any],
                      ) -> None:
        try:
            await client._request(ATTACH, body, None, shard)
            self.attached += 1
        except UnknownOp:  # a daemon before session.attach: its arbiter pushes everything
            self._unsupported.add(shard)
        except Exception as exc:  # no route yet, a worker starting, a stale credential...
            # Nothing changed: the next invitation through the arbiter asks again.
            log.debug("session.attach %s on shard %d: %s", agent, shard, exc)
        finally:
            self._in_flight.discard((agent, shard))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
