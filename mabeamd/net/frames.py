"""Multipart send and receive for the hot paths (agent endpoint, worker link, worker, SDK).

pyzmq's send_multipart/recv_multipart are Python wrappers that build an IntFlag enum for
every frame (`SNDMORE | flags`, `SocketOption(RCVMORE)`); on this project's forwarded
requests that was a good share of the arbiter's time. These call the compiled socket
methods with plain int flags instead, at about half the cost per round trip (measured:
docs/benchmarks.md, "Hot-path framing"). Same semantics: frames of a multipart message are
sent with SNDMORE, libzmq makes the message atomic, errors are the same zmq.ZMQError /
zmq.Again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

try:  # the Cython backend (CPython); on another backend use the plain wrappers
    from zmq.backend.cython import _zmq

    _send: Any = _zmq.Socket.send
    _recv: Any = _zmq.Socket.recv
    _get: Any = _zmq.Socket.get
except (ImportError, AttributeError):  # pragma: no cover - PyPy / CFFI backend
    _send = zmq.Socket.send
    _recv = zmq.Socket.recv
    _get = zmq.Socket.get


def send_frames(sock: zmq.Socket[Any], frames: Sequence[bytes], flags: int = 0) -> None:
    """send_multipart(frames, flags) for bytes frames."""
    more = _MORE | flags
    last = len(frames) - 1
    for k, frame in enumerate(frames):
        _send(sock, frame, more if k < last else flags)


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[bytes]:
    """recv_multipart(flags) as bytes; raises zmq.Again when nothing is waiting.

    Each frame is received as a zmq.Frame and asked `.more` (zmq_msg_more), not the socket
    for ZMQ_RCVMORE: pyzmq's getsockopt builds an enum per call, and a 3-frame message paid
    it three times -- 4.8 against 2.7 µs a message measured here (docs/benchmarks.md)."""
    frame = _recv(sock, flags, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts


def recv_ready(sock: zmq.Socket[Any]) -> list[bytes] | None:
    """The next message if one is waiting, else None: ZMQ_EVENTS instead of a zmq.Again
    exception when nothing waits (pyzmq builds those in Python, at a cost). Which of this and
    recv_batch a drain loop uses, and why: drain.py."""
    if not readable(sock):
        return None
    return recv_frames(sock, NOBLOCK)


def recv_batch(sock: zmq.Socket[Any], limit: int, max_bytes: int | None = None,
               ) -> list[list[bytes]]:
    """Up to `limit` waiting messages, receiving until zmq.Again: one exception per batch
    instead of recv_ready's ZMQ_EVENTS per message (see drain.py). With `max_bytes`, it also
    stops once that many bytes arrived (drain.BATCH_BYTES says why)."""
    batch: list[list[bytes]] = []
    size = 0
    while len(batch) < limit:
        try:
            frames = recv_frames(sock, NOBLOCK)
        except zmq.Again:
            break
        batch.append(frames)
        if max_bytes is not None:
            size += sum(map(len, frames))
            if size >= max_bytes:
                break
    return batch


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting (ZMQ_EVENTS: one call, no exception). Asking also
    re-arms the edge-triggered ZMQ_FD (drain.py)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)
