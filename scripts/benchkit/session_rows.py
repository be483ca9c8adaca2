"""Rows for coordination sessions: simple consensus with live SDK agents over ZeroMQ (latency
and sustained rate) and each built-in protocol's pure mechanism, offline.

Voters are `mabeamd.client.Agent`s (one connection each) in their own process; the initiator
is an AsyncClient in another, calling start_session(wait=True): the latency is what an agent
developer sees from the call to the applied outcome (start -> invitations pushed -> answers
-> decide -> WAL commit of the session's variable -> reply).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from benchkit import Row
from benchkit.agent_rows import tcp_daemon
from benchkit.load import CTX, run_clients
from benchkit.stats import pick_median_rep, summary


def voters(endpoint: str, prefix: str, count: int, ready: Any, stop: Any) -> None:
    """`count` live agents answering every consensus invitation with accept."""
    import uvloop

    from mabeamd.client import Agent, Invitation, invitation

    class Voter(Agent):
        capabilities = ["bench-voter"]

        @invitation("consensus")
        async def accept(self, inv: Invitation) -> Any:
            return {"accept": True}

    uvloop.run(serve([Voter(f"{prefix}{i}", endpoint, heartbeat=False)
                      for i in range(count)], ready, stop))


async def serve(agents: list[Any], ready: Any, stop: Any) -> None:
    """Run SDK agents (in a bench agent process) until `stop` is set."""
    tasks = [asyncio.create_task(a.run_async()) for a in agents]
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for a in agents:
        a.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


def initiator(endpoint: str, ids: list[str], run_as: dict[str, Any], out: Any) -> None:
    """run_as["mode"] "latency": n sequential sessions after a warm-up, latencies in ms.
    "rate": `window` sessions in flight for `seconds`, groups of 5 participants."""
    mode, n, window, seconds = (run_as["mode"], run_as.get("n", 0), run_as.get("window", 1),
                                run_as.get("seconds", 0.0))
    import uvloop

    from mabeamd.client import AsyncClient

    me = f"init-{os.getpid()}"

    async def one(c: AsyncClient, who: list[str], var: str, i: int) -> None:
        r = await c.start_session(me, "consensus", participants=who, variables=[var],
                                  params={"proposal": i}, deadline=10)
        if r["state"] != "applied" or not r["result"]["passed"]:
            raise RuntimeError(f"session did not pass: {r}")

    async def run() -> Any:
        async with AsyncClient(endpoint, heartbeat=False, timeout=30) as c:
            await c.register(me)
            await c.wait_for(len(ids), capabilities=["bench-voter"], timeout=30)
            slots = max(1, window)
            for k in range(slots):
                await c.create_var(me, f"bench/{me}/{k}", None)
            if mode == "latency":
                lat: list[float] = []
                for i in range(n + 100):
                    t0 = time.perf_counter_ns()
                    await one(c, ids, f"bench/{me}/0", i)
                    if i >= 100:
                        lat.append((time.perf_counter_ns() - t0) / 1e6)
                return lat
            groups = [ids[g:g + 5] for g in range(0, len(ids), 5)]
            done = 0
            deadline = time.monotonic() + seconds

            async def loop(k: int) -> None:
                nonlocal done
                i = 0
                while time.monotonic() < deadline:
                    await one(c, groups[(k + i) % len(groups)], f"bench/{me}/{k}", i)
                    done += 1
                    i += 1

            began = time.monotonic()
            await asyncio.gather(*(loop(k) for k in range(slots)))
            return done, time.monotonic() - began

    out.put(uvloop.run(run()))


def with_agents(groups: list[tuple[Any, str, int]], fn: Any,
                agents_config: str = "max_in_flight = 1024", extra: str = "") -> Any:
    """Start a bench daemon and one process per (target, id prefix, count) group running
    `target(endpoint, prefix, count, ready, stop)`; return fn(endpoint, every agent id).
    `extra`: more config sections for the daemon."""
    d, endpoint = tcp_daemon(agents_config, extra)
    stop = CTX.Event()
    ready = [CTX.Event() for _ in groups]
    procs = [CTX.Process(target=target, args=(endpoint, prefix, count, r, stop))
             for (target, prefix, count), r in zip(groups, ready, strict=True)]
    try:
        d.start()
        for p in procs:
            p.start()
        if not all(r.wait(60) for r in ready):
            raise RuntimeError("bench agents did not start")
        return fn(endpoint, [f"{prefix}{i}" for _, prefix, count in groups
                             for i in range(count)])
    finally:
        stop.set()
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.kill()
        d.stop()
        d.cleanup()


def consensus(n: int, reps: int, seconds: float, window: int) -> list[Row]:
    def measure(endpoint: str, ids: list[str]) -> tuple[list[list[float]], list[float]]:
        lat = [run_clients(initiator, [(endpoint, ids, {"mode": "latency", "n": n})])[0]
               for _ in range(reps)]
        rates = []
        for _ in range(reps):
            done, took = run_clients(initiator, [(endpoint, ids, {
                "mode": "rate", "window": window, "seconds": seconds})])[0]
            rates.append(done / took)
        return lat, rates

    lat, rates = with_agents([(voters, "voter-", 10)], measure)
    i, spread_text = pick_median_rep(lat)
    p50, p95, p99 = summary(lat[i])
    rates.sort()
    return [
        Row("simple consensus, 10 live agents (SDK, start -> applied)", "ms",
            seed_target="< 10", goal="p95 <= 2", p50=p50, p95=p95, p99=p99,
            spread=spread_text, samples=len(lat[i]), reps=reps,
            note="each session: 10 invitations pushed, 10 answers, one WAL commit; the "
                 "voters are SDK Agents in one process"),
        Row(f"consensus sessions/s, 5 agents each ({window} in flight)", "ops/s",
            seed_target="> 10,000 requests/s", goal=">= 1,000", rate=rates[len(rates) // 2],
            spread=f"{rates[0]:,.0f}-{rates[-1]:,.0f}", reps=reps,
            note="one session = 1 start + 5 invitations + 5 answers + 1 reply on the wire, "
                 "i.e. 12 agent-side messages"),
    ]


def mechanisms(n: int, reps: int) -> list[Row]:
    """Each built-in protocol's decide() on 100 participants, in-process."""
    from mabeamd.plugins import PluginHost

    host = PluginHost()
    host.load()
    protos = host.protocols()
    ids = [f"a{i:03d}" for i in range(100)]
    parts = [{"id": a, "weight": 1 + i % 3, "priority": i % 4} for i, a in enumerate(ids)]

    def inputs(params: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"params": params, "participants": parts,
                "responses": [{"agent": a, "value": value(i), "seq": i}
                              for i, a in enumerate(ids)]}

    cases = {
        "consensus": inputs({"proposal": 1}, lambda i: {"accept": True}),
        "vote": inputs({"options": ["x", "y", "z"], "quorum": 0.5},
                       lambda i: {"vote": "xyz"[i % 3]}),
        "weighted_vote": inputs({"options": ["x", "y", "z"]},
                                lambda i: {"vote": "xyz"[i % 3]}),
        "contract_net": inputs({"score": {"cost": 1, "eta": 0.5},
                                "constraints": {"eta": {"max": 80}}, "award": 3},
                               lambda i: {"propose": {"cost": (i * 37) % 101, "eta": i}}),
        "priority": inputs({"capacity": 500, "strategy": "proportional"},
                           lambda i: {"request": 1 + i % 13}),
    }
    rows = []
    for name, data in cases.items():
        proto = protos.get(name)
        if proto is None:
            rows.append(Row(f"mechanism {name} (100 participants)", "us", status="not run",
                            note="protocol not installed"))
            continue
        runs = []
        for _ in range(reps):
            lat = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                proto.decide(data)
                lat.append((time.perf_counter_ns() - t0) / 1000)
            runs.append(lat)
        i, spread_text = pick_median_rep(runs)
        p50, p95, p99 = summary(runs[i])
        rows.append(Row(f"mechanism {name} (100 participants, offline)", "us", p50=p50,
                        p95=p95, p99=p99, spread=spread_text, samples=n, reps=reps))
    return rows
