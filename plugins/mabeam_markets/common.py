"""Order fields shared by the market mechanisms (amounts: mabeamd.protocol.money)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mabeamd.protocol import ProtocolError


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
