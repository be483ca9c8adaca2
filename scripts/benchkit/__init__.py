"""scripts/bench's building blocks: statistics, load generators, peers and result rows.

Every figure comes from a measurement in the same run; a row that cannot be measured says
"not run" and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    metric: str
    unit: str  # "us", "ms", "ops/s", "KiB", ...
    seed_target: str = "-"
    goal: str = "-"
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    rate: float | None = None
    spread: str = "-"  # min-max of the headline figure over the repetitions
    samples: int = 0
    reps: int = 0
    peer: str = "-"
    peer_value: float | None = None
    ratio: float | None = None  # ours / peer on the headline figure (p95 or rate)
    status: str = "ok"  # ok | not run
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
