"""The capacity model of docs/cluster.md ("Limits, and where one etcd cluster ends") checked
for its slopes, not only its intercepts, against a real 3-member etcd on loopback
(`cluster/local.py` LocalEtcd), without mabeamd daemons:

- simulated nodes, all in one process (`nodes_main`): each one aetcd client of its own (its
  own gRPC connections), a lease kept alive every TTL/3 with a membership key on it
  (nodes/NODE), a watch on the shared vars/ prefix (a node's workers watch one prefix per
  shard: each write reaches one watcher per node either way) and one on agents/ (a node's
  arbiter follows the directory);
- simulated agents: directory keys agents/ID on their node's lease, put as the arbiter's
  Directory.claim puts them (one create-only transaction each), with a record of the shape
  it puts;
- a fixed write load from this process: `rate` writes/s of VALUE_BYTES-byte values over
  `variables` keys vars/SHARD/NAME, each a transaction comparing the key's mod_revision
  then putting (what a cluster write is), paced open loop, bounded in count and time.

For each N (nodes) and, with those nodes up, for each A (agents, registered in steps), it
measures etcd's keys and bytes, the Raft proposals (the members' own counters), keepalives,
the watch events delivered, the writes' latency and the etcd members' CPU (psutil), and sets
each beside what the model predicts; then fits the slopes over the cells. Everything is
stopped at the end (nodes: their leases revoked, so their agents go too).

    .venv/bin/python scripts/benchkit/cluster_sim.py bench-results.json
                             the doc's tables (markdown) from a bench run's JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import msgpack

if __name__ == "__main__":  # run as a script: benchkit is scripts/benchkit
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchkit import Row
from benchkit.cluster_simnodes import (
    REG_IN_FLIGHT,
    SHARDS,
    Nodes,
    sim_client,
    sim_keys,
    write_value,
)
from benchkit.stats import fmt, summary

IN_FLIGHT = 64  # the writer's bound on outstanding writes


@dataclass(frozen=True)
class SimPlan:
    # Not in ascending order: a machine that drifts during the run (its load does, here)
    # must not pass for a slope on N.
    nodes: tuple[int, ...] = (1, 8, 2, 4)
    agents: tuple[int, ...] = (100, 1000, 5000)  # ascending: registered in steps
    variables: int = 1000
    rate: float = 200.0  # writes/s
    seconds: float = 6.0  # each write window
    ttl: int = 3  # the nodes' lease TTL: keepalives every second, countable in a window


QUICK = SimPlan(nodes=(1, 4, 2), agents=(100, 500), variables=200, rate=100.0, seconds=2.0)


METRICS = (
    ("proposals", "etcd_server_proposals_committed_total", ""),
    ("events", "etcd_debugging_mvcc_events_total", ""),
    ("keys", "etcd_debugging_mvcc_keys_total", ""),
    ("db", "etcd_mvcc_db_total_size_in_bytes", ""),
    ("db_in_use", "etcd_mvcc_db_total_size_in_use_in_bytes", ""),
    ("renewed", "etcd_debugging_lease_renewed_total", ""),
    ("keepalive_msgs", "grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"'),
    ("watch_msgs", "grpc_server_msg_sent_total", 'grpc_service="etcdserverpb.Watch"'),
    ("slow_watchers", "etcd_debugging_mvcc_slow_watcher_total", ""),
)


def scrape(endpoint: str) -> dict[str, float]:
    """The METRICS of one member's /metrics (each summed over its label sets)."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = dict.fromkeys((f for f, _, _ in METRICS), 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for figure, metric, label in METRICS:
            if name == metric and label in line:
                out[figure] += float(line.rsplit(" ", 1)[1])
    return out


def scrape_all(endpoints: list[str]) -> list[dict[str, float]]:
    return [scrape(e) for e in endpoints]


def delta(after: list[dict[str, float]], before: list[dict[str, float]],
          figure: str) -> list[float]:
    return [a[figure] - b[figure] for a, b in zip(after, before, strict=True)]


