"""Serving a plain zmq socket from the event loop: its ZMQ_FD as a reader, drained in batches.

Every hot socket (agent endpoint, worker link at both ends, shard endpoint, the SDK's
connection and its shard routes) is a plain, synchronous pyzmq socket whose ZMQ_FD is a loop
reader; when it signals, the socket is drained with non-blocking calls. That skips pyzmq's
asyncio layer (a future and a loop wake-up per message), which measured as most of a
request's cost on both ends (docs/benchmarks.md). `Drain` is that loop, once; each place
gives it only what to do with a batch.

Why it is shaped this way:
- ZMQ_FD is edge-triggered: it signals when commands reach the socket's mailbox, and any
  call on the socket (a send, a receive, ZMQ_EVENTS) may process them, taking the signal with
  it. A message can then wait with no signal to come. So a drain ends only once a receive
  found nothing (which processed the mailbox last), a handler that sent on the socket is
  followed by one more look (`sends=True`), and a send made outside a drain (a late reply, a
  push, a heartbeat) calls `wake()`, which schedules a drain: after it, nothing may wait
  unseen.
- One batch is at most BATCH messages; a full one schedules the next drain with call_soon
  instead of looping, so load on one socket delays other work (the control socket,
  supervision, other sockets) by one batch at most.
- Receiving: `recv_ready` asks ZMQ_EVENTS before each receive and so ends a drain without an
  exception; that is cheapest where a drain mostly finds a few messages (endpoint, link, the
  SDK's connection). `recv_batch` receives until zmq.Again: under load, where a drain finds
  many, one exception per batch is cheaper than a ZMQ_EVENTS per message (a getsockopt that
  polls the mailbox, a syscall each). Both leave the FD re-armed. See frames.py for the
  primitives.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import zmq

from mabeamd.net.frames import readable, recv_batch, recv_ready

# How many messages one drain serves before the loop runs other work (see above).
BATCH = 256
# Sockets that take frames from outside (agent endpoint, shard endpoints) also stop a batch
# once this many bytes arrived: a batch is held whole while it is served, and 256 pipelined
# frames of max_message each held the arbiter at ~100 MiB more than one at a time (the
# flood test in tests/e2e/test_fuzz.py). Only on a drain with sends=True: its look after
# the batch finds the messages left waiting.
BATCH_BYTES = 1 << 20
UNBOUNDED = 1 << 30  # for a socket whose whole queue is served in one drain

T = TypeVar("T")
Receive = Callable[[zmq.Socket[Any], int], list[T]]


def recv_ready_batch(sock: zmq.Socket[Any], limit: int, max_bytes: int | None = None,
                     ) -> list[list[bytes]]:
    """Up to `limit` waiting messages, asking ZMQ_EVENTS before each (recv_ready); with
    `max_bytes`, also stopping once that many bytes arrived (see BATCH_BYTES)."""
    batch: list[list[bytes]] = []
    size = 0
    try:
        while len(batch) < limit:
            frames = recv_ready(sock)
            if frames is None:
                break
            batch.append(frames)
            if max_bytes is not None:
                size += sum(map(len, frames))
                if size >= max_bytes:
                    break
    except zmq.ZMQError:
        # A message gone between the check and the receive (zmq.Again): what was received
        # is served, and the look after the batch finds anything left.
        if not batch:
            raise
    return batch


# The two receives bounded by BATCH_BYTES, for sockets that take frames from outside.
recv_ready_bounded: Receive[list[bytes]] = functools.partial(recv_ready_batch,
                                                             max_bytes=BATCH_BYTES)
recv_bounded: Receive[list[bytes]] = functools.partial(recv_batch, max_bytes=BATCH_BYTES)


def each(handle: Callable[[T], None]) -> Callable[[list[T]], None]:
    """on_batch for a place that serves its messages one by one."""
    def on_batch(batch: list[T]) -> None:
        for message in batch:
            handle(message)
    return on_batch


class Drain(Generic[T]):
    """One socket's reader. `receive(sock, limit)` takes up to a batch (recv_ready_batch or
    frames.recv_batch, or the place's own); `on_batch` serves it. `sends`: on_batch sends on
    this socket itself (not through something that calls wake), so look again after it."""

    __slots__ = ("_fd", "_limit", "_loop", "_on_batch", "_receive", "_scheduled", "_sends",
                 "sock")

    def __init__(self, sock: zmq.Socket[Any], on_batch: Callable[[list[T]], None],
                 receive: Receive[T], *, limit: int = BATCH, sends: bool = False) -> None:
        self.sock = sock
        self._on_batch = on_batch
        self._receive = receive
        self._limit = limit
        self._sends = sends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._scheduled = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the reader, and drain once: messages that came before it gave no signal
        it will see."""
        self._loop = loop
        self._fd = self.sock.FD
        loop.add_reader(self._fd, self.drain)
        self.drain()

    def wake(self) -> None:
        """Schedule a drain (after a send outside one; a no-op before start or after close)."""
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.drain)

    def drain(self) -> None:
        self._scheduled = False
        if self._loop is None:  # closed (a drain scheduled before close() still runs)
            return
        try:
            batch = self._receive(self.sock, self._limit)
        except zmq.ZMQError:  # closed under us (shutdown)
            return
        if not batch:
            return
        self._on_batch(batch)
        if len(batch) >= self._limit:
            self.wake()  # more may be queued: continue after other work had a turn
        elif self._sends:
            try:
                if readable(self.sock):  # the sends may have taken the edge
                    self.wake()
            except zmq.ZMQError:  # the batch's handler closed the socket
                pass

    def close(self) -> None:
        """Remove the reader (the socket is the owner's to close, after this)."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed() and not self.sock.closed:
            loop.remove_reader(self._fd)
