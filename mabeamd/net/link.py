"""The arbiter's end of the worker link: one ROUTER on ipc in the runtime directory.

Each worker connects a DEALER whose routing id names its slot and generation
(`w<index>.<generation>`), so a message from a worker the arbiter has already replaced is
recognised and ignored instead of being taken for its successor's.

Variable requests cross this link twice per request, so it is served like the agent endpoint:
a plain socket drained in batches from its ZMQ_FD (drain.py); a send wakes the drain.
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
from mabeamd.net.drain import Drain, each, recv_ready_batch
from mabeamd.net.frames import NOBLOCK, send_frames
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



class WorkerLink:
    def __init__(self, ctx: zmq.asyncio.Context, path: Path, on_message: MessageHandler) -> None:
        self.path = path
        self.on_message = on_message
        self._ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context.shadow(ctx.underlying)
        self.sock = router(self._ctx, sndhwm=100_000, rcvhwm=100_000, linger=0)
        # Nothing in a batch's handling sends on this socket but through send(), which wakes.
        self._drain = Drain(self.sock, each(self._dispatch), recv_ready_batch)
        # A restarted worker reuses its slot's routing id only with a new generation, but a
        # reconnect of the same process must take over its old pipe.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.dropped = 0
        self._seq = 0

    def bind(self) -> None:
        bind_private(self.sock, self.path)

    async def run(self) -> None:
        self._drain.start(asyncio.get_running_loop())
        await asyncio.Event().wait()  # served by the reader callback until cancelled

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
            self._drain.wake()
        return True

    def close(self) -> None:
        self._drain.close()
        self.sock.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