def cpu_seconds(pids: list[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        out.append(t.user + t.system)
    return out


async def _write_load(etcd: Any, keys: list[bytes], revs: dict[bytes, int], *, cell: int,
                      rate: float, count: int) -> dict[str, Any]:
    """`count` writes at `rate`/s, open loop (each starts at its time, IN_FLIGHT at most
    outstanding), key i % len(keys): a transaction comparing the mod_revision this process
    last saw, then putting (a lost compare takes the current revision from the failure
    branch). Stops scheduling after twice the planned time; waits 30 s at most for the
    outstanding ones."""
    tx = etcd.transactions
    sem = asyncio.Semaphore(IN_FLIGHT)
    lat: list[float] = []
    lost = errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal lost, errors
        k = keys[i % len(keys)]
        try:
            t0 = time.perf_counter_ns()
            won, answers = await etcd.transaction(
                compare=[tx.mod(k) == revs[k]],
                success=[tx.put(k, write_value(cell, i, t0))], failure=[tx.get(k)])
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            if won:
                revs[k] = answers[0].response_put.header.revision
            else:
                lost += 1
                revs[k] = answers[0][0][1].mod_revision
        except Exception:
            errors += 1
        finally:
            sem.release()

    start = time.perf_counter()
    limit = start + 2 * count / rate + 5
    scheduled = 0
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() > limit:
            break
        await sem.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        scheduled += 1
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    took = time.perf_counter() - start
    won = len(lat) - lost
    p50, p95, p99 = summary(lat) if lat else (0.0, 0.0, 0.0)
    return {"scheduled": scheduled, "acked": len(lat), "won": won, "lost": lost,
            "errors": errors, "seconds": took, "rate": len(lat) / took,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "lat": lat}


async def _usage(etcd: Any) -> dict[str, Any]:
    """Keys and key+value bytes under /mabeamd/sim/, by kind."""
    keys = sim_keys()
    got = await etcd.get_prefix(keys.root)
    out: dict[str, Any] = {"keys": 0, "agents": 0, "agent_bytes": 0, "nodes": 0,
                           "node_bytes": 0, "vars": 0, "var_bytes": 0, "other": 0}
    for kv in got.kvs:
        kind = kv.key[len(keys.root):].split(b"/", 1)[0].decode()
        size = len(kv.key) + len(kv.value)
        out["keys"] += 1
        if kind in ("agents", "nodes", "vars"):
            out[kind] += 1
            out[kind[:-1] + "_bytes"] += size
        else:
            out["other"] += 1
    return out


async def _setup(etcd: Any, variables: int) -> tuple[list[bytes], dict[bytes, int]]:
    """The config key and the variables (VALUE_BYTES each), created before any node."""
    import secrets

    keys = sim_keys()
    await etcd.put(keys.config, msgpack.packb({"shards": SHARDS, "by": "sim",
                                               "token": secrets.token_hex(16)}))
    names = [keys.var(i % SHARDS, f"v{i}") for i in range(variables)]
    revs: dict[bytes, int] = {}
    sem = asyncio.Semaphore(REG_IN_FLIGHT)

    async def create(k: bytes) -> None:
        async with sem:
            revs[k] = (await etcd.put(k, write_value(-1, 0, 0))).header.revision

    await asyncio.wait_for(asyncio.gather(*(create(k) for k in names)), 120)
    return names, revs


class Simulation:
    """The coordinator: the etcd cluster, its own client (the writer), and the cells."""

    def __init__(self, plan: SimPlan, cluster: Any) -> None:
        self.plan = plan
        self.cluster = cluster
        self.eps: list[str] = cluster.endpoints
        self.pids = [m.proc.pid for m in cluster.members]
        self.cells: list[dict[str, Any]] = []
        self.regs: list[dict[str, Any]] = []
        self.names: list[bytes] = []
        self.revs: dict[bytes, int] = {}

    async def run(self) -> dict[str, Any]:
        etcd = sim_client(self.eps)
        await etcd.connect()
        try:
            self.names, self.revs = await _setup(etcd, self.plan.variables)
            base = await _usage(etcd)
            for n in self.plan.nodes:
                nodes = Nodes(self.eps, n, self.plan.ttl)
                try:
                    await nodes.ready()
                    await self.stage(etcd, nodes, n)
                finally:
                    await asyncio.to_thread(nodes.stop)
            after = await _usage(etcd)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(etcd.close(), 5)
        return {"cells": self.cells, "registrations": self.regs, "base": base,
                "after": after}

    async def stage(self, etcd: Any, nodes: Nodes, n: int) -> None:
        """N nodes up: for each A, register the agents that make it A, then a write window."""
        have = 0
        for a in self.plan.agents:
            m0 = await asyncio.to_thread(scrape_all, self.eps)
            reg = await nodes.call("register", have, a - have)
            await asyncio.sleep(0.3)  # etcd's backend commits every 100 ms
            m1 = await asyncio.to_thread(scrape_all, self.eps)
            reg.update(nodes=n, agents_before=have, agents=a,
                       proposals=max(delta(m1, m0, "proposals")),
                       db_in_use=delta(m1, m0, "db_in_use"), db=delta(m1, m0, "db"))
            self.regs.append(reg)
            have = a
            usage = await _usage(etcd)
            self.cells.append(await self.window(etcd, nodes, n, a, usage=usage, reg=reg))

    async def window(self, etcd: Any, nodes: Nodes, n: int, a: int, *,
                     usage: dict[str, Any], reg: dict[str, Any]) -> dict[str, Any]:
        import psutil

        plan, eps, pids, cell = self.plan, self.eps, self.pids, len(self.cells)
        leader = await asyncio.to_thread(self.cluster.leader)
        load = os.getloadavg()[0]
        m0 = await asyncio.to_thread(scrape_all, eps)
        procs = [*pids, nodes.proc.pid, os.getpid()]
        cpu0 = cpu_seconds(procs)
        t0 = time.perf_counter()
        t0_ns = time.perf_counter_ns()
        w = await _write_load(etcd, self.names, self.revs, cell=cell, rate=plan.rate,
                              count=round(plan.rate * plan.seconds))
        t1_ns = time.perf_counter_ns()
        cpu1 = cpu_seconds(procs)
        span = time.perf_counter() - t0
        m1 = await asyncio.to_thread(scrape_all, eps)
        got = await nodes.call("end", cell, w["acked"], t0_ns, t1_ns, timeout=30)
        cpu = [(y - x) / span * 100 for x, y in zip(cpu0, cpu1, strict=True)]
        events = sum(got["events"])
        del w["lat"]
        model = {"keys": plan.variables + a + n + 1, "events_s": w["rate"] * n,
                 "keepalives_s": n * 3 / plan.ttl,
                 "proposals_s": w["rate"] + n * 3 / plan.ttl,
                 "dir_events_per_reg": n}
        proposals = max(delta(m1, m0, "proposals"))
        k = len(pids)
        return {
            "cell": cell, "nodes": n, "agents": a, "load": load, "leader": leader,
            "keys": usage["keys"], "keys_server": m1[leader or 0]["keys"],
            "agent_bytes": usage["agent_bytes"], "node_bytes": usage["node_bytes"],
            "var_bytes": usage["var_bytes"], "write": w,
            "events": events, "events_s": events / w["seconds"],
            "events_per_write": events / max(1, w["acked"]),
            "events_server": sum(delta(m1, m0, "events")),
            "watch_msgs": sum(delta(m1, m0, "watch_msgs")),
            "slow_watchers": max(x["slow_watchers"] for x in m1),
            "nodes_got": got,
            "keepalives_s": got["keepalives"] / w["seconds"],
            "renewed_s": sum(delta(m1, m0, "renewed")) / span,
            "keepalive_msgs_s": sum(delta(m1, m0, "keepalive_msgs")) / span,
            "proposals_s": proposals / span, "proposals_minus_writes": proposals - w["acked"],
            "cpu_members": cpu[:k], "cpu_leader": cpu[leader] if leader is not None else None,
            "cpu_etcd": sum(cpu[:k]), "cpu_nodes": cpu[k], "cpu_writer": cpu[k + 1],
            "span_s": span,
            "reg": {x: reg[x] for x in ("count", "seconds", "p50_ms", "p95_ms", "refused",
                                        "dir_events", "proposals")},
            "dir_events_per_reg": reg["dir_events"] / max(1, reg["count"]),
            "memory_mib": [psutil.Process(p).memory_info().rss / 2**20 for p in pids],
            "model": model,
        }


# --- fits and rows -------------------------------------------------------------------------


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def slope_se(xs: list[float], ys: list[float]) -> float:
    """The standard error of fit()'s slope (0 with fewer than three points)."""
    n = len(xs)
    if n < 3:
        return 0.0
    slope, intercept = fit(xs, ys)
    mx = sum(xs) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    ssr = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))
    return float((ssr / (n - 2) / sxx) ** 0.5) if sxx else 0.0


