"""Where a worker's memory per variable goes (issue 18: "measure where the bytes go").

    .venv/bin/python scripts/benchkit/mem_breakdown.py [N] [--json]

Runs the worker's real `Shard` in this process (a temp state directory, fsync never, the
segment in /dev/shm), creates N variables the way the shard endpoint serves `var.create`
(the request body unpacked from msgpack first, as it arrives), then reports:

- the Python heap that stays allocated, by the source line that allocated it (tracemalloc,
  after a full collection), per variable;
- the shared-memory segment per variable: its records (the public map as readers see it,
  8-byte aligned, with a 16-byte header each) and its slot table (32 bytes a slot, at most
  half full, a power of two);
- the process's USS growth per variable, for scale (it includes the segment pages this
  process touched, pymalloc's arenas and tracemalloc's own bookkeeping).

Not measured here: the arbiter (it holds no per-variable state), the WAL's page cache, and
the fragmentation a long-running worker accumulates. `scripts/bench`'s "memory per
variable" row measures the whole daemon from outside; this says which part is which.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def measure(n: int) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    import psutil

    from mabeamd.net import wire
    from mabeamd.worker.shard import Shard

    state = Path(tempfile.mkdtemp(prefix="mabeam-mem-"))
    prefix = f"mabeam-mem-{os.getpid()}"
    try:
        return _measure(n, Shard(0, state, Path("/dev/shm"), prefix, fsync="never",
                                 history=16, max_value=1 << 20, snapshot_every=10**9),
                        psutil.Process(), wire)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for leftover in Path("/dev/shm").glob(prefix + "*"):
            leftover.unlink(missing_ok=True)


def _measure(n: int, shard: Any, proc: Any, wire: Any) -> dict[str, Any]:
    bodies = [wire.pack({"name": f"scale/{i}", "value": {"n": 1}}) for i in range(n)]
    gc.collect()
    uss0 = proc.memory_full_info().uss
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    now = time.time()
    for i, body in enumerate(bodies):
        shard.handle("var.create", wire.unpack(body), "agent-1", now)
        if not i & 4095:
            shard.commit()
    shard.commit()
    del bodies
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    uss1 = proc.memory_full_info().uss
    lines: list[dict[str, Any]] = []
    for st in after.compare_to(before, "lineno"):
        if st.size_diff / n < 1:
            continue
        frame = st.traceback[0]
        where = frame.filename.replace(str(ROOT) + "/", "")
        lines.append({"where": f"{where}:{frame.lineno}", "bytes": st.size_diff / n,
                      "blocks": st.count_diff / n})
    seg = shard.segment.stats()
    slots = seg["slots"] * 32
    out = {"variables": n, "python_heap": sum(x["bytes"] for x in lines),
           "by_line": lines,
           "segment_records": seg["data_used"] / n, "segment_slots": slots / n,
           "segment_live_bytes": seg["live_bytes"] / n,
           "uss_growth": (uss1 - uss0) / n}
    shard.close()
    return out


def main(argv: list[str]) -> int:
    n = int(next((a for a in argv if a.isdigit()), "200000"))
    got = measure(n)
    if "--json" in argv:
        print(json.dumps(got, indent=1))
        return 0
    print(f"{n:,} variables with the value {{'n': 1}}, created through Shard.handle:")
    print(f"  Python heap kept        {got['python_heap']:7.0f} B/var (tracemalloc), of which:")
    for x in got["by_line"]:
        print(f"    {x['bytes']:7.1f} B  {x['blocks']:4.2f} blocks  {x['where']}")
    print(f"  segment records         {got['segment_records']:7.0f} B/var "
          f"({got['segment_live_bytes']:.0f} B of it the public map itself)")
    print(f"  segment slot table      {got['segment_slots']:7.0f} B/var")
    print(f"  USS growth (for scale)  {got['uss_growth']:7.0f} B/var")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
