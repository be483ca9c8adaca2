"""What one variable op costs a worker, with no messaging at all (issue 18: the floor under
"variable ops/s" in batches and pipelined).

    .venv/bin/python scripts/benchkit/shard_cost.py [N] [--json]

Runs the worker's real `Shard` in this process (a temp state directory, fsync never, the
segment in /dev/shm), 100 variables holding the bench's value, and times N calls of
`Shard.handle` for var.get and var.set as the shard endpoint makes them (five interleaved
repetitions, the median). Then the set again
with the segment's publish and then also the WAL append replaced by no-ops, so the
differences say what each costs (the rest is the pure variable store: checks, the new
state, the history). A worker can serve no more ops per second than 1e6 / these
microseconds per core it gets.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VALUE = {"x": 12345, "tag": "bench", "pad": "p" * 64}  # as benchkit/var_rows.py


KEYS = ("get_us", "set_us", "set_without_segment_us", "set_without_segment_and_wal_us")


def measure(n: int, reps: int = 5) -> dict[str, float]:
    """The median over `reps` interleaved repetitions of each variant."""
    sys.path[:0] = [str(ROOT)]
    from mabeamd.worker.shard import Shard

    state = Path(tempfile.mkdtemp(prefix="mabeam-cost-"))
    prefix = f"mabeam-cost-{os.getpid()}"
    try:
        shard = Shard(0, state, Path("/dev/shm"), prefix, fsync="never", history=16,
                      max_value=1 << 20, snapshot_every=10**9)
        names = [f"cost/{i}" for i in range(100)]
        for name in names:
            shard.handle("var.create", {"name": name, "value": VALUE}, "a", time.time())
        shard.commit()

        def per_op(op: str) -> float:
            bodies = [{"name": names[i % 100], "value": VALUE} if op == "var.set" else
                      {"name": names[i % 100]} for i in range(n)]
            t0 = time.perf_counter()
            for body in bodies:
                shard.handle(op, body, "a", 1.0)
            shard.commit()
            return (time.perf_counter() - t0) / n * 1e6

        segment: Any = shard.segment
        wal: Any = shard.wal
        per_op("var.set")  # warm-up: the segment's and the log's first pages
        runs: dict[str, list[float]] = {k: [] for k in KEYS}
        for _ in range(reps):  # interleaved, so a drifting machine moves every variant alike
            runs["get_us"].append(per_op("var.get"))
            runs["set_us"].append(per_op("var.set"))
            segment.put_packed = lambda name, packed: None
            runs["set_without_segment_us"].append(per_op("var.set"))
            wal.append = lambda payload: 0
            runs["set_without_segment_and_wal_us"].append(per_op("var.set"))
            del segment.put_packed, wal.append  # the class's methods again
        shard.wal.close()
        return {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for leftover in Path("/dev/shm").glob(prefix + "*"):
            leftover.unlink(missing_ok=True)


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--json"]
    got = measure(int(args[0]) if args else 20_000)
    if "--json" in sys.argv:
        print(json.dumps(got))
        return 0
    seg = got["set_us"] - got["set_without_segment_us"]
    wal = got["set_without_segment_us"] - got["set_without_segment_and_wal_us"]
    print(f"var.get                      {got['get_us']:6.1f} us")
    print(f"var.set                      {got['set_us']:6.1f} us")
    print(f"  of which segment publish   {seg:6.1f} us")
    print(f"  of which WAL append        {wal:6.1f} us")
    print(f"  the store and the rest     {got['set_without_segment_and_wal_us']:6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
