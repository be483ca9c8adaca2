"""The agent endpoint: one ROUTER per configured address, speaking the wire protocol.

Transport only, like control/server.py, but built for volume: each socket is a plain pyzmq
socket served in batches from its ZMQ_FD (net/drain.py, which says why); a send made outside
a drain (a late reply, a push) wakes it. Requests whose handler answers at once are served
inline; only handlers that must wait get a task. Every connection has an in-flight limit
(answered `busy`); with `[limits]`, token buckets per connection and per agent
(net/ratelimit.py, answered `rate_limited`). Anything malformed gets an error reply when it
can be routed and is counted either way; nothing from outside can raise out of this loop.

On CURVE endpoints each message carries the ZAP User-Id (the client's key name), handed to
handlers as the request's principal.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.addresses import Endpoint
from mabeamd.agents.registry import ConnKey
from mabeamd.net import wire
from mabeamd.net.drain import BATCH_BYTES, Drain, recv_ready_bounded
from mabeamd.net.frames import NOBLOCK, send_frames
from mabeamd.net.ratelimit import Limits, build
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.net.zmqutil import agent_router, bind_endpoint, curve_server, unlink_endpoint
from mabeamd.observe.opstats import OK, OpStats

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    conn: ConnKey
    principal: str | None
    rid: int | str
    op: str


Handler = Callable[[Request, dict[str, Any]], Any]  # returns a result, or an awaitable of one


class AgentEndpoint:
    def __init__(self, ctx: zmq.asyncio.Context, endpoints: list[Endpoint], max_message: int,
                 max_in_flight: int, curve_keys: tuple[bytes, bytes] | None) -> None:
        self.endpoints = endpoints
        self.max_message = max_message
        self.max_in_flight = max_in_flight
        self.handlers: dict[str, Handler] = {}
        self.in_flight: dict[ConnKey, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self.stats = {"requests": 0, "errors": 0, "malformed": 0, "busy": 0,
                      "rate_limited": 0, "undeliverable": 0, "pushed": 0, "push_failed": 0}
        self.ops = OpStats(self.handlers)  # by op and code, with latency (metrics)
        # None when [limits] is off: then one attribute test is all a request pays.
        self.limits: Limits | None = None
        # The connection an agent id is registered on (the registry's), or None: a request
        # is charged to an agent's bucket only when it comes from that connection, so no
        # one can spend another agent's bucket, nor grow the table with made-up ids.
        self.conn_of: Callable[[str], ConnKey | None] = lambda agent: None
        # A shadow of the daemon's context: same libzmq context, so the ZAP handler (CURVE)
        # serves these sockets too, but with synchronous calls.
        self._ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context.shadow(ctx.underlying)
        self.sockets: list[zmq.Socket[Any]] = []
        self._drains: list[Drain[Any]] = []
        for i, ep in enumerate(endpoints):
            sock = agent_router(self._ctx, max_message)
            if ep.curve:
                curve_server(sock, curve_keys)
                drain: Drain[Any] = Drain(sock, functools.partial(self._serve_curve, i),
                                          _recv_curve, sends=True)
            else:
                drain = Drain(sock, functools.partial(self._serve, i), recv_ready_bounded,
                              sends=True)
            self.sockets.append(sock)
            self._drains.append(drain)

    def bind(self) -> None:
        for ep, sock in zip(self.endpoints, self.sockets, strict=True):
            bind_endpoint(sock, ep)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for drain in self._drains:
            drain.start(loop)
        await asyncio.Event().wait()  # served by reader callbacks until cancelled

    def _serve(self, index: int, batch: list[list[bytes]]) -> None:
        for frames in batch:
            self._handle(index, frames, None)

    def _serve_curve(self, index: int, batch: list[list[zmq.Frame]]) -> None:
        for parts in batch:
            self._handle(index, [p.bytes for p in parts],
                         str(parts[-1].get("User-Id") or "") or None)

    def _handle(self, index: int, frames: list[bytes], principal: str | None) -> None:
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        envelope, payload = frames[:1], frames[1:]
        conn = (index, envelope[0])
        rid: int | str | None = None
        op: str | None = None
        try:
            rid, op, body = wire.parse_request(payload, self.max_message)
            if self.limits is not None:
                self._limit(conn, body, payload)
            handler = wire.handler_for(self.handlers, op)
            if self.in_flight.get(conn, 0) >= self.max_in_flight:
                self.stats["busy"] += 1
                raise WireError(ErrorCode.BUSY, f"more than {self.max_in_flight} requests in "
                                "flight on this connection; retry later")
            req = Request(conn, principal, rid, op)
            result = handler(req, body)
            if isinstance(result, Awaitable):
                self._start(index, envelope, req, t0, result)
                return
            self._send(index, envelope, wire.reply_ok(rid, result))
            code = OK
        except WireError as exc:
            self._error_stats(exc)
            # The error itself, not a copy of it: refusals are what a flood costs.
            self._send(index, envelope, wire.refusal(rid, exc))
            code = exc.code
        except Exception as exc:
            self.stats["errors"] += 1
            self._send(index, envelope, wire.reply_incident(
                rid, log, f"agent endpoint: request {rid!r} failed", exc))
            code = ErrorCode.INTERNAL
        self.ops.observe(op, code, time.perf_counter() - t0)

    def configure_limits(self, settings: Mapping[str, Any]) -> None:
        """[limits] as a map; unchanged settings keep the buckets as they are."""
        if self.limits is None or self.limits.settings != dict(settings):
            self.limits = build(settings)

    def _limit(self, conn: ConnKey, body: dict[str, Any], payload: list[bytes]) -> None:
        """Charge a request to its connection and to the agent it acts for (agent.send
        names it `from`), or raise rate_limited before anything is done."""
        limits = self.limits
        assert limits is not None
        agent = body.get("agent", body.get("from"))
        if limits.agent is None or not isinstance(agent, str) or self.conn_of(agent) != conn:
            agent = None
        nbytes = sum(map(len, payload)) if limits.counts_bytes else 0
        limits.admit(conn, agent, nbytes, time.monotonic())

    def charge(self, conn: ConnKey, agent: Any) -> None:
        """One more request on `conn`, by `agent` if it is registered there: each op of a
        var.batch past its first (the message was charged as the first), so a batch is
        no way around [limits]. Raises rate_limited."""
        limits = self.limits
        if limits is None:
            return
        if limits.agent is None or not isinstance(agent, str) or self.conn_of(agent) != conn:
            agent = None
        limits.admit(conn, agent, 0, time.monotonic())

    def _error_stats(self, exc: WireError) -> None:
        self.stats["errors"] += 1
        if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION,
                        ErrorCode.TOO_LARGE):
            self.stats["malformed"] += 1
        elif exc.code == ErrorCode.RATE_LIMITED:
            self.stats["rate_limited"] += 1

    def _start(self, index: int, envelope: list[bytes], req: Request, t0: float,
               pending: Awaitable[Any]) -> None:
        self.in_flight[req.conn] = self.in_flight.get(req.conn, 0) + 1
        # A forwarded request (varops) is already a plain future: its answer costs no task.
        # A coroutine gets one, kept so close() can cancel it. Either way the reply leaves
        # from the done-callback.
        fut = asyncio.ensure_future(pending)
        if fut is not pending:
            self._tasks.add(fut)
            fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(lambda f: self._finished(index, envelope, req, t0, f))

    def _finished(self, index: int, envelope: list[bytes], req: Request, t0: float,
                  fut: asyncio.Future[Any]) -> None:
        conn, rid = req.conn, req.rid
        left = self.in_flight.get(conn, 1) - 1
        if left:
            self.in_flight[conn] = left
        else:
            self.in_flight.pop(conn, None)
        code = OK
        if fut.cancelled():
            code = ErrorCode.SHUTTING_DOWN
            reply = wire.reply_error(rid, code, "mabeamd is stopping")
        elif isinstance(exc := fut.exception(), WireError):
            self._error_stats(exc)
            code = exc.code
            reply = wire.reply_error(rid, exc.code, exc.message, exc.details)
        elif exc is not None:
            self.stats["errors"] += 1
            code = ErrorCode.INTERNAL
            reply = wire.reply_incident(rid, log, f"agent endpoint: request {rid!r} failed",
                                        exc)
        else:
            try:
                reply = wire.reply_ok(rid, fut.result())
            except Exception as err:  # e.g. a result msgpack cannot encode
                self.stats["errors"] += 1
                code = ErrorCode.INTERNAL
                reply = wire.reply_incident(rid, log, f"agent endpoint: reply to {rid!r} "
                                            "failed", err)
        self.send(index, envelope, reply)
        self.ops.observe(req.op, code, time.perf_counter() - t0)

    def send(self, index: int, envelope: list[bytes], frames: list[bytes]) -> bool:
        """Send from outside a drain (late replies, pushes)."""
        ok = self._send(index, envelope, frames)
        self._drains[index].wake()
        return ok

    def _send(self, index: int, envelope: list[bytes], frames: list[bytes]) -> bool:
        try:
            send_frames(self.sockets[index], envelope + frames, NOBLOCK)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the peer left; EAGAIN: it is not reading (HWM reached).
            self.stats["undeliverable"] += 1
            log.debug("agent endpoint: reply undeliverable: %s", exc)
            return False
        return True

    def push(self, conn: ConnKey, push_id: int, op: str, body: dict[str, Any]) -> bool:
        """Send an unsolicited message (header {"push": op, "id": push_id}) to a connection."""
        ok = self.send(conn[0], [conn[1]], wire.encode({"push": op, "id": push_id}, body))
        self.stats["pushed" if ok else "push_failed"] += 1
        return ok

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for ep, sock, drain in zip(self.endpoints, self.sockets, self._drains, strict=True):
            drain.close()
            sock.close(linger=0)
            unlink_endpoint(ep)


def _recv_curve(sock: zmq.Socket[Any], limit: int) -> list[list[zmq.Frame]]:
    """A CURVE socket's batch, as Frames: their User-Id names the client's key (the fast
    path's bytes do not carry it)."""
    batch: list[list[zmq.Frame]] = []
    size = 0
    while len(batch) < limit and size < BATCH_BYTES:  # bounded as drain.recv_ready_bounded
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        batch.append(parts)
        size += sum(len(p) for p in parts)
    return batch
