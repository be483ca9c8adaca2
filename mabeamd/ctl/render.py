"""Human-readable output for mabeamctl: aligned tables and short durations and sizes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in text]
    return "\n".join(lines)


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in items)


def abbrev(value: Any, limit: int = 80, bare: bool = False) -> str:
    """A value for one line of human output: JSON (with `bare`, a string without spaces
    unquoted), cut to about `limit` characters with the full length said, so a 100 KB
    value stays one readable line (--json output is never cut)."""
    if bare and isinstance(value, str) and value and len(value) <= limit and not any(
            ch.isspace() or ch in "\"=" for ch in value):
        return value
    text = json.dumps(value, default=repr, sort_keys=True)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 3]}... ({len(text)} characters)"
