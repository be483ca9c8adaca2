"""The client processes of the cluster rows (cluster_rows.py): each runs in its own process
(`load.run_clients`) against our nodes through the SDK or against the same etcd through aetcd,
and reports its samples on `out`. Kept apart from the rows so each file holds one job: what a
client does, and how the rows are built and compared."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchkit.var_rows import VALUE
from mabeamd.net import wire

NODES = ("a", "b", "c")
NAMES = 100  # variables (keys) each latency client cycles over
RAW = b"/bench-raw/"  # the peers' keys
BLOB = wire.pack(VALUE)  # the value both sides write: the SDK's msgpack of VALUE
HISTORY = 16  # [variables] history default: past versions kept in a variable's etcd value


def open_etcd(endpoints: list[str]) -> Any:
    from mabeamd.cluster.etcd import client

    return client(endpoints, 10.0)


# --- clients (run in their own processes) --------------------------------------------------


def sdk_client(endpoint: str, mode: str, n: int, warmup: int, out: Any) -> None:
    """Sequential latencies (us) through the SDK on one node: set_var (mode "set") or
    get_var(consistent=True) (mode "consistent") or get_var(local=False) (mode "wire"),
    over NAMES variables it creates first."""
    from mabeamd.client import Client

    agent = f"cbench-{os.getpid()}"
    names = [f"cbench/{os.getpid()}/{i}" for i in range(NAMES)]
    lat: list[float] = []
    with Client(endpoint) as c:
        c.register(agent)
        for name in names:
            c.create_var(agent, name, VALUE)
        for i in range(warmup + n):
            name = names[i % NAMES]
            t0 = time.perf_counter_ns()
            if mode == "set":
                c.set_var(agent, name, VALUE)
            elif mode == "wire":
                c.get_var(name, local=False)
            else:
                c.get_var(name, consistent=True)
            if i >= warmup:
                lat.append((time.perf_counter_ns() - t0) / 1000)
    out.put(lat)


def etcd_client(endpoints: list[str], mode: str, n: int, warmup: int, out: Any) -> None:
    """The peer: sequential latencies (us) of aetcd requests straight to etcd, over NAMES keys
    holding BLOB: "txn" (compare mod_revision, put; read in the failure branch: a cluster
    write's transaction), "put" (a plain put) or "get" (a linearizable get)."""
    import uvloop

    async def run() -> list[float]:
        etcd = open_etcd(endpoints)
        await etcd.connect()
        tx = etcd.transactions
        keys = [RAW + b"%d/%d" % (os.getpid(), i) for i in range(NAMES)]
        revs = {k: (await etcd.put(k, BLOB)).header.revision for k in keys}
        lost = 0
        lat: list[float] = []
        for i in range(warmup + n):
            k = keys[i % NAMES]
            t0 = time.perf_counter_ns()
            if mode == "txn":
                won, answers = await etcd.transaction(
                    compare=[tx.mod(k) == revs[k]], success=[tx.put(k, BLOB)],
                    failure=[tx.get(k)])
                if won:
                    revs[k] = answers[0].response_put.header.revision
                else:
                    lost += 1
                    revs[k] = answers[0][0][1].mod_revision
            elif mode == "put":
                await etcd.put(k, BLOB)
            else:
                await etcd.get(k)
            if i >= warmup:
                lat.append((time.perf_counter_ns() - t0) / 1000)
        await etcd.close()
        if lost:
            raise RuntimeError(f"{lost} raw transactions lost their compare: keys shared?")
        return lat

    out.put(uvloop.run(run()))


@dataclass(frozen=True)
class CasJob:
    """One CAS client process's part: `loops` loops over `names` (or `keys`) for `seconds`."""

    names: list[str]
    keys: list[bytes]
    loops: int
    seconds: float
    seed: int


def sdk_cas_client(endpoint: str, job: CasJob, barrier: Any, out: Any) -> None:
    """`job.loops` threads, each with its own SDK Client on this node, incrementing random
    names of `job.names` by compare-and-set (a cached read, then set_var with
    expect_version) for `job.seconds` after every process passed `barrier`; puts (won,
    conflicts, errors)."""
    from mabeamd.client import Client, VersionMismatch
    from mabeamd.client.errors import MabeamError

    names, threads, seconds, seed = job.names, job.loops, job.seconds, job.seed

    clients = [Client(endpoint) for _ in range(threads)]
    agents = [f"cas-{os.getpid()}-{t}" for t in range(threads)]
    for c, agent in zip(clients, agents, strict=True):
        c.register(agent)
        for name in names:  # the coordinator made them: wait for this node's cache
            _wait_var(c, name)
    totals = [0, 0, 0]
    lock = threading.Lock()
    barrier.wait(60)
    deadline = time.monotonic() + seconds

    def loop(t: int) -> None:
        c, agent, rng = clients[t], agents[t], random.Random(seed * 1000 + t)
        won = conflicts = errors = 0
        while time.monotonic() < deadline:
            name = rng.choice(names)
            cur = c.get_var(name)
            try:
                c.set_var(agent, name, cur["value"] + 1, expect_version=cur["version"])
                won += 1
            except VersionMismatch:
                conflicts += 1
            except MabeamError:  # the shard's own retries ran out (CONFLICT), say
                errors += 1
        with lock:
            for i, x in enumerate((won, conflicts, errors)):
                totals[i] += x

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    for c in clients:
        c.close()
    out.put(tuple(totals))


def etcd_cas_client(endpoints: list[str], job: CasJob, barrier: Any, out: Any) -> None:
    """The peer of sdk_cas_client: `job.loops` asyncio tasks sharing one aetcd client (as a
    node's worker shares its one), each incrementing random keys of `job.keys` by a
    transaction comparing the mod_revision of the process's cached copy; a lost compare
    takes the current value from the failure branch (as a node's cache does). Puts (won,
    conflicts, 0)."""
    import uvloop

    keys, loops, seconds, seed = job.keys, job.loops, job.seconds, job.seed

    async def run() -> tuple[int, int, int]:
        etcd = open_etcd(endpoints)
        await etcd.connect()
        tx = etcd.transactions
        cache: dict[bytes, tuple[int, int]] = {}
        for k in keys:
            got = await etcd.get(k)
            cache[k] = (wire.unpack(got.value), got.mod_revision)
        barrier.wait(60)
        deadline = time.monotonic() + seconds

        async def loop(t: int) -> tuple[int, int]:
            rng = random.Random(seed * 1000 + t)
            won = conflicts = 0
            while time.monotonic() < deadline:
                k = rng.choice(keys)
                value, rev = cache[k]
                ok, answers = await etcd.transaction(
                    compare=[tx.mod(k) == rev], success=[tx.put(k, wire.pack(value + 1))],
                    failure=[tx.get(k)])
                if ok:
                    new = (value + 1, answers[0].response_put.header.revision)
                    won += 1
                else:
                    raw, meta = answers[0][0]
                    new = (wire.unpack(raw), meta.mod_revision)
                    conflicts += 1
                if new[1] > cache[k][1]:
                    cache[k] = new
            return won, conflicts

        got = await asyncio.gather(*(loop(t) for t in range(loops)))
        await etcd.close()
        return sum(w for w, _ in got), sum(c for _, c in got), 0

    out.put(uvloop.run(run()))


def _wait_var(c: Any, name: str, timeout: float = 20.0) -> dict[str, Any]:
    from mabeamd.client.errors import MabeamError

    deadline = time.monotonic() + timeout
    while True:
        try:
            got: dict[str, Any] = c.get_var(name)
            return got
        except MabeamError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def lag_client(endpoints: list[str], writes: int, warmup: int, out: Any) -> None:
    """One variable set `writes` times on node A (endpoints[0]), one write at a time; after
    each acknowledgment, read it from node B's and node C's shared memory (an SDK Client on
    each) in a tight loop until each shows the new version. Puts, per node, the ms from A's
    acknowledgment to the first read that showed it (and from before the set), and the
    set's own latency."""
    from mabeamd.client import Client

    a, *others = (Client(e) for e in endpoints)
    agent = f"lag-{os.getpid()}"
    a.register(agent)
    name = f"lag/{os.getpid()}"
    a.create_var(agent, name, 0)
    for k, c in enumerate(others):
        c.register(f"{agent}-reader{k}")  # its hello maps the segments: reads are local
        _wait_var(c, name)
        if c.aio._local.shm is None:
            raise RuntimeError("the reader's node offers no shared-memory reads")
    labels = NODES[1:len(endpoints)]
    after_ack: dict[str, list[float]] = {k: [] for k in labels}
    after_send: dict[str, list[float]] = {k: [] for k in labels}
    ack: list[float] = []
    for i in range(warmup + writes):
        t0 = time.perf_counter_ns()
        version = a.set_var(agent, name, i)["version"]
        t1 = time.perf_counter_ns()
        seen: dict[str, int] = {}
        order = list(zip(labels, others, strict=True))
        if i % 2:  # neither node is always read first
            order.reverse()
        while len(seen) < len(order):
            for label, c in order:
                if label not in seen and c.get_var(name)["version"] >= version:
                    seen[label] = time.perf_counter_ns()
            if time.perf_counter_ns() - t1 > 10e9:
                raise RuntimeError(f"write {i} (version {version}) not seen on "
                                   f"{sorted(set(labels) - set(seen))} after 10 s")
        if i >= warmup:
            ack.append((t1 - t0) / 1e6)
            for label, t in seen.items():
                after_ack[label].append((t - t1) / 1e6)
                after_send[label].append((t - t0) / 1e6)
        time.sleep(0.002)  # let the cluster go idle: each write's lag is its own
    for c in (a, *others):
        c.close()
    out.put({"after_ack": after_ack, "after_send": after_send, "ack": ack})


def etcd_lag_client(role: str, endpoints: list[str], job: tuple[bytes, int], barrier: Any,
                    out: Any) -> None:
    """The watch-lag peer, straight on etcd: role "write" puts 0 .. count-1 to the key with
    aetcd, one at a time, 10 ms apart, and puts (role, {i: ns after its reply}); role
    "watch" watches the key with an aetcd client of its own and puts (role, {i: ns when
    the event for i came}). Times are perf_counter_ns: CLOCK_MONOTONIC, one clock for all
    the processes of this host."""
    import uvloop

    key, count = job

    async def run() -> dict[int, int]:
        etcd = open_etcd(endpoints)
        await etcd.connect()
        times: dict[int, int] = {}
        if role == "write":
            await etcd.put(key, wire.pack(-1))
            barrier.wait(60)
            for i in range(count):
                await etcd.put(key, wire.pack(i))
                times[i] = time.perf_counter_ns()
                await asyncio.sleep(0.01)
        else:
            watch = await etcd.watch(key)
            barrier.wait(60)

            async def follow() -> None:
                async for event in watch:
                    if event.kind == "PUT":
                        i = wire.unpack(event.kv.value)
                        if i >= 0:
                            times[i] = time.perf_counter_ns()
                        if i >= count - 1:
                            return

            try:
                await asyncio.wait_for(follow(), 30 + count * 0.1)
            finally:
                await watch.cancel()
        await etcd.close()
        return times

    out.put((role, uvloop.run(run())))


def fill_client(endpoint: str, count: int, refill: int, out: Any) -> None:
    """Create cost/0 .. cost/count-1 holding VALUE, one at a time, then set each of
    full/0 .. full/refill-1 HISTORY + 1 times, so each carries HISTORY past versions."""
    from mabeamd.client import Client

    agent = f"fill-{os.getpid()}"
    with Client(endpoint) as c:
        c.register(agent)
        for i in range(count):
            c.create_var(agent, f"cost/{i}", VALUE)
        for i in range(refill):
            c.create_var(agent, f"full/{i}", VALUE)
            for _ in range(HISTORY + 1):
                c.set_var(agent, f"full/{i}", VALUE)
    out.put(count)


# --- the set-up ----------------------------------------------------------------------------




def etcd_watch_client(endpoints: list[str], ready: Any) -> None:
    """A stand-in for one node's cache on the peer's keys: an aetcd client of its own that
    watches RAW and unpacks every value (what a node's watch does with each write), until
    terminated."""
    import uvloop

    async def run() -> None:
        etcd = open_etcd(endpoints)
        await etcd.connect()
        watch = await etcd.watch_prefix(RAW)
        ready.set()
        async for event in watch:
            if event.kind == "PUT":
                wire.unpack(event.kv.value)

    uvloop.run(run())


@contextlib.contextmanager
def raw_watchers(endpoints: list[str], count: int) -> Iterator[None]:
    """`count` etcd_watch_client processes following the peer's keys while the block runs:
    the same watch fan-out the nodes' caches give every cluster write."""
    from benchkit.load import CTX

    procs = []
    try:
        for _ in range(count):
            ready = CTX.Event()
            proc = CTX.Process(target=etcd_watch_client, args=(endpoints, ready), daemon=True)
            proc.start()
            procs.append(proc)
            if not ready.wait(60):
                raise RuntimeError("an etcd watcher process did not start its watch in 60 s")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)
