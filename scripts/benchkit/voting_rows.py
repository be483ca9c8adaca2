"""Benchmark rows: ranked_vote and approval_vote decided offline (decide_typed, as in a
session) at 1,000 voters x 10 options, one row per method / rule."""

from __future__ import annotations

import random
from typing import Any

from benchkit import Row
from benchkit.econ_rows import _row, _timed


def rules(n: int, reps: int, voters: int = 1000, options: int = 10) -> list[Row]:
    from mabeam_voting.approval import ApprovalVote
    from mabeam_voting.ranked import RankedVote
    from mabeamd.protocol import Participant, Response

    rng = random.Random(7)
    opts = [f"o{i}" for i in range(options)]
    ids = [f"v{i:04d}" for i in range(voters)]
    ps = [Participant.from_dict({"id": a}) for a in ids]

    def ballots(make: Any) -> list[Response]:
        return [Response.from_dict({"agent": a, "value": make(), "seq": k}, 0)
                for k, a in enumerate(ids)]

    # full or truncated rankings (4..10 options), random order
    ranked = ballots(lambda: {"ranking": rng.sample(opts, rng.randint(4, options))})
    approvals = ballots(lambda: {"approve": rng.sample(opts, rng.randint(1, 4))})
    rows = []
    rv = RankedVote()
    for method in ("borda", "copeland", "schulze", "irv", "condorcet"):
        params = rv.check_params({"options": opts, "method": method})
        runs, _ = _timed(lambda k, p=params: rv.decide_typed(p, ps, ranked), n, reps)
        rows.append(_row(f"ranked_vote {method}, {voters:,} voters x {options} options",
                         "ms", runs, note="decide_typed; rankings of 4-10 options"))
    av = ApprovalVote()
    for rule in ("approval", "pav", "seq_pav"):
        params = av.check_params({"options": opts, "seats": 3, "rule": rule})
        runs, _ = _timed(lambda k, p=params: av.decide_typed(p, ps, approvals), n, reps)
        rows.append(_row(f"approval_vote {rule} 3 seats, {voters:,} voters x {options} "
                         "options", "ms", runs,
                         note="decide_typed; 1-4 approvals each"
                              + ("; all 120 committees enumerated" if rule == "pav" else "")))
    return rows
