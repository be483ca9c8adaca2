"""Where a worker's restart time goes (issue 18: "restart at scale").

    .venv/bin/python scripts/benchkit/restart_cost.py [N] [--profile]

Runs the worker's real `Shard` in this process (a temp state directory, fsync never, the
segment in /dev/shm): N `var.create`s of {"n": 1}, a snapshot, close, then times opening it
again -- what a restarted worker does before it serves: the snapshot read, the WAL replay,
a `Variable` per state, the segment built from them. With --profile, the same open again
under cProfile, its top functions by internal time.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    sys.path[:0] = [str(ROOT)]
    from mabeamd.worker.shard import Shard

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 300_000
    state = Path(tempfile.mkdtemp(prefix="mabeam-restart-"))
    prefix = f"mabeam-restart-{os.getpid()}"

    def open_shard() -> Shard:
        return Shard(0, state, Path("/dev/shm"), prefix, fsync="never", history=16,
                     max_value=1 << 20, snapshot_every=10**9)

    try:
        shard = open_shard()
        t0 = time.perf_counter()
        for i in range(n):
            shard.handle("var.create", {"name": f"scale/{i}", "value": {"n": 1}}, "a", 1.0)
        shard.commit()
        print(f"{n} creates      {time.perf_counter() - t0:7.2f} s")
        t0 = time.perf_counter()
        shard.take_snapshot()
        print(f"snapshot         {time.perf_counter() - t0:7.2f} s")
        shard.close()
        t0 = time.perf_counter()
        open_shard().close()
        print(f"open (restart)   {time.perf_counter() - t0:7.2f} s")
        if "--profile" in sys.argv:
            prof = cProfile.Profile()
            prof.runcall(lambda: open_shard().close())
            pstats.Stats(prof).sort_stats("tottime").print_stats(14)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for leftover in Path("/dev/shm").glob(prefix + "*"):
            leftover.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