def fit_within(cells: list[dict[str, Any]], x: str, y: Any, by: str) -> tuple[float, float]:
    """The mean of the slopes (and intercepts) of y on x fitted within each value of `by`
    (e.g. keys on agents at each node count); y: a key or a function of the cell."""
    get = y if callable(y) else (lambda c: c[y])
    fits = []
    for g in sorted({c[by] for c in cells}):
        group = [c for c in cells if c[by] == g]
        if len({c[x] for c in group}) > 1:
            fits.append(fit([c[x] for c in group], [get(c) for c in group]))
    if not fits:
        return 0.0, 0.0
    return sum(f[0] for f in fits) / len(fits), sum(f[1] for f in fits) / len(fits)


def _slope_row(metric: str, unit: str, fitted: tuple[float, float],
               model: tuple[float | None, str], note: str, **extra: Any) -> Row:
    """A fitted (slope, intercept) beside the model's slope (value or None, and its text)."""
    slope, intercept = fitted
    value, text = model
    return Row(metric, unit, rate=slope, samples=extra.pop("cells", 0), reps=1,
               peer=text, peer_value=value, ratio=slope / value if value else None,
               note=f"{note}; fitted intercept {fmt(intercept)}",
               extra={"slope": slope, "intercept": intercept, "model": value, **extra})


