"""Load generators that run in their own processes, and the raw pyzmq echo peer.

The same client code drives mabeamd and the peer, with the same frames (mabeamd's wire
format), so the ratio compares servers, not clients.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from typing import Any

import zmq

from mabeamd.net import wire

CTX = mp.get_context("spawn")


def dealer(endpoint: str) -> tuple[zmq.Context[Any], zmq.Socket[Any]]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    return ctx, s


def latency_client(endpoint: str, op: str, n: int, warmup: int, out: Any) -> None:
    """Sequential request/reply; puts the n latencies (microseconds) on `out`.

    op "hello" registers a new agent id with every request (what registration costs)."""
    ctx, s = dealer(endpoint)
    lat: list[float] = []
    empty = wire.pack({})
    prefix = f"bench-{os.getpid()}-"
    for i in range(warmup + n):
        body = wire.pack({"agent": f"{prefix}{i}", "capabilities": ["bench"]}) \
            if op == "hello" else empty
        frames = [wire.PROTOCOL, wire.pack({"id": i, "op": op}), body]
        t0 = time.perf_counter_ns()
        s.send_multipart(frames)
        reply = s.recv_multipart()
        t1 = time.perf_counter_ns()
        header = wire.unpack(reply[1])
        if header.get("status") != "ok" or header.get("id") != i:
            raise RuntimeError(f"bad reply {header!r}")
        if i >= warmup:
            lat.append((t1 - t0) / 1000)
    s.close()
    ctx.term()
    out.put(lat)


def sdk_register_client(endpoint: str, n: int, warmup: int, out: Any) -> None:
    """Registration latency as an agent developer sees it: AsyncClient.register()."""

    from mabeamd.client import AsyncClient

    async def run() -> list[float]:
        lat: list[float] = []
        async with AsyncClient(endpoint, heartbeat=False) as c:
            for i in range(warmup + n):
                t0 = time.perf_counter_ns()
                await c.register(f"sdk-{os.getpid()}-{i}", ["bench"])
                if i >= warmup:
                    lat.append((time.perf_counter_ns() - t0) / 1000)
        return lat

    import uvloop

    out.put(uvloop.run(run()))


def rate_client(endpoint: str, op: str, seconds: float, window: int, out: Any) -> None:
    """Keep `window` requests in flight for `seconds`; puts the number completed."""
    ctx, s = dealer(endpoint)
    body = wire.pack({})
    sent = done = 0
    deadline = time.monotonic() + seconds
    while sent < window:
        s.send_multipart([wire.PROTOCOL, wire.pack({"id": sent, "op": op}), body])
        sent += 1
    while time.monotonic() < deadline:
        s.recv_multipart()
        done += 1
        s.send_multipart([wire.PROTOCOL, wire.pack({"id": sent, "op": op}), body])
        sent += 1
    # Drain what is still in flight (not counted: it completed after the window closed), so
    # the server is idle before the next repetition.
    drained = done
    while drained < sent:
        if not s.poll(5000):
            break
        s.recv_multipart()
        drained += 1
    s.close()
    ctx.term()
    out.put((done, seconds))


def echo_server(endpoint: str, ready: Any, stop: Any) -> None:
    """The floor: a ROUTER that decodes each request and answers ok, nothing else."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.bind(endpoint)
    ready.set()
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(100):
            continue
        while True:
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            rid, _op, _body = wire.parse_request(frames[1:])
            s.send_multipart([frames[0], *wire.reply_ok(rid, {"pong": True})])
    s.close(linger=0)
    ctx.term()


class EchoPeer:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ready = CTX.Event()
        self._stop = CTX.Event()
        self._proc = CTX.Process(target=echo_server, args=(endpoint, self._ready, self._stop))

    def __enter__(self) -> EchoPeer:
        self._proc.start()
        if not self._ready.wait(10):
            raise RuntimeError("echo peer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


def run_clients(target: Callable[..., None], args_list: list[tuple[Any, ...]],
                timeout: float = 300) -> list[Any]:
    """Run one client process per args tuple; return what each put on its queue."""
    q = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, q)) for args in args_list]
    for p in procs:
        p.start()
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) < len(procs):
            try:
                results.append(q.get(timeout=0.5))
            except queue.Empty:
                # A client that died without a result fails the row at once, not after
                # the whole timeout.
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"load client exited with {dead[0].exitcode}; its "
                                       "traceback is above") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"load clients gave no result in {timeout:g}s") \
                        from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return results
