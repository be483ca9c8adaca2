"""The agent endpoint: one ROUTER per configured address, speaking the wire protocol.

Transport only, like control/server.py, but built for volume. The sockets are plain (synchronous)
pyzmq sockets whose ZMQ_FD is registered with the event loop: when it signals, we drain
with non-blocking calls until EAGAIN, in batches. That skips pyzmq's asyncio layer (a future
and a loop wake-up per message), which measured as most of the server's per-request cost.
ZMQ_FD is edge-triggered, so any send made outside a drain (a late reply, a push) schedules
another drain. Requests whose handler answers at once are served inline; only handlers that
must wait get a task. Every connection has an in-flight limit (answered `busy`). Anything
malformed gets an error reply when it can be routed and is counted either way; nothing from
outside can raise out of this loop.

On CURVE endpoints each message carries the ZAP User-Id (the client's key name), handed to
handlers as the request's principal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.agents.registry import ConnKey
from mabeamd.config import Endpoint
from mabeamd.net import wire
from mabeamd.net.frames import NOBLOCK, recv_ready, send_frames
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.net.zmqutil import agent_router, bind_endpoint, curve_server, unlink_endpoint

log = logging.getLogger(__name__)

# How many queued messages one socket serves before letting the event loop run other tasks
# (the control socket, supervision): agent load can delay admin work by one batch at most.
BATCH = 256


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
                      "undeliverable": 0, "pushed": 0, "push_failed": 0}
        # A shadow of the daemon's context: same libzmq context, so the ZAP handler (CURVE)
        # serves these sockets too, but with synchronous calls.
        self._ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context.shadow(ctx.underlying)
        self.sockets: list[zmq.Socket[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: set[int] = set()
        for ep in endpoints:
            sock = agent_router(self._ctx, max_message)
            if ep.curve:
                curve_server(sock, curve_keys)
            self.sockets.append(sock)

    def bind(self) -> None:
        for ep, sock in zip(self.endpoints, self.sockets, strict=True):
            bind_endpoint(sock, ep)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i, sock in enumerate(self.sockets):
            self._loop.add_reader(sock.FD, self._drain, i)
            self._drain(i)
        await asyncio.Event().wait()  # served by reader callbacks until cancelled

    def _wake(self, index: int) -> None:
        """Schedule a drain of one socket (after a send outside a drain, see above)."""
        if self._loop is not None and index not in self._draining:
            self._draining.add(index)
            self._loop.call_soon(self._drain, index)

    def _drain(self, index: int) -> None:
        self._draining.discard(index)
        sock = self.sockets[index]
        curve = self.endpoints[index].curve
        for _ in range(BATCH):
            try:
                # CURVE needs Frames (for their User-Id); plain sockets take the fast path.
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False) if curve \
                    else recv_ready(sock)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # closed under us during shutdown
                log.debug("agent endpoint %d: %s", index, exc)
                return
            if parts is None:
                return
            principal: str | None = None
            if curve:
                frames = [p.bytes for p in parts]  # type: ignore[union-attr]
                principal = str(parts[-1].get("User-Id") or "") or None  # type: ignore[union-attr]
            else:
                frames = parts  # type: ignore[assignment]
            self._handle(index, frames, principal)
        # A full batch: let the loop run other work (control socket, supervision) first.
        self._wake(index)

    def _handle(self, index: int, frames: list[bytes], principal: str | None) -> None:
        self.stats["requests"] += 1
        envelope, payload = frames[:1], frames[1:]
        conn = (index, envelope[0])
        rid: int | str | None = None
        try:
            rid, op, body = wire.parse_request(payload, self.max_message)
            handler = wire.handler_for(self.handlers, op)
            if self.in_flight.get(conn, 0) >= self.max_in_flight:
                self.stats["busy"] += 1
                raise WireError(ErrorCode.BUSY, f"more than {self.max_in_flight} requests in "
                                "flight on this connection; retry later")
            result = handler(Request(conn, principal, rid, op), body)
            if isinstance(result, Awaitable):
                self._start(index, envelope, conn, rid, result)
                return
            self._send(index, envelope, wire.reply_ok(rid, result))
        except WireError as exc:
            self._error_stats(exc)
            self._send(index, envelope, wire.reply_error(
                rid if rid is not None else exc.request_id, exc.code, exc.message, exc.details))
        except Exception as exc:
            self.stats["errors"] += 1
            self._send(index, envelope, wire.reply_incident(
                rid, log, f"agent endpoint: request {rid!r} failed", exc))

    def _error_stats(self, exc: WireError) -> None:
        self.stats["errors"] += 1
        if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION,
                        ErrorCode.TOO_LARGE):
            self.stats["malformed"] += 1

    def _start(self, index: int, envelope: list[bytes], conn: ConnKey, rid: int | str,
               pending: Awaitable[Any]) -> None:
        self.in_flight[conn] = self.in_flight.get(conn, 0) + 1
        # A forwarded request (varops) is already a plain future: its answer costs no task.
        # A coroutine gets one, kept so close() can cancel it. Either way the reply leaves
        # from the done-callback.
        fut = asyncio.ensure_future(pending)
        if fut is not pending:
            self._tasks.add(fut)
            fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(lambda f: self._finished(index, envelope, conn, rid, f))

    def _finished(self, index: int, envelope: list[bytes], conn: ConnKey, rid: int | str,
                  fut: asyncio.Future[Any]) -> None:
        left = self.in_flight.get(conn, 1) - 1
        if left:
            self.in_flight[conn] = left
        else:
            self.in_flight.pop(conn, None)
        if fut.cancelled():
            reply = wire.reply_error(rid, ErrorCode.SHUTTING_DOWN, "mabeamd is stopping")
        elif isinstance(exc := fut.exception(), WireError):
            self._error_stats(exc)
            reply = wire.reply_error(rid, exc.code, exc.message, exc.details)
        elif exc is not None:
            self.stats["errors"] += 1
            reply = wire.reply_incident(rid, log, f"agent endpoint: request {rid!r} failed",
                                        exc)
        else:
            try:
                reply = wire.reply_ok(rid, fut.result())
            except Exception as err:  # e.g. a result msgpack cannot encode
                self.stats["errors"] += 1
                reply = wire.reply_incident(rid, log, f"agent endpoint: reply to {rid!r} "
                                            "failed", err)
        self.send(index, envelope, reply)

    def send(self, index: int, envelope: list[bytes], frames: list[bytes]) -> bool:
        """Send from outside a drain (late replies, pushes)."""
        ok = self._send(index, envelope, frames)
        self._wake(index)
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
        for ep, sock in zip(self.endpoints, self.sockets, strict=True):
            if self._loop is not None and not sock.closed:
                self._loop.remove_reader(sock.FD)
            sock.close(linger=0)
            unlink_endpoint(ep)
