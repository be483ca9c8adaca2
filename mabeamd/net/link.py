"""The arbiter's end of the worker link: one ROUTER on ipc in the runtime directory.

Each worker connects a DEALER whose routing id names its slot and generation
(`w<index>.<generation>`), so a message from a worker the arbiter has already replaced is
recognised and ignored instead of being taken for its successor's.

Variable requests cross this link twice per request, so it is served like the agent endpoint:
a plain socket whose ZMQ_FD is a loop reader, drained until EAGAIN (see endpoint.py for why;
a send outside a drain schedules one, because ZMQ_FD is edge-triggered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.net import wire
from mabeamd.net.frames import NOBLOCK, recv_ready, send_frames
from mabeamd.net.zmqutil import bind_private, router

log = logging.getLogger(__name__)

MessageHandler = Callable[[int, int, str, dict[str, Any]], None]


def identity(index: int, generation: int) -> bytes:
    return f"w{index}.{generation}".encode()


def parse_identity(routing_id: bytes) -> tuple[int, int] | None:
    """Inverse of identity(); None for anything malformed."""
    try:
        text = routing_id.decode("ascii")
        if not text.startswith("w"):
            return None
        index, generation = text[1:].split(".")
        return int(index), int(generation)
    except (UnicodeDecodeError, ValueError):
        return None


BATCH = 256


class WorkerLink:
    def __init__(self, ctx: zmq.asyncio.Context, path: Path, on_message: MessageHandler) -> None:
        self.path = path
        self.on_message = on_message
        self._ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context.shadow(ctx.underlying)
        self.sock = router(self._ctx, sndhwm=100_000, rcvhwm=100_000, linger=0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        # A restarted worker reuses its slot's routing id only with a new generation, but a
        # reconnect of the same process must take over its old pipe.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.dropped = 0
        self._seq = 0

    def bind(self) -> None:
        bind_private(self.sock, self.path)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.FD, self._drain)
        self._drain()
        await asyncio.Event().wait()  # served by the reader callback until cancelled

    def _wake(self) -> None:
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        for _ in range(BATCH):
            try:
                frames = recv_ready(self.sock)
            except zmq.ZMQError:  # closed during shutdown
                return
            if frames is None:
                return
            self._dispatch(frames)
        self._wake()  # more may be queued: continue after other work had a turn

    def _dispatch(self, frames: list[bytes]) -> None:
        ident = parse_identity(frames[0])
        if ident is None:
            self.dropped += 1
            log.warning("worker link: message from unknown peer %r dropped", frames[0][:32])
            return
        try:
            _, op, body = wire.parse_request(frames[1:], max_size=1 << 30)
        except wire.WireError as exc:
            self.dropped += 1
            log.warning("worker link: malformed message from %s: %s", ident, exc.message)
            return
        try:
            self.on_message(ident[0], ident[1], op, body)
        except Exception:
            log.exception("worker link: handling %s from %s failed", op, ident)

    def send(self, index: int, generation: int, op: str, body: dict[str, Any]) -> bool:
        """Best effort: False when the worker is not connected or not reading."""
        self._seq += 1
        frames = [identity(index, generation), *wire.encode({"id": self._seq, "op": op}, body)]
        try:
            send_frames(self.sock, frames, NOBLOCK)
        except zmq.ZMQError:
            return False
        finally:
            self._wake()
        return True

    def close(self) -> None:
        if self._loop is not None and not self.sock.closed:
            self._loop.remove_reader(self.sock.FD)
        self.sock.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

