"""Order parsing and rounding shared by the market mechanisms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mabeamd.protocol import ProtocolError

DECIMALS = 9


def cents(x: float) -> float:
    return round(x, DECIMALS) + 0.0


def amount(d: Mapping[str, Any], key: str, default: float | None = None) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ProtocolError(f"{key} must be a finite number >= 0")
    return float(v)


def units(d: Mapping[str, Any], key: str = "quantity", default: int | None = 1) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**12:
        raise ProtocolError(f"{key} must be a whole number of units, 1 to 10^12")
    return v


def side(d: Mapping[str, Any]) -> str:
    s = d.get("side")
    if s not in ("buy", "sell"):
        raise ProtocolError('side must be "buy" or "sell"')
    return str(s)
