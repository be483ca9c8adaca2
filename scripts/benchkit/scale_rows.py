"""The variables scale row: a daemon holding N variables (1,000,000 in the full run), created
over the wire by pipelined clients; its memory per variable and the get latency on random
names, with Redis holding the same N keys in the same run."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from benchkit import Row
from benchkit.load import run_clients
from benchkit.var_rows import Conn, RedisPeer, lat_row, var_daemon
from mabeamd.net import wire
from mabeamd.net.frames import recv_batch, send_frames
from mabeamd.testing import Daemon

# Small on purpose: the row is about what one more variable costs the daemon, not its value.
VALUE = {"n": 1}
BLOB_LEN = len(wire.pack(VALUE))
WARMUP = 200


def name_of(i: int) -> str:
    return f"scale/{i}"


# --- clients (run in their own processes) --------------------------------------------------


def create_client(endpoint: str, start: int, stop: int, window: int, out: Any) -> None:
    """var.create names start..stop-1 on the shard endpoints, `window` requests in flight;
    puts the count made."""
    conn = Conn(endpoint, f"scale-{os.getpid()}")
    poller = zmq.Poller()
    for sock in conn.socks:
        poller.register(sock, zmq.POLLIN)
    nxt, done = start, 0

    def send() -> None:
        nonlocal nxt
        name = name_of(nxt)
        send_frames(conn.sock(name), wire.encode({"id": nxt, "op": "var.create"},
                                                 conn.body("var.create", name, VALUE)))
        nxt += 1

    while nxt < stop and nxt - start < window:
        send()
    while done < stop - start:
        ready = poller.poll(30_000)
        if not ready:
            raise RuntimeError(f"no reply in 30 s after {done} creates")
        for sock, _ in ready:
            for _, header, body in recv_batch(sock, 1 << 30):
                if wire.unpack(header).get("status") != "ok":
                    raise RuntimeError(f"var.create failed: {wire.unpack(body)}")
                done += 1
                if nxt < stop:
                    send()
    conn.close()
    out.put(done)


def get_client(endpoint: str, count: int, n: int, seed: int, out: Any) -> None:
    """Latencies (us) of SDK reads of random names: shared memory, shared memory with the
    segments prefaulted (a second client), then over the wire."""
    from mabeamd.client import Client

    rng = random.Random(seed)
    names = [name_of(rng.randrange(count)) for _ in range(WARMUP + n)]
    result: dict[str, list[float]] = {"shm": [], "prefault": [], "wire": []}
    for mode, local in (("shm", True), ("prefault", True), ("wire", False)):
        with Client(endpoint, prefault=mode == "prefault") as c:
            c.register(f"scale-reader-{os.getpid()}-{mode}")
            lat = result[mode]
            for i, name in enumerate(names):
                t0 = time.perf_counter_ns()
                got = c.get_var(name, local=local)
                t1 = time.perf_counter_ns()
                if got["value"] != VALUE:
                    raise RuntimeError(f"{name}: unexpected value {got['value']!r}")
                if i >= WARMUP:
                    lat.append((t1 - t0) / 1000)
    out.put(result)


def redis_fill(port: int, count: int, out: Any) -> None:
    import msgpack
    import redis

    r = redis.Redis(port=port)
    blob = msgpack.packb(VALUE)
    for lo in range(0, count, 1000):
        p = r.pipeline(transaction=False)
        for i in range(lo, min(count, lo + 1000)):
            p.set(name_of(i), blob)
        p.execute()
    out.put(int(r.info("memory")["used_memory"]))


def redis_get(port: int, count: int, n: int, seed: int, out: Any) -> None:
    import msgpack
    import redis

    r = redis.Redis(port=port)
    rng = random.Random(seed)
    lat: list[float] = []
    for i in range(WARMUP + n):
        name = name_of(rng.randrange(count))
        t0 = time.perf_counter_ns()
        msgpack.unpackb(r.get(name))
        if i >= WARMUP:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    out.put(lat)


# --- memory --------------------------------------------------------------------------------


def _pss_without_shmem(pid: int) -> int:
    """Proportional set size minus shared-memory pages, in bytes (smaps_rollup): the shm
    segments are counted once, from their files, instead of once per mapping process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def daemon_memory(pid: int, segments: list[Path]) -> tuple[int, int]:
    """(process bytes: sum over the arbiter and its children, shm bytes allocated)."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    process = sum(_pss_without_shmem(p.pid) for p in procs)
    shm = 0
    for seg in segments:
        with contextlib.suppress(FileNotFoundError):  # a generation unlinked meanwhile
            shm += seg.stat().st_blocks * 512
    return process, shm


# --- the row -------------------------------------------------------------------------------


def million_variables(count: int, n: int, reps: int) -> list[Row]:
    d, endpoint = var_daemon("everysec")
    procs = 2
    try:
        d.start()
        before = daemon_memory(d.pid, d.shm_segments())
        t0 = time.monotonic()
        bounds = [(count * k // procs, count * (k + 1) // procs) for k in range(procs)]
        made = sum(run_clients(create_client, [(endpoint, lo, hi, 256) for lo, hi in bounds],
                               timeout=1800))
        create_rate = made / (time.monotonic() - t0)
        time.sleep(1.0)  # let everysec fsync and the allocator settle before measuring
        after = daemon_memory(d.pid, d.shm_segments())
        runs = [run_clients(get_client, [(endpoint, count, n, rep)])[0]
                for rep in range(reps)]
        restart = _restart_after_kill(d)
        # Reads after the restart: get_client raises (failing the row) on a wrong value.
        run_clients(get_client, [(endpoint, count, 100, reps)])
        d.stop()
    finally:
        d.cleanup()
    grown = (after[0] - before[0]) + (after[1] - before[1])
    per_var = grown / count
    with RedisPeer() as peer:
        redis_mem: int | None = None
        redis_runs: list[list[float]] = []
        if not peer.why_not:
            import redis

            base = int(redis.Redis(port=peer.port).info("memory")["used_memory"])
            redis_mem = run_clients(redis_fill, [(peer.port, count)], timeout=1800)[0] - base
            redis_runs = [run_clients(redis_get, [(peer.port, count, n, rep)])[0]
                          for rep in range(reps)]
        why = peer.why_not
    rows = [Row(f"memory per variable ({count:,} variables)", "B", goal="-",
                rate=per_var, samples=1, reps=1,
                note=f"growth of the arbiter + workers (PSS without shm pages) "
                     f"{(after[0] - before[0]) / 2**20:,.0f} MiB plus shm segments "
                     f"{(after[1] - before[1]) / 2**20:,.0f} MiB, over {count:,} variables "
                     f"with a {BLOB_LEN}-byte value each; created over tcp on the shard "
                     f"endpoints by {procs} pipelined clients at {create_rate:,.0f} "
                     "creates/s")]
    if redis_mem is not None:
        rows[0].peer, rows[0].peer_value = "Redis used_memory, same keys", redis_mem / count
        rows[0].ratio = per_var / rows[0].peer_value
    else:
        rows[0].peer = f"Redis: not run ({why})"
    for mode, metric, goal, note in (
            ("shm", f"variable read at {count:,} variables (SDK, shared memory)", "p95 <= 5",
             ""),
            ("prefault", f"variable read at {count:,} variables (SDK, shm, prefault=True)",
             "p95 <= 5", "; the segments mapped with MAP_POPULATE (the warm-up reads pay for "
             "faulting them in)"),
            ("wire", f"variable get at {count:,} variables (SDK, over the wire)", "p95 <= 150",
             "")):
        rows.append(lat_row(metric, [r[mode] for r in runs], redis_runs or None, why,
                            peer="Redis GET, same keys", seed_target="< 1000", goal=goal,
                            note="random names among all of them (not a hot set)" + note))
    rows.append(Row(f"worker restart after kill -9 at {count:,} variables", "ms", goal="-",
                    p50=restart, p95=restart, p99=restart, samples=1, reps=1,
                    note=f"shard 0 ({count // 2:,} variables): snapshot + WAL replay + a new "
                         "shared-memory generation, to the replacement's hello; random "
                         "reads after it check the values"))
    return rows


def _restart_after_kill(d: Daemon) -> float:
    """kill -9 worker 0; milliseconds until it is running again (polled every 20 ms)."""
    pid = d.workers()[0]["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while True:
        w = d.workers()[0]
        if w["state"] == "running" and w["pid"] != pid:
            return (time.monotonic() - t0) * 1000
        if w["state"] == "failed" or time.monotonic() - t0 > 300:
            raise RuntimeError(f"worker 0 did not come back: {w}")
        time.sleep(0.02)
