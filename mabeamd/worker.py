"""The worker process: `python -m mabeamd.worker`, spawned and supervised by the arbiter.

A worker connects a DEALER to the arbiter's link socket, says hello, and sends a heartbeat
every interval from its event loop (so a wedged loop goes silent and gets restarted). It
dies with the arbiter: PR_SET_PDEATHSIG delivers SIGKILL the moment the arbiter's process
goes away, however it went. Terminal signals (SIGINT, SIGHUP) are ignored: the arbiter
decides when workers stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any

import zmq
import zmq.asyncio

from mabeamd import wire
from mabeamd.link import identity
from mabeamd.logsetup import setup_child_logging

log = logging.getLogger("mabeamd.worker")

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when our parent exits; then make sure it has not already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        # Either a wrapper forked us (then the arbiter is our grandparent) or the arbiter is
        # already gone. Only the second is fatal.
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            log.error("arbiter (pid %d) is gone before start; exiting", parent)
            sys.exit(1)
        except PermissionError:
            pass


class Worker:
    def __init__(self, index: int, generation: int, link: str, heartbeat: float) -> None:
        self.index = index
        self.generation = generation
        self.link = link
        self.heartbeat = heartbeat
        self._stop = asyncio.Event()
        self._seq = 0

    async def _send(self, sock: zmq.asyncio.Socket, op: str, body: dict[str, Any]) -> None:
        self._seq += 1
        await sock.send_multipart(wire.encode({"id": self._seq, "op": op}, body))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity(self.index, self.generation))
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.connect(self.link)
        try:
            await self._send(sock, "hello", {"index": self.index, "generation": self.generation,
                                             "pid": os.getpid()})
            beats = asyncio.create_task(self._beat(sock))
            inbox = asyncio.create_task(self._inbox(sock))
            await self._stop.wait()
            beats.cancel()
            inbox.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            with contextlib.suppress(asyncio.CancelledError):
                await inbox
            with contextlib.suppress(zmq.ZMQError):
                await self._send(sock, "bye", {"generation": self.generation})
        finally:
            sock.close()
            ctx.term()
        log.info("stopped")
        return 0

    async def _beat(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            await self._send(sock, "heartbeat", {"generation": self.generation,
                                                 "t": time.monotonic()})
            await asyncio.sleep(self.heartbeat)

    async def _inbox(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                _, op, _body = wire.parse_request(frames)
            except wire.WireError as exc:
                log.warning("dropping malformed message from arbiter: %s", exc.message)
                continue
            if op == "stop":
                self._stop.set()
            else:
                log.warning("unknown op from arbiter: %s", op)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mabeamd-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--generation", type=int, required=True)
    parser.add_argument("--link", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_child_logging(args.log_level, f"worker[{args.index}]")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(args.parent)
    import uvloop

    worker = Worker(args.index, args.generation, args.link, args.heartbeat)
    return int(uvloop.run(worker.run()))


if __name__ == "__main__":
    sys.exit(main())
