"""Rows for messages between agents (`agent.send`), agents in separate processes on one
daemon (agent_rows.tcp_daemon: TCP loopback, the default transport), against a raw floor
measured in the same run:

- messages/s: each sender process (an AsyncClient) sends COUNT messages to its receiver with
  WINDOW sends in flight; each receiver process (an AsyncClient) takes the pushes. One pair,
  then PAIRS pairs at once (2 x PAIRS processes). The rate is the messages received over
  the time from the first send to the last receipt (CLOCK_MONOTONIC: one clock for every
  process of the host).
- round trip: one process sends to an echo agent in another process, which sends each
  message back (`agent.send` again); a sample is from send() to the echoed push.
- the floor: the same processes and topology without mabeamd -- a pyzmq ROUTER relay in a
  process of its own between DEALER clients, forwarding [to, body] as [from, body]; the
  clients pack and unpack msgpack bodies as ours do. It is what any brokered design written
  in Python pays for the four socket hops of a round trip (two through the relay) and the
  wake-ups, and nothing for validation, routing tables, replies or liveness.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
import zmq

from benchkit import Row
from benchkit.agent_rows import tcp_daemon
from benchkit.load import CTX
from benchkit.stats import pick_median_rep, spread, summary
from mabeamd.net import wire
from mabeamd.testing import free_port

WINDOW = 64  # sends in flight per sender
BODY = {"price": 3, "item": "apples", "qty": 10}
RATE_ONE = "agent.send messages/s, one pair (separate processes)"
RATE_MANY = "agent.send messages/s, {pairs} pairs (2 processes each)"
ROUND_TRIP = "agent -> agent round trip (send, receive, answer; separate processes)"
RATE_GOAL = ">= 40,000/s (5x Ray's published 7,840 async actor calls/s)"


@dataclass(frozen=True)
class Leg:
    """A sending client's part: as `agent` on `endpoint`, `count` messages to `to` (after
    `warmup` more, for the round trips)."""

    endpoint: str
    agent: str
    to: str
    count: int
    warmup: int = 0


# --- our clients (each in its own process) -------------------------------------------------


def rx_client(endpoint: str, agent: str, count: int, ready: Any, out: Any) -> None:
    """Register `agent`, say ready, take `count` message pushes; puts (when the last came,
    pushes the client had to drop, CPU seconds spent taking them)."""
    import uvloop

    from mabeamd.client import AsyncClient

    async def run() -> tuple[int, int, float]:
        async with AsyncClient(endpoint, push_queue=1 << 20) as c:
            await c.register(agent)
            ready.set()
            cpu = time.process_time()
            got = 0
            while got < count:
                push = await c.next_push(timeout=60)
                got += push.op == "message"
            return time.perf_counter_ns(), c.dropped_pushes, time.process_time() - cpu

    out.put(("rx", uvloop.run(run())))


def tx_client(leg: Leg, ready: Any, go: Any, out: Any) -> None:
    """Register `agent`, wait for its receiver and the other senders, then send `count`
    messages to `to`, WINDOW in flight; puts (first send, last reply, CPU seconds)."""
    import uvloop

    from mabeamd.client import AsyncClient

    endpoint, agent, to, count = leg.endpoint, leg.agent, leg.to, leg.count

    async def run() -> tuple[int, int, float]:
        async with AsyncClient(endpoint) as c:
            await c.register(agent)
            ready.wait(60)
            go.wait(60)
            window = asyncio.Semaphore(WINDOW)

            async def one(i: int) -> None:
                async with window:
                    await c.send(agent, to, {**BODY, "i": i}, topic="bench")

            t0, cpu = time.perf_counter_ns(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(count)))
            return t0, time.perf_counter_ns(), time.process_time() - cpu

    out.put(("tx", uvloop.run(run())))


def echo_client(endpoint: str, agent: str, ready: Any, stop: Any, out: Any) -> None:
    """Send every message pushed to `agent` back to its sender, until `stop`."""
    import uvloop

    from mabeamd.client import AsyncClient
    from mabeamd.client.errors import Timeout

    async def run() -> None:
        async with AsyncClient(endpoint) as c:
            await c.register(agent)
            ready.set()
            while not stop.is_set():
                try:
                    push = await c.next_push(timeout=0.5)
                except (Timeout, asyncio.TimeoutError):
                    continue
                if push.op == "message":
                    await c.send(agent, push.body["from"], push.body["body"], topic="echo")

    uvloop.run(run())
    out.put(("echo", None))


def rtt_client(leg: Leg, out: Any) -> None:
    from mabeamd.client import Client

    endpoint, agent, echo, n, warmup = leg.endpoint, leg.agent, leg.to, leg.count, leg.warmup
    lat: list[float] = []
    with Client(endpoint) as c:
        c.register(agent)
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            c.send(agent, echo, {**BODY, "i": i}, topic="bench")
            push = c.next_push(timeout=10)
            if push.op != "message" or push.body["body"].get("i") != i:
                raise RuntimeError(f"round trip {i}: got {push.op} {push.body!r}")
            if i >= warmup:
                lat.append((time.perf_counter_ns() - t0) / 1000)
    out.put(("rtt", lat))


# --- the floor: a raw pyzmq relay ------------------------------------------------------------


def relay(endpoint: str, ready: Any, stop: Any) -> None:
    """ROUTER: [from, to, body] in, [to, from, body] out, until `stop`."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.bind(endpoint)
    ready.set()
    while not stop.is_set():
        if s.poll(100):
            src, dst, body = s.recv_multipart()
            s.send_multipart([dst, src, body])
    s.close(0)
    ctx.term()


