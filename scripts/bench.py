"""mabeamd benchmark: starts real daemons in temp dirs, drives them from separate processes,
measures peers in the same run, prints one table and writes bench-results.json.

    scripts/bench            full run (each latency row: >= 1,000 samples x 3 repetitions)
    scripts/bench --quick    the same rows, smaller and one repetition each, in under a
                             minute (the tests run it to prove the harness works; they check
                             no thresholds)
    scripts/bench --only variables [--only control ...]
                             only the row groups whose name starts with one of the prefixes
                             (the names `bench: NAME ...` prints; --list shows them; '-' and
                             ' ' are the same: --only cluster-sim)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import uvloop
import zmq

from benchkit import (
    Row,
    agent_rows,
    batch_rows,
    cluster_rows,
    cluster_send_rows,
    cluster_sim,
    console_rows,
    core_rows,
    econ_rows,
    flood_rows,
    market_rows,
    message_rows,
    peers,
    scale_rows,
    session_rows,
    var_rows,
    voting_rows,
    wdp_rows,
)
from benchkit.stats import fmt
from mabeamd import __version__
from mabeamd.testing import Daemon


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "uvloop": uvloop.__version__,
        "mabeamd": __version__,
    }


def headline(r: Row) -> str:
    if r.status != "ok":
        return "not run"
    if r.rate is not None:
        return f"{fmt(r.rate)} {r.unit}"
    return f"{fmt(r.p50)} / {fmt(r.p95)} / {fmt(r.p99)} {r.unit}"


def render(rows: list[Row]) -> str:
    headers = ["metric", "seed target", "our goal", "p50 / p95 / p99 or rate", "spread (reps)",
               "peer (same run)", "peer", "ratio", "n"]
    table = []
    for r in rows:
        table.append([r.metric, r.seed_target, r.goal, headline(r), r.spread,
                      r.peer, fmt(r.peer_value), f"{r.ratio:.2f}x" if r.ratio else "-",
                      f"{r.samples}x{r.reps}" if r.samples else "-"])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    notes = [f"- {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(lines) + "\n\nnotes:\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run, under a minute")
    p.add_argument("--out", default="bench-results.json", help="JSON output file")
    p.add_argument("--only", action="append", default=[], metavar="PREFIX",
                   help="run only the row groups whose name starts with PREFIX (repeatable; "
                        "case-insensitive; '-' and ' ' match each other)")
    p.add_argument("--list", action="store_true", help="print the row groups' names and exit")
    args = p.parse_args(argv)

    q = args.quick
    reps = 1 if q else 3  # quick proves the harness works; spawning processes is its cost
    plan: list[tuple[str, Callable[[], Row | list[Row]]]] = []
    daemon = Daemon(core_rows.BENCH_CONFIG, raw_config=True)
    plan += [
        ("control latency", lambda: core_rows.control_latency(daemon, 1000 if q else 5000, reps)),
        ("control rate", lambda: core_rows.control_rate(daemon, 1.0 if q else 3.0, reps)),
        ("start to READY", lambda: core_rows.start_to_ready(2 if q else 10, reps)),
        ("restart latency", lambda: core_rows.restart_latency(3 if q else 20, reps)),
        ("agent registration", lambda: agent_rows.registration(1000 if q else 3000, reps)),
        ("agents at scale",
         lambda: agent_rows.scale(2000 if q else 10_000, 4, 200 if q else 1000, reps)),
        ("rate-limit isolation",
         lambda: flood_rows.flood(3 if q else 9, 200 if q else 600)),
        # agent.send between agents in separate processes, against a raw pyzmq relay
        ("agent messages", lambda: message_rows.rows(2000 if q else 20_000, 4,
                                                     300 if q else 1000, reps,
                                                     warmup=50 if q else 200)),
        ("variables", lambda: var_rows.variables(1000 if q else 3000, reps, 1.0 if q else 3.0)),
        ("variable transports",
         lambda: var_rows.transports(1000 if q else 3000, reps)),
        ("variable batches", lambda: batch_rows.batches(reps, 1.0 if q else 3.0)),
        ("metrics overhead",
         lambda: var_rows.metrics_overhead(300 if q else 3000, reps, 0.5 if q else 3.0)),
        ("variables at scale",
         lambda: scale_rows.million_variables(5_000 if q else 1_000_000,
                                              1000 if q else 3000, reps)),
        ("consensus sessions",
         lambda: session_rows.consensus(100 if q else 1000, reps, 0.5 if q else 3.0, 16)),
        ("protocol mechanisms", lambda: session_rows.mechanisms(200 if q else 1000, reps)),
        # the web console in headless Chromium (not run without chromium + selenium)
        ("web console", lambda: console_rows.rows(200 if q else 1000, 3 if q else 20,
                                                  3 if q else 20, reps)),
        ("sealed-bid, live bidders",
         lambda: econ_rows.sealed_bid_live(3 if q else 40, 1 if q else reps,
                                           count=100 if q else 1000)),
        ("economic mechanisms", lambda: econ_rows.mechanisms(30 if q else 1000,
                                                             1 if q else reps,
                                                             fisher=2 if q else 20)),
        ("exchange market", lambda: market_rows.exchange(2 if q else 20, 1 if q else reps)),
        ("voting rules", lambda: voting_rows.rules(2 if q else 20, 1 if q else reps,
                                                   voters=100 if q else 1000)),
        # generated CATS-style instances, one row per distribution, scipy milp as the peer
        ("winner determination",
         lambda: wdp_rows.rows(30 if q else 100, 100 if q else 500, 2 if q else 10)),
        # 3 etcd members + 3 nodes x 1 worker (skipped with a note without etcd or aetcd).
        ("cluster mode",
         lambda: cluster_rows.cluster(300 if q else 1000, reps,
                                      cas_seconds=1.0 if q else 3.0,
                                      lag_writes=50 if q else 200,
                                      variables=200 if q else 1000,
                                      warmup=100 if q else 200)),
        # docs/cluster.md's capacity model against 3 etcd members: simulated nodes and
        # agents (aetcd clients, no daemons), N x A cells under a fixed write load.
        ("cluster simulation",
         lambda: cluster_sim.simulate(cluster_sim.QUICK if q else cluster_sim.SimPlan())),
        # The same set-up again: agent.send across nodes, on one node, and on a single node.
        ("cluster agent.send",
         lambda: cluster_send_rows.send_rows(100 if q else 500, reps, warmup=20 if q else 50)),
    ]
    if args.list:
        print("\n".join(name for name, _ in plan))
        return 0
    if args.only:
        def norm(text: str) -> str:
            return text.lower().replace("-", " ")

        wanted = tuple(norm(w) for w in args.only)
        plan = [(name, fn) for name, fn in plan if norm(name).startswith(wanted)]
        if not plan:
            p.error(f"--only {' '.join(args.only)}: no row group starts with that "
                    "(--list shows them)")
    # The shared daemon serves the control rows only: not started when they are not run.
    needs_daemon = any(name.startswith("control ") for name, _ in plan)
    found = peers.peers()
    said = peers.summary(found)
    print(f"bench: {said}", file=sys.stderr, flush=True)  # before the run, not just after
    started = time.monotonic()
    rows: list[Row] = []
    try:
        if needs_daemon:
            daemon.start()
        for name, fn in plan:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                produced = fn()
                rows += produced if isinstance(produced, list) else [produced]
            except Exception as exc:  # a broken row is reported, never invented
                rows.append(Row(name, "-", status="not run", note=f"failed: {exc!r}"))
            print(f"bench: {name} took {time.monotonic() - t0:.1f}s", file=sys.stderr,
                  flush=True)
        daemon.stop()
    finally:
        daemon.cleanup()

    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "only": args.only,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "peers": [{"name": x.name, "rows": x.rows, "missing": x.missing or None}
                  for x in found],
        "rows": [r.to_dict() for r in rows],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    only = f" (only {', '.join(args.only)})" if args.only else ""
    print(f"mabeamd {__version__} benchmark{' (quick)' if q else ''}{only}, {result['date']}: "
          f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, pyzmq {m['pyzmq']} / "
          f"libzmq {m['libzmq']}, msgpack {m['msgpack']}")
    print(said + "\n")
    print(render(rows))
    print(f"\nwrote {args.out} ({result['seconds']}s)")
    failed = [r for r in rows if r.note.startswith("failed:")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
