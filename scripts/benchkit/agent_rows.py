"""Rows for the agent endpoint: registration latency against the raw floor (TCP loopback,
the default agent transport), and 10,000 registered agents: memory per agent and discovery
latency."""

from __future__ import annotations

import time
from typing import Any

import psutil
import zmq

from benchkit import Row
from benchkit.load import EchoPeer, latency_client, run_clients, sdk_register_client
from benchkit.stats import pick_median_rep, summary
from mabeamd.net import wire
from mabeamd.testing import Daemon, free_port, free_ports


def tcp_daemon(agents: str = "", extra: str = "", shard_endpoint: str = "",
               ) -> tuple[Daemon, str]:
    """A bench daemon with its agent endpoint on a free loopback port (the default transport
    agents use), shard endpoints on two more (or at `shard_endpoint`), no event endpoint,
    and heartbeats slow enough not to expire idle agents."""
    port = free_port()
    shard_endpoint = shard_endpoint or f"tcp://127.0.0.1:{free_ports(2)}"
    d = Daemon(f"""
[daemon]
log_level = "warning"
[workers]
count = 2
[agents]
endpoints = ["tcp://127.0.0.1:{port}"]
shard_endpoint = "{shard_endpoint}"
heartbeat_interval = 300.0
{agents}
[events]
endpoint = ""
{extra}
""", raw_config=True)
    return d, f"tcp://127.0.0.1:{port}"


def agent_daemon() -> tuple[Daemon, str]:
    return tcp_daemon("max_agents = 1000000")


def registration(n: int, reps: int) -> list[Row]:
    d, endpoint = agent_daemon()
    try:
        d.start()
        ours = [run_clients(latency_client, [(endpoint, "hello", n, 200)])[0]
                for _ in range(reps)]
        sdk = [run_clients(sdk_register_client, [(endpoint, n, 200)])[0] for _ in range(reps)]
        d.stop()
    finally:
        d.cleanup()
    with EchoPeer(f"tcp://127.0.0.1:{free_port()}") as peer:
        theirs = [run_clients(latency_client, [(peer.endpoint, "hello", n, 200)])[0]
                  for _ in range(reps)]
    i, spr = pick_median_rep(ours)
    j, _ = pick_median_rep(theirs)
    p50, p95, p99 = summary(ours[i])
    peer_p95 = summary(theirs[j])[1]
    k, sdk_spr = pick_median_rep(sdk)
    s50, s95, s99 = summary(sdk[k])
    return [
        Row("agent registration (hello, tcp loopback)", "us", seed_target="< 5000",
            goal="p95 <= 300", p50=p50, p95=p95, p99=p99, spread=spr, samples=n, reps=reps,
            peer="raw pyzmq ROUTER echo + msgpack", peer_value=peer_p95, ratio=p95 / peer_p95,
            note="raw DEALER client with mabeamd framing (the same client drives the floor); "
                 "a new agent id per request"),
        Row("agent registration via SDK (AsyncClient.register)", "us", seed_target="< 5000",
            goal="p95 <= 300", p50=s50, p95=s95, p99=s99, spread=sdk_spr, samples=n,
            reps=reps, peer="raw pyzmq ROUTER echo + msgpack", peer_value=peer_p95,
            ratio=s95 / peer_p95, note="what an agent developer sees: asyncio + uvloop client"),
    ]


def _register_many(endpoint: str, total: int, conns: int) -> list[zmq.Socket[Any]]:
    """Register `total` agents over `conns` connections, 64 requests in flight each."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    socks = []
    for _ in range(conns):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    per = total // conns
    for c, s in enumerate(socks):
        sent = done = 0
        while done < per:
            while sent < per and sent - done < 64:
                body = {"agent": f"scale-{c}-{sent:06d}", "capabilities":
                        ["all", f"shard-{sent % 100}"], "metadata": {"rack": sent % 10}}
                s.send_multipart(wire.encode({"id": sent, "op": "hello"}, body))
                sent += 1
            _, header, _ = s.recv_multipart()
            if wire.unpack(header).get("status") != "ok":
                raise RuntimeError("registration refused during the scale run")
            done += 1
    return socks


def scale(total: int, conns: int, n: int, reps: int) -> list[Row]:
    d, endpoint = agent_daemon()
    rows: list[Row] = []
    try:
        d.start()
        proc = psutil.Process(d.pid)
        time.sleep(0.3)
        before = proc.memory_info().rss
        t0 = time.monotonic()
        socks = _register_many(endpoint, total, conns)
        took = time.monotonic() - t0
        time.sleep(0.3)
        after = proc.memory_info().rss
        per_agent = (after - before) / total / 1024
        assert d.call("status")["agents"]["total"] == total
        rows.append(Row(f"memory per agent ({total:,} agents, {conns} connections)", "KiB",
                        seed_target="< 1024", goal="<= 8", p50=per_agent, p95=per_agent,
                        p99=per_agent, samples=1, reps=1,
                        note=f"arbiter RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB; "
                             f"registered at {total / took:,.0f}/s"))
        for label, body in (("1% match", {"capabilities": "shard-7", "limit": 1000}),
                            ("first 100 of all", {"limit": 100})):
            reps_lat = [run_clients(_discover_client, [(endpoint, body, n)])[0]
                        for _ in range(reps)]
            i, spr = pick_median_rep(reps_lat)
            p50, p95, p99 = summary(reps_lat[i])
            rows.append(Row(f"discovery at {total:,} agents ({label})", "us", p50=p50, p95=p95,
                            p99=p99, spread=spr, samples=n, reps=reps,
                            note="agent.list, sorted by id, one page"))
        for s in socks:
            s.close()
        d.stop()
    finally:
        d.cleanup()
    return rows


def _discover_client(endpoint: str, body: dict[str, object], n: int, out: object) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    lat = []
    for i in range(n + 20):
        t0 = time.perf_counter_ns()
        s.send_multipart(wire.encode({"id": i, "op": "agent.list"}, body))
        s.recv_multipart()
        if i >= 20:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    s.close()
    ctx.term()
    out.put(lat)  # type: ignore[attr-defined]