def _dealer(endpoint: str, identity: str) -> tuple[zmq.Context[Any], zmq.Socket[Any]]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, identity.encode())
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    return ctx, s


def raw_rx(endpoint: str, identity: str, count: int, ready: Any, out: Any) -> None:
    ctx, s = _dealer(endpoint, identity)
    s.send_multipart([identity.encode(), b"hi"])  # to itself: proves the relay knows it
    s.recv_multipart()
    ready.set()
    for _ in range(count):
        wire.unpack(s.recv_multipart()[1])
    out.put(("rx", (time.perf_counter_ns(), 0, 0.0)))
    s.close(0)
    ctx.term()


def raw_tx(leg: Leg, ready: Any, go: Any, out: Any) -> None:
    ctx, s = _dealer(leg.endpoint, leg.agent)
    ready.wait(60)
    go.wait(60)
    dst, count = leg.to.encode(), leg.count
    t0 = time.perf_counter_ns()
    for i in range(count):
        s.send_multipart([dst, wire.pack({**BODY, "i": i})])
    out.put(("tx", (t0, time.perf_counter_ns(), 0.0)))
    s.close(linger=-1)  # every queued message still goes out
    ctx.term()


def raw_echo(endpoint: str, identity: str, ready: Any, stop: Any, out: Any) -> None:
    ctx, s = _dealer(endpoint, identity)
    s.send_multipart([identity.encode(), b"hi"])
    s.recv_multipart()
    ready.set()
    while not stop.is_set():
        if s.poll(100):
            src, body = s.recv_multipart()
            s.send_multipart([src, wire.pack(wire.unpack(body))])
    out.put(("echo", None))
    s.close(0)
    ctx.term()


def raw_rtt(leg: Leg, out: Any) -> None:
    ctx, s = _dealer(leg.endpoint, leg.agent)
    dst, n, warmup = leg.to.encode(), leg.count, leg.warmup
    lat: list[float] = []
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        s.send_multipart([dst, wire.pack({**BODY, "i": i})])
        _, body = s.recv_multipart()
        if wire.unpack(body).get("i") != i:
            raise RuntimeError(f"raw round trip {i}: wrong echo")
        if i >= warmup:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    out.put(("rtt", lat))
    s.close(0)
    ctx.term()


# --- orchestration ---------------------------------------------------------------------------


def _collect(q: Any, procs: list[Any], want: int, timeout: float = 300) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        try:
            got.append(q.get(timeout=0.5))
        except Exception:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a message client exited with {dead[0].exitcode}; its "
                                   "traceback is above") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"message clients gave no result in {timeout:g}s") \
                    from None
    return got


def _finish(procs: list[Any]) -> None:
    for p in procs:
        p.join(20)
        if p.is_alive():
            p.kill()


def blast(endpoint: str, pairs: int, count: int, *, raw: bool,
          ) -> tuple[float, int, dict[str, float]]:
    """Messages/s over `pairs` sender -> receiver pairs of processes, pushes dropped, and
    the clients' CPU microseconds per message ({"tx", "rx"}; not measured for the floor)."""
    q, go = CTX.Queue(), CTX.Event()
    tag = f"m{os.getpid()}-{time.monotonic_ns() % 10**6}"
    procs = []
    # Held here until the children have them: Process.start() drops its args, and a
    # spawned child rebuilding an Event the parent already collected finds no semaphore.
    events = []
    try:
        for k in range(pairs):
            ready = CTX.Event()
            events.append(ready)
            rx, tx = f"{tag}-rx{k}", f"{tag}-tx{k}"
            procs.append(CTX.Process(target=raw_rx if raw else rx_client,
                                     args=(endpoint, rx, count, ready, q)))
            procs.append(CTX.Process(target=raw_tx if raw else tx_client,
                                     args=(Leg(endpoint, tx, rx, count), ready, go, q)))
        for p in procs:
            p.start()
        go.set()  # senders still wait for their own receiver's ready
        got = _collect(q, procs, 2 * pairs)
    finally:
        go.set()
        _finish(procs)
    starts = [v[0] for kind, v in got if kind == "tx"]
    ends = [v[0] for kind, v in got if kind == "rx"]
    dropped = sum(v[1] for kind, v in got if kind == "rx")
    cpu = {kind: sum(v[2] for k, v in got if k == kind) / (pairs * count) * 1e6
           for kind in ("tx", "rx")}
    return pairs * count / ((max(ends) - min(starts)) / 1e9), dropped, cpu


