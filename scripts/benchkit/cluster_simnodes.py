"""The simulated nodes of the capacity simulation (cluster_sim.py), all in one process
(`nodes_main`, driven by `Nodes` over a pipe): each one aetcd client of its own, a lease kept
alive with a membership key on it, watches on the shared vars/ and agents/ prefixes, and the
simulated agents' directory keys on their node's lease. Apart from the driver and its rows
so each file holds one job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import traceback
from typing import Any

import msgpack

from benchkit.stats import summary

CLUSTER = "sim"  # the keys are under /mabeamd/sim/
SHARDS = 2
VALUE_BYTES = 100  # each write's value
REG_IN_FLIGHT = 32  # registrations outstanding at once


def sim_client(endpoints: list[str], timeout: float = 10.0) -> Any:
    """cluster/etcd.py's client (every member in one round-robin gRPC target, the same
    options), but with a subchannel pool of its own: gRPC otherwise shares the TCP
    connections of the channels of one process, and each simulated node stands for a
    machine."""
    import aetcd

    from mabeamd.cluster.etcd import client, target

    base = client(endpoints, timeout)  # not connected: a way to read its options
    host, port = target(endpoints)
    return aetcd.Client(host=host, port=port, timeout=timeout,
                        options={**base._options, "grpc.use_local_subchannel_pool": 1})


def sim_keys() -> Any:
    from mabeamd.cluster.etcd import Keys

    return Keys(CLUSTER)


def agents_prefix() -> bytes:
    return bytes(sim_keys().root) + b"agents/"


def write_value(cell: int, seq: int, sent_ns: int) -> bytes:
    """VALUE_BYTES of msgpack: [cell, seq, the send time (perf_counter_ns), padding]."""
    base = msgpack.packb([cell, seq, sent_ns, b""])
    return bytes(msgpack.packb([cell, seq, sent_ns, b"x" * (VALUE_BYTES - len(base))]))


def agent_record(agent_id: str, node: str) -> bytes:
    """What Directory.claim puts on main: the registry's public record and the node."""
    return bytes(msgpack.packb({
        "id": agent_id, "status": "healthy", "capabilities": ["sim"], "metadata": {},
        "weight": 1.0, "priority": 0, "principal": None, "managed": False,
        "registered_at": time.time(), "last_seen_age": None, "node": node}))


# --- the simulated nodes (their own process) -----------------------------------------------


class SimNode:
    def __init__(self, name: str, index: int, endpoints: list[str], ttl: int) -> None:
        self.name, self.index, self.ttl = name, index, ttl
        self.etcd = sim_client(endpoints)
        self.lease_id = 0
        self.events: dict[int, int] = {}  # var PUT events, by the writer's cell
        self.lags: dict[int, list[float]] = {}  # ms from the write's send to the event
        self.dir_puts = 0
        self.dir_deletes = 0
        self.keepalives: list[int] = []  # perf_counter_ns of each confirmed keepalive
        self.ka_failed = 0
        self.lease_lost = 0
        self.watches: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        from mabeamd import __version__

        keys = sim_keys()
        await self.etcd.connect()
        lease = await self.etcd.lease(self.ttl)
        self.lease_id = lease.id
        record = {"node": self.name, "advertise": f"tcp://127.0.0.1:{7000 + self.index}",
                  "agents": [f"tcp://127.0.0.1:{7100 + self.index}"],
                  "host": socket.gethostname(), "pid": os.getpid(), "version": __version__,
                  "started": time.time(), "shards": SHARDS}
        tx = self.etcd.transactions
        key = keys.node(self.name)
        won, _ = await self.etcd.transaction(
            compare=[tx.version(key) == 0],
            success=[tx.put(key, msgpack.packb(record), lease=self.lease_id)], failure=[])
        if not won:
            raise RuntimeError(f"membership key {key!r} exists")
        self.watches = [await self.etcd.watch_prefix(keys.root + b"vars/"),
                        await self.etcd.watch_prefix(agents_prefix())]
        self.tasks = [asyncio.create_task(self._follow_vars(self.watches[0])),
                      asyncio.create_task(self._follow_dir(self.watches[1])),
                      asyncio.create_task(self._keepalive())]

    async def _follow_vars(self, watch: Any) -> None:
        async for event in watch:
            now = time.perf_counter_ns()
            if event.kind != "PUT":
                continue
            cell, _seq, sent, _pad = msgpack.unpackb(event.kv.value)
            self.events[cell] = self.events.get(cell, 0) + 1
            self.lags.setdefault(cell, []).append((now - sent) / 1e6)

    async def _follow_dir(self, watch: Any) -> None:
        async for event in watch:
            if event.kind == "PUT":
                self.dir_puts += 1
            else:
                self.dir_deletes += 1

    async def _keepalive(self) -> None:
        """As Membership._keepalive: one keepalive every TTL/3 (the phase drawn at random,
        so that the nodes' keepalives do not come together)."""
        interval = self.ttl / 3
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            t0 = time.monotonic()
            try:
                reply = await self.etcd.refresh_lease(self.lease_id)
                if reply.TTL <= 0:
                    self.lease_lost += 1
                self.keepalives.append(time.perf_counter_ns())
            except Exception:  # counted; the figures then say why they are short
                self.ka_failed += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    async def stop_watching(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in self.watches:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.cancel(), 2)
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t

    async def leave(self) -> None:
        """Revoke the lease (its membership and agents go with it) and close."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.etcd.revoke_lease(self.lease_id), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.etcd.close(), 5)


async def _register(nodes: list[SimNode], start: int, count: int) -> dict[str, Any]:
    """Agents start .. start+count-1, round robin over the nodes, each as Directory.claim
    puts it; then wait (bounded) until every node's directory watch saw all of them."""
    prefix = agents_prefix()
    before = [n.dir_puts for n in nodes]
    sem = asyncio.Semaphore(REG_IN_FLIGHT)
    lat: list[float] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        node = nodes[i % len(nodes)]
        aid = f"sim-{i:05d}"
        key = prefix + aid.encode()
        tx = node.etcd.transactions
        async with sem:
            t0 = time.perf_counter_ns()
            won, _ = await node.etcd.transaction(
                compare=[tx.version(key) == 0],
                success=[tx.put(key, agent_record(aid, node.name), lease=node.lease_id)],
                failure=[tx.get(key)])
            lat.append((time.perf_counter_ns() - t0) / 1e6)
        if not won:
            refused += 1

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(start, start + count))),
                           max(60.0, count / 20))
    took = time.perf_counter() - t0
    deadline = time.monotonic() + 20
    while (any(n.dir_puts - b < count for n, b in zip(nodes, before, strict=True))
           and time.monotonic() < deadline):
        await asyncio.sleep(0.005)
    p50, p95, _ = summary(lat)
    return {"count": count, "seconds": took, "p50_ms": p50, "p95_ms": p95, "refused": refused,
            "dir_events": sum(n.dir_puts - b for n, b in zip(nodes, before, strict=True)),
            "fanned_out_s": time.perf_counter() - t0}


