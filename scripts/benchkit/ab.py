"""A/B: some of scripts/bench's rows, in the tree of the current directory, as one JSON line.

For comparing two commits on a noisy machine: check the other one out in a worktree (with
its own `scripts/setup --test`), then alternate

    (cd OLD && .venv/bin/python NEW/scripts/benchkit/ab.py vars sealed)
    (cd NEW && .venv/bin/python scripts/benchkit/ab.py vars sealed)

Each run imports the row functions of the tree it runs in (so the same figures as its
scripts/bench), one repetition each; the headline figure per row (p95, or the rate), and
p50 where there is one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

GROUPS = ("vars", "consensus", "sealed", "scale")

if __name__ == "__main__":
    sys.path.insert(0, str(Path.cwd() / "scripts"))
    from benchkit import agent_rows, econ_rows, session_rows, var_rows

    which = sys.argv[1:] or list(GROUPS)
    out: dict[str, float | None] = {}
    for w in which:
        t0 = time.monotonic()
        if w == "vars":
            rows = var_rows.variables(3000, 1, 3.0)
        elif w == "consensus":
            rows = session_rows.consensus(1000, 1, 3.0, 16)
        elif w == "sealed":
            rows = econ_rows.sealed_bid_live(40, 1, count=1000)
        elif w == "scale":
            rows = agent_rows.scale(10_000, 4, 1000, 1)
        else:
            sys.exit(f"ab.py: unknown group {w!r}; groups: {', '.join(GROUPS)}")
        for r in rows:
            d = r.to_dict()
            out[d["metric"]] = d["p95"] if d["p95"] is not None else d["rate"]
            if d["p50"] is not None:
                out[d["metric"] + " p50"] = d["p50"]
        print(f"ab.py: {w} took {time.monotonic() - t0:.0f}s", file=sys.stderr)
    print(json.dumps(out))