def slope_rows(plan: SimPlan, cells: list[dict[str, Any]],
               regs: list[dict[str, Any]]) -> list[Row]:
    k = len(cells)
    per_ka = 3 / plan.ttl
    nodes = [c["nodes"] for c in cells]
    keys_model = (1.0, "model: keys = V + A + N + 1")
    agent_model = (150.0, "model: about 150 B + its metadata")
    steps = [r for r in regs if r["count"] > 0]
    backend = [sorted(r["db_in_use"])[1] for r in steps]  # the median member
    registered = sum(r["count"] for r in steps)
    reg_props = sum(r["proposals"] for r in steps) / max(1, registered)
    ka_server = fit(nodes, [c["renewed_s"] for c in cells])
    per_write = fit(nodes, [c["events_per_write"] for c in cells])[0]
    p95s = [c["write"]["p95_ms"] for c in cells]
    p50s = [c["write"]["p50_ms"] for c in cells]
    p50 = fit(nodes, p50s)
    leader = [c["cpu_leader"] or 0.0 for c in cells]
    members = [c["cpu_etcd"] for c in cells]
    client = [c["cpu_nodes"] for c in cells]
    cpu_all = fit(nodes, members)
    all_props = fit(nodes, [c["proposals_s"] for c in cells])
    extra_p = ", ".join(str(round(c["proposals_minus_writes"])) for c in cells)
    return [
        _slope_row("cluster sim: etcd keys per agent", "keys",
                   fit_within(cells, "agents", "keys", "nodes"), keys_model,
                   "slope of the keys under /mabeamd/sim/ on A, within each N", cells=k),
        _slope_row("cluster sim: etcd keys per node", "keys",
                   fit_within(cells, "nodes", "keys", "agents"), keys_model,
                   f"slope on N within each A (the intercept is V + A + 1, V = "
                   f"{plan.variables:,})", cells=k),
        _slope_row("cluster sim: etcd bytes per agent (key + value)", "B",
                   fit_within(cells, "agents", "agent_bytes", "nodes"), agent_model,
                   "slope of the agents/ keys' key + value bytes on A; each record with empty "
                   "metadata and one capability", cells=k),
        _slope_row("cluster sim: etcd backend bytes per agent (db in use)", "B",
                   fit([r["count"] for r in steps], backend), agent_model,
                   "slope of the growth of etcd_mvcc_db_total_size_in_use_in_bytes (the median "
                   "member) over each registration step on the agents it registered: bbolt "
                   "pages holding the revision (key, value, lease, revisions); whole pages, "
                   "so coarse", cells=len(steps), steps=backend),
        _slope_row("cluster sim: etcd bytes per node (membership key + value)", "B",
                   fit_within(cells, "nodes", "node_bytes", "agents"),
                   (None, "model: one key per node (no size)"),
                   "slope of the nodes/ keys' bytes on N; and one lease each (etcd's lease "
                   "bucket, not a key); a node's backend growth is below a page here, not "
                   "measured", cells=k),
        _slope_row("cluster sim: keepalives/s per node", "/s",
                   fit(nodes, [c["keepalives_s"] for c in cells]),
                   (per_ka, f"model: N / (TTL/3), TTL {plan.ttl} s"),
                   f"keepalives the nodes had confirmed in the write windows; etcd's own count "
                   f"(lease_renewed_total, all members): {ka_server[0]:.3f}/s per node, "
                   f"intercept {ka_server[1]:.2f}", cells=k, server=ka_server[0]),
        _slope_row("cluster sim: Raft proposals/s besides the writes, per node", "/s",
                   fit(nodes, [c["proposals_minus_writes"] / c["span_s"] for c in cells]),
                   (per_ka, "model: N / (TTL/3) (the keepalives counted as proposals)"),
                   f"(committed proposals - acknowledged writes) / window, on N (etcd's "
                   f"counter, the leader's); per window: {extra_p}; all proposals/s at W = "
                   f"{fmt(plan.rate)}/s: {all_props[0]:+.2f} per node from "
                   f"{fmt(all_props[1])}", cells=k),
        Row("cluster sim: Raft proposals per registration", "proposals", rate=reg_props,
            samples=len(steps), reps=1, peer="model: one per registration", peer_value=1.0,
            ratio=reg_props, note=f"committed proposals over the registration steps / the "
                                  f"agents they registered ({registered:,}, {REG_IN_FLIGHT} "
                                  "in flight), the keepalives meanwhile included"),
        _slope_row("cluster sim: watch events/s per node", "events/s",
                   fit(nodes, [c["events_s"] for c in cells]),
                   (plan.rate, f"model: W x N, W = {fmt(plan.rate)}/s"),
                   f"events the nodes received for each window's writes / the window; per "
                   f"acknowledged write: {per_write:.3f} per node", cells=k),
        _slope_row("cluster sim: directory events per registration, per node", "events",
                   fit(nodes, [c["dir_events_per_reg"] for c in cells]),
                   (1.0, "model: every registration to N arbiters"),
                   "agents/ PUT events the nodes received per registration", cells=k),
        _slope_row("cluster sim: write p95 per node", "ms", fit(nodes, p95s),
                   (None, "model: none"),
                   f"slope of the writes' p95 on N at W = {fmt(plan.rate)}/s, standard error "
                   f"{slope_se(nodes, p95s):.2f}; of the p50: {p50[0]:+.3f} ms per node "
                   f"(standard error {slope_se(nodes, p50s):.3f}) from {fmt(p50[1])} ms",
                   cells=k, se=slope_se(nodes, p95s)),
        _slope_row("cluster sim: etcd leader CPU per node", "% of a core", fit(nodes, leader),
                   (None, "model: none"),
                   f"psutil on the leader's process over each write window, standard error "
                   f"{slope_se(nodes, leader):.2f}; the three members together: "
                   f"{cpu_all[0]:+.2f}% per node (standard error "
                   f"{slope_se(nodes, members):.2f}) from {fmt(cpu_all[1])}%, i.e. "
                   f"{cpu_all[0] / 100 / plan.rate * 1e6:.0f} +- "
                   f"{slope_se(nodes, members) / 100 / plan.rate * 1e6:.0f} us of etcd CPU "
                   "per event delivered",
                   cells=k, se=slope_se(nodes, leader)),
        _slope_row("cluster sim: simulated nodes' CPU per node", "% of a core",
                   fit(nodes, client), (None, "model: none"),
                   f"psutil on the nodes' process (aetcd watch streams decoded in Python, "
                   f"keepalives) over each write window, standard error "
                   f"{slope_se(nodes, client):.2f}: "
                   f"{fit(nodes, client)[0] / 100 / plan.rate * 1e6:.0f} us per event received "
                   "(each node receives all W events/s)", cells=k),
    ]


