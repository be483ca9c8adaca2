"""Rows for var.batch: ops/s in batches of 64 (get/set 1:1) on the shard endpoints, through
the agent endpoint and through the SDK's Client.batch, against Redis pipelines of 64 and
against our own 64 single requests in flight, all in the same run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from benchkit import Row
from benchkit.load import run_clients
from benchkit.stats import spread
from benchkit.var_rows import VALUE, Conn, RedisPeer, mabeam_rate, redis_rate, var_daemon
from mabeamd.net import wire
from mabeamd.net.frames import recv_frames, send_frames
from mabeamd.storage.sharding import shard_of


def _ops(conn: Conn, names: list[str], k: int, size: int) -> list[dict[str, Any]]:
    ops = []
    for j in range(size):
        name = names[(k + j) % len(names)]
        op = "var.get" if j % 2 else "var.set"
        ops.append({"op": op, **conn.body(op, name, VALUE)})
    return ops


def mabeam_batch_rate(endpoint: str, seconds: float, size: int, via: str, out: Any) -> None:
    """Batches of `size` ops one after the other; via "shard": each batch split by shard and
    its parts sent to the shard endpoints at once (as the SDK does), via "agent": one
    var.batch to the agent endpoint. Puts (ops done, seconds)."""
    conn = Conn(endpoint, f"batch-{os.getpid()}", via)
    names = [f"batch/{os.getpid()}/{i}" for i in range(100)]
    for i, name in enumerate(names):
        conn.call(i + 1, "var.create", name, VALUE)
    done, rid, k = 0, 1000, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.beat(rid)
        ops = _ops(conn, names, k, size)
        k += size
        parts: dict[int, list[dict[str, Any]]] = {}
        for op in ops:
            key = shard_of(op["name"], conn.shards) if via == "shard" else 0
            parts.setdefault(key, []).append(op)
        for key, part in parts.items():
            rid += 1
            sock = conn.socks[key] if via == "shard" else conn.agent_sock
            send_frames(sock, wire.encode({"id": rid, "op": "var.batch"}, {"ops": part}))
        for key in parts:
            sock = conn.socks[key] if via == "shard" else conn.agent_sock
            _, header, reply = recv_frames(sock)
            if wire.unpack(header).get("status") != "ok":
                raise RuntimeError(f"var.batch failed: {wire.unpack(reply)}")
            results = wire.unpack(reply)["results"]
            failed = [e for e in results if e["status"] != "ok"]
            if failed:
                raise RuntimeError(f"{len(failed)} ops of a batch failed: {failed[0]}")
            done += len(results)
    conn.close()
    out.put((done, seconds))


def sdk_batch_rate(endpoint: str, seconds: float, size: int, out: Any) -> None:
    """Client.batch of `size` ops one after the other (what a Python agent gets)."""
    from mabeamd.client import Client, MabeamError

    agent = f"sdk-batch-{os.getpid()}"
    names = [f"sdkb/{os.getpid()}/{i}" for i in range(100)]
    done, k = 0, 0
    with Client(endpoint, timeout=30) as c:
        c.register(agent)
        c.batch([{"op": "var.create", "agent": agent, "name": n, "value": VALUE}
                 for n in names])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ops = [{"op": "var.get", "name": names[(k + j) % 100]} if j % 2 else
                   {"op": "var.set", "agent": agent, "name": names[(k + j) % 100],
                    "value": VALUE} for j in range(size)]
            k += size
            results = c.batch(ops)
            failed = [r for r in results if isinstance(r, MabeamError)]
            if failed:
                raise RuntimeError(f"{len(failed)} ops of a batch failed: {failed[0]}")
            done += len(results)
    out.put((done, seconds))


def batches(reps: int, seconds: float, size: int = 64) -> list[Row]:
    ways: dict[str, tuple[Callable[..., None], str | None]] = {
        "shard": (mabeam_batch_rate, "shard"),
        "agent": (mabeam_batch_rate, "agent"),
        "sdk": (sdk_batch_rate, None),
    }
    rates: dict[str, list[float]] = {w: [] for w in [*ways, "pipelined"]}
    d, endpoint = var_daemon("everysec")
    try:
        d.start()
        for _ in range(reps):  # interleaved, so a drifting machine moves every way alike
            for way, (fn, via) in ways.items():
                args = (endpoint, seconds, size, via) if via else (endpoint, seconds, size)
                rates[way].append(sum(x for x, _ in run_clients(fn, [args] * 2)) / seconds)
            rates["pipelined"].append(sum(x for x, _ in run_clients(
                mabeam_rate, [(endpoint, seconds, size)] * 2)) / seconds)
        d.stop()
    finally:
        d.cleanup()
    with RedisPeer() as peer:
        peer_rates: list[float] = []
        if not peer.why_not:
            peer_rates = [sum(x for x, _ in run_clients(redis_rate, [(peer.port, seconds, size)]
                                                         * 2)) / seconds for _ in range(reps)]
        why = peer.why_not

    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    pm = mid(peer_rates) if peer_rates else None
    rows = []
    for way, metric, note in (
        ("shard", f"variable ops/s in batches of {size} (var.batch, shard endpoints, "
                  "2 procs)", "each batch split by shard, parts sent at once, one batch "
                              "after another (as a Redis pipeline runs)"),
        ("agent", f"variable ops/s in batches of {size} (var.batch via the agent endpoint, "
                  "2 procs)", "one batch per message to the arbiter; it splits by shard"),
        ("sdk", f"variable ops/s in batches of {size} (Client.batch, 2 procs)",
         "the Python SDK's blocking client, one batch after another"),
    ):
        row = Row(metric, "ops/s", rate=mid(rates[way]), spread=spread(rates[way]), reps=reps,
                  note=f"{note}; {seconds:g} s per repetition; the same daemon's "
                       f"{size} single requests in flight: {mid(rates['pipelined']):,.0f} "
                       "ops/s", extra={"pipelined": rates["pipelined"]})
        if pm:
            row.peer, row.peer_value, row.ratio = \
                f"Redis 7 (redis-py pipelines of {size})", pm, row.rate / pm  # type: ignore[operator]
        else:
            row.peer = f"Redis: not run ({why})"
        rows.append(row)
    return rows