def round_trips(endpoint: str, n: int, warmup: int, *, raw: bool) -> list[float]:
    q, ready, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    tag = f"e{os.getpid()}-{time.monotonic_ns() % 10**6}"
    echo = CTX.Process(target=raw_echo if raw else echo_client,
                       args=(endpoint, f"{tag}-echo", ready, stop, q))
    procs = [echo]
    try:
        echo.start()
        if not ready.wait(60):
            raise RuntimeError("the echo agent did not start")
        client = CTX.Process(target=raw_rtt if raw else rtt_client,
                             args=(Leg(endpoint, f"{tag}-init", f"{tag}-echo", n, warmup), q))
        procs.append(client)
        client.start()
        got = _collect(q, procs, 1)
    finally:
        stop.set()
        _finish(procs)
    return next(v for kind, v in got if kind == "rtt")


def rows(count: int, pairs: int, rtt_n: int, reps: int, warmup: int = 200) -> list[Row]:
    d, endpoint = tcp_daemon("max_agents = 100000")
    relay_ep = f"tcp://127.0.0.1:{free_port()}"
    relay_ready, relay_stop = CTX.Event(), CTX.Event()
    broker = CTX.Process(target=relay, args=(relay_ep, relay_ready, relay_stop))
    ours: dict[str, list[Any]] = {"one": [], "many": [], "rtt": []}
    theirs: dict[str, list[Any]] = {"one": [], "many": [], "rtt": []}
    cpus: dict[str, list[dict[str, float]]] = {"one": [], "many": []}
    drops = 0
    try:
        d.start()
        broker.start()
        if not relay_ready.wait(30):
            raise RuntimeError("the raw relay did not start")
        for _ in range(reps):  # ours, then the floor, each repetition
            for key, n_pairs in (("one", 1), ("many", pairs)):
                arbiter = psutil.Process(d.pid).cpu_times()
                rate, dropped, cpu = blast(endpoint, n_pairs, count, raw=False)
                spent = psutil.Process(d.pid).cpu_times()
                cpu["arbiter"] = ((spent.user + spent.system) - (arbiter.user + arbiter.system)) \
                    / (n_pairs * count) * 1e6
                cpus[key].append(cpu)
                ours[key].append(rate)
                drops += dropped
                theirs[key].append(blast(relay_ep, n_pairs, count, raw=True)[0])
            ours["rtt"].append(round_trips(endpoint, rtt_n, warmup, raw=False))
            theirs["rtt"].append(round_trips(relay_ep, rtt_n, warmup, raw=True))
        d.stop()
    finally:
        relay_stop.set()
        _finish([broker])
        d.cleanup()
    setup = ("one daemon, 2 workers, TCP loopback; every agent an AsyncClient in a process "
             f"of its own; {WINDOW} sends in flight per sender, {count:,} messages per pair "
             "per repetition")
    floor = ("raw pyzmq ROUTER relay in its own process between DEALER processes (msgpack "
             "bodies), same run")
    out = []
    for key, metric in (("one", RATE_ONE), ("many", RATE_MANY.format(pairs=pairs))):
        mid = sorted(ours[key])[len(ours[key]) // 2]
        peer = sorted(theirs[key])[len(theirs[key]) // 2]
        rep = cpus[key][ours[key].index(mid)]
        out.append(Row(metric, "msg/s", goal=RATE_GOAL, rate=mid, spread=spread(ours[key]),
                       reps=reps, peer=floor, peer_value=peer, ratio=mid / peer,
                       extra={f"cpu_us_{k}": v for k, v in rep.items()},
                       note=f"{setup}; CPU per message: sender {rep['tx']:.1f} us, receiver "
                            f"{rep['rx']:.1f} us, arbiter {rep['arbiter']:.1f} us (this "
                            "machine has 2 cores for all of them); pushes the receivers had "
                            f"to drop: {drops}; the floor's senders do not wait for replies "
                            "(DEALER sends queue), ours wait for each send's reply "
                            "(delivered: pushed)"))
    i, spr = pick_median_rep(ours["rtt"])
    j, _ = pick_median_rep(theirs["rtt"])
    p50, p95, p99 = summary(ours["rtt"][i])
    f50, f95, f99 = summary(theirs["rtt"][j])
    out.append(Row(ROUND_TRIP, "us", goal="p95 <= 2x the raw echo floor", p50=p50, p95=p95,
                   p99=p99, spread=spr, samples=len(ours["rtt"][i]), reps=reps,
                   peer="raw echo through the pyzmq relay (same run)", peer_value=f95,
                   ratio=p95 / f95,
                   extra={"peer_p50": f50, "peer_p95": f95, "peer_p99": f99},
                   note="a sync Client sends to an echo agent (AsyncClient, its own "
                        "process), which sends it back with agent.send; from send() to the "
                        "echo's push at next_push(): four agent-endpoint requests and "
                        "pushes. The floor: the same through the raw relay, p50 "
                        f"{f50:,.0f} us"))
    return out