def cell_row(c: dict[str, Any]) -> Row:
    m, w, got = c["model"], c["write"], c["nodes_got"]
    trouble = "".join(f", {w[k]} {what}" for k, what in (("lost", "lost compares"),
                                                            ("errors", "errors")) if w[k])
    return Row(
        f"cluster sim, N={c['nodes']} nodes, A={c['agents']:,} agents: watch events/s",
        "events/s", rate=c["events_s"], samples=w["acked"], reps=1,
        peer="model: W x N (W as achieved)", peer_value=m["events_s"],
        ratio=c["events_s"] / m["events_s"] if m["events_s"] else None,
        note=(f"keys {c['keys']:,} (model {m['keys']:,}); writes {w['rate']:.1f}/s, p50 / p95 "
              f"/ p99 {w['p50_ms']:.2f} / {w['p95_ms']:.2f} / {w['p99_ms']:.2f} ms{trouble}; "
              f"keepalives {c['keepalives_s']:.2f}/s (model {m['keepalives_s']:.2f}); "
              f"Raft proposals {c['proposals_s']:.1f}/s (model {m['proposals_s']:.1f}); "
              f"directory events per registration {c['dir_events_per_reg']:.2f} (model "
              f"{m['dir_events_per_reg']}); event lag from the write's send p50 / p95 "
              f"{got['lag_p50_ms']:.2f} / {got['lag_p95_ms']:.2f} ms; leader CPU "
              f"{fmt(c['cpu_leader'])}%, 3 members {fmt(c['cpu_etcd'])}%, nodes' process "
              f"{fmt(c['cpu_nodes'])}%; load {c['load']:.1f}"),
        extra=c)