async def _end(nodes: list[SimNode], cell: int, writes: int, t0_ns: int,
               t1_ns: int) -> dict[str, Any]:
    """The window's figures once every node saw the `writes` of `cell` (waits 10 s at most)."""
    t = time.perf_counter()
    deadline = time.monotonic() + 10
    while any(n.events.get(cell, 0) < writes for n in nodes) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    lags = [x for n in nodes for x in n.lags.pop(cell, [])]
    lag = summary(lags) if lags else (0.0, 0.0, 0.0)
    return {"events": [n.events.get(cell, 0) for n in nodes],
            "drain_s": time.perf_counter() - t,
            "lag_p50_ms": lag[0], "lag_p95_ms": lag[1], "lag_p99_ms": lag[2],
            "keepalives": sum(1 for n in nodes for k in n.keepalives if t0_ns <= k <= t1_ns),
            "ka_failed": sum(n.ka_failed for n in nodes),
            "leases_lost": sum(n.lease_lost for n in nodes)}


def nodes_main(conn: Any, endpoints: list[str], count: int, ttl: int) -> None:
    """The simulated nodes' process: start `count` nodes, then serve the coordinator's
    commands over `conn` ("register", "end", "stop") until "stop" or until the coordinator
    goes (EOF); revoke every lease on the way out."""
    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        nodes = [SimNode(f"n{i}", i, endpoints, ttl) for i in range(count)]
        try:
            await asyncio.wait_for(asyncio.gather(*(n.start() for n in nodes)), 60)
            conn.send(("ok", [n.lease_id for n in nodes]))
            while True:
                try:
                    msg = await loop.run_in_executor(None, conn.recv)
                except EOFError:
                    return
                if msg[0] == "register":
                    conn.send(("ok", await _register(nodes, *msg[1:])))
                elif msg[0] == "end":
                    conn.send(("ok", await _end(nodes, *msg[1:])))
                else:
                    return
        except Exception:
            with contextlib.suppress(Exception):
                conn.send(("error", traceback.format_exc()))
        finally:
            for n in nodes:
                await n.stop_watching()
            await asyncio.gather(*(n.leave() for n in nodes))
            with contextlib.suppress(Exception):
                conn.send(("stopped", None))

    uvloop.run(run())


class Nodes:
    """The coordinator's handle on a nodes process."""

    def __init__(self, endpoints: list[str], count: int, ttl: int) -> None:
        from benchkit.load import CTX

        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=nodes_main, args=(child, endpoints, count, ttl),
                                daemon=True)
        self.proc.start()
        child.close()

    def _reply(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"the simulated nodes gave no answer in {timeout:g} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"the simulated nodes failed: {value}")
        return value

    async def ready(self) -> Any:
        return await asyncio.to_thread(self._reply, 90)

    async def call(self, *msg: Any, timeout: float = 300) -> Any:
        self.conn.send(msg)
        return await asyncio.to_thread(self._reply, timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("stop",))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.conn.poll(max(0.0, deadline -
                                                                      time.monotonic())):
                if self.conn.recv()[0] == "stopped":
                    break
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


# --- the coordinator's measurements --------------------------------------------------------

# (figure, metric name, a label that must be in the line or "")
