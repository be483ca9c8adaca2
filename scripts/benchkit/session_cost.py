"""Where a sealed-bid auction's time goes: CPU per auction of each process (the arbiter, each
worker, the bidder processes, the auctioneer), with 1,000 live SDK bidders as in the bench's
row, and the wall time. Run from the checkout:

    .venv/bin/python scripts/benchkit/session_cost.py [--bidders 1000] [--auctions 30]
        [--shared] [--json]

On two cores, the sum of the CPU columns over two is a floor for the wall time: what the
auction's processes must do, even if nothing ever waited."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from benchkit.econ_rows import bidders, shared_bidders
from benchkit.session_rows import with_agents


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bidders", type=int, default=1000)
    ap.add_argument("--auctions", type=int, default=30)
    ap.add_argument("--shared", action="store_true", help="bidders on one client a process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    half = args.bidders // 2
    target = shared_bidders if args.shared else bidders

    def measure(endpoint: str, ids: list[str]) -> dict[str, Any]:
        import uvloop

        from mabeamd.client import AsyncClient

        me = psutil.Process()
        kids = me.children()
        daemon = next(p for p in kids if "mabeamd" in " ".join(p.cmdline()))
        workers = daemon.children()
        agents = [p for p in kids if p.pid != daemon.pid]

        async def run() -> dict[str, Any]:
            async with AsyncClient(endpoint, heartbeat=False, timeout=60) as c:
                await c.register("costs")
                await c.wait_for(len(ids), capabilities=["bench-bidder"], timeout=60)
                await c.create_var("costs", "bench/costs", None)

                async def auction(i: int) -> None:
                    r = await c.start_session("costs", "sealed_bid", participants=ids,
                                              variables=["bench/costs"], deadline=30,
                                              params={"item": i})
                    if r["state"] != "applied" or r["result"]["missing"]:
                        raise RuntimeError(f"auction {r['state']}: {r.get('reason')}")

                for i in range(5):  # warm-up: routes connect, agents attach
                    await auction(i)
                procs = {"arbiter": [daemon], **{f"worker {k}": [w] for k, w in
                                                 enumerate(workers)},
                         "bidders (2 processes)": agents, "auctioneer": [me]}
                before = {k: sum(map(cpu, ps)) for k, ps in procs.items()}
                t0 = time.perf_counter()
                for i in range(args.auctions):
                    await auction(i)
                wall = (time.perf_counter() - t0) / args.auctions
                return {"wall_ms": round(wall * 1e3, 2), "cpu_ms": {
                    k: round((sum(map(cpu, ps)) - before[k]) / args.auctions * 1e3, 2)
                    for k, ps in procs.items()}}

        out: dict[str, Any] = uvloop.run(run())
        return out

    out = with_agents([(target, f"bidder{k}-", half) for k in range(2)], measure,
                      "max_in_flight = 4096")
    out.update(bidders=args.bidders, auctions=args.auctions, shared=args.shared,
               cpus=os.cpu_count())
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.bidders} bidders ({'one shared client' if args.shared else 'a client'} "
          f"per process{'' if args.shared else ' each'}), {args.auctions} auctions")
    print(f"{'process':<24} {'CPU ms per auction':>20}")
    for k, v in out["cpu_ms"].items():
        print(f"{k:<24} {v:>20.2f}")
    total = sum(out["cpu_ms"].values())
    print(f"{'sum':<24} {total:>20.2f}   (/ {out['cpus']} cores: {total / out['cpus']:.1f})")
    print(f"{'wall ms per auction':<24} {out['wall_ms']:>20.2f}")


if __name__ == "__main__":
    main()