def why_not() -> str:
    from benchkit.cluster_rows import why_not as cluster_why_not

    return cluster_why_not()


def simulate(plan: SimPlan) -> list[Row]:
    """Every row of the simulation: one per (N, A) cell, then the fitted slopes."""
    why = why_not()
    if why:
        return [Row("cluster sim", "-", status="not run", note=why)]
    import uvloop

    from mabeamd.cluster.local import LocalEtcd
    from mabeamd.testing import short_tmpdir

    etcd = LocalEtcd(short_tmpdir() / "etcd", size=3)
    try:
        etcd.start()
        got = uvloop.run(Simulation(plan, etcd).run())
    finally:
        etcd.stop()
    cells = got["cells"]
    if got["after"]["keys"] != got["base"]["keys"]:
        raise RuntimeError(f"{got['after']['keys']} keys left after the nodes left, "
                           f"{got['base']['keys']} before they came")
    rows = [cell_row(c) for c in cells]
    rows += slope_rows(plan, cells, got["registrations"])
    rows[-1].extra["plan"] = plan.__dict__
    rows[-1].extra["registrations"] = got["registrations"]
    return rows


# --- the doc's tables ----------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]]) -> str:
    """The cells and the slopes as markdown tables, from a bench JSON's rows."""
    cells = [r["extra"] for r in rows if r["metric"].startswith("cluster sim, ")]
    slopes = [r for r in rows if r["metric"].startswith("cluster sim: ")]
    out = ["| N | A | keys (model) | writes/s | write p50 / p95 ms | watch events/s (model "
           "W x N) | event lag p50 / p95 ms | keepalives/s (model) | Raft proposals/s "
           "(model) | directory events per registration (model) | registrations/s | etcd "
           "leader CPU | 3 members' CPU | nodes' process CPU | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        m, w, got = c["model"], c["write"], c["nodes_got"]
        out.append(
            f"| {c['nodes']} | {c['agents']:,} | {c['keys']:,} ({m['keys']:,}) | "
            f"{w['rate']:.1f} | {w['p50_ms']:.2f} / {w['p95_ms']:.2f} | "
            f"{c['events_s']:,.0f} ({m['events_s']:,.0f}) | "
            f"{got['lag_p50_ms']:.2f} / {got['lag_p95_ms']:.2f} | "
            f"{c['keepalives_s']:.2f} ({m['keepalives_s']:.2f}) | "
            f"{c['proposals_s']:.1f} ({m['proposals_s']:.1f}) | "
            f"{c['dir_events_per_reg']:.2f} ({m['dir_events_per_reg']}) | "
            f"{c['reg']['count'] / c['reg']['seconds']:,.0f} | "
            f"{fmt(c['cpu_leader'])}% | {fmt(c['cpu_etcd'])}% | {fmt(c['cpu_nodes'])}% | "
            f"{c['load']:.1f} |")
    out += ["", "| slope | measured | model | measured / model | fitted intercept |",
            "|---|---|---|---|---|"]
    for r in slopes:
        x = r["extra"]
        if "slope" not in x:  # a ratio, not a fit
            x = {"slope": r["rate"], "intercept": None, "model": r["peer_value"]}
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        se = f" ± {x['se']:.2g}" if x.get("se") else ""
        out.append(f"| {r['metric'].removeprefix('cluster sim: ')} | {x['slope']:.3g}{se} "
                   f"{r['unit']} | {r['peer'].removeprefix('model: ')} | {ratio} | "
                   f"{fmt(x['intercept'])} |")
    return "\n".join(out)


if __name__ == "__main__":
    import json

    print(markdown(json.loads(Path(sys.argv[1]).read_text())["rows"]))
