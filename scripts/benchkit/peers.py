"""Which of the bench's peers this machine can measure, said before anything runs.

A row whose peer is missing still runs and says "not run" in its peer column; this list puts
the reasons in one place at the top of the output (and in the JSON, `peers`), with the
command that gets each, so a newcomer who runs `scripts/bench` on a fresh clone learns at
once that the Redis rows will be bare and why. The Python packages come with the `bench`
extra (`scripts/setup --bench`, which `scripts/bench` runs); the servers are system
packages.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    name: str
    rows: str  # the row groups that compare against it
    missing: str  # "" when it can run; else what is missing and how to get it


def _module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def peers() -> list[Peer]:
    from mabeamd.cluster.local import etcd_binary

    bench_extra = "scripts/setup --bench (the bench extra)"
    redis = []
    if shutil.which("redis-server") is None:
        redis.append("redis-server (apt-get install redis-server)")
    if not _module("redis"):
        redis.append(f"redis-py ({bench_extra})")
    etcd = []
    if etcd_binary() is None:
        etcd.append("etcd (apt-get install etcd-server, or set $MABEAM_ETCD)")
    if not _module("aetcd"):
        etcd.append(f"aetcd ({bench_extra})")
    return [
        Peer("Redis 7 (redis-server + redis-py)", "variables, variables at scale",
             ", ".join(redis)),
        Peer("HiGHS (scipy milp)", "economic mechanisms, winner determination",
             "" if _module("scipy") else f"scipy ({bench_extra})"),
        Peer("numpy (exchange and Fisher markets' fast paths)", "exchange market, economic "
             "mechanisms", "" if _module("numpy") else f"numpy ({bench_extra})"),
        Peer("etcd 3 members + aetcd (raw etcd)", "cluster mode, cluster simulation, "
             "cluster agent.send", ", ".join(etcd)),
    ]


def summary(found: list[Peer]) -> str:
    """One line when every peer is here; else one line per missing peer."""
    missing = [p for p in found if p.missing]
    if not missing:
        return "peers: all present (" + "; ".join(p.name for p in found) + ")"
    lines = [f"peers MISSING ({len(missing)} of {len(found)}): their rows run without them"]
    lines += [f"  - {p.name} [{p.rows}]: needs {p.missing}" for p in missing]
    return "\n".join(lines)
