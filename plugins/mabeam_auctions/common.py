"""What the auction protocols share: money parsing, the deterministic order of bids, and the
writes an auction makes to its allocation variables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mabeamd.protocol import ProtocolError, Session, write_all

# Payments are rounded to this many decimals when reported, so that float noise from sums
# (0.1 + 0.2) never shows up as a payment of 0.30000000000000004.
DECIMALS = 9


def money(d: Mapping[str, Any], key: str, default: float | None, *,
          positive: bool = False) -> float:
    """A finite, non-negative amount (strictly positive with `positive`)."""
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"{key} must be a finite number")
    if v < 0 or (positive and v == 0):
        raise ProtocolError(f"{key} must be {'> 0' if positive else '>= 0'}")
    return float(v)


def flag(d: Mapping[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ProtocolError(f"{key} must be true or false")
    return v


def cents(x: float) -> float:
    return round(x, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def sale_writes(session: Session, result: dict[str, Any]) -> dict[str, Any]:
    """A sale writes {item, winner, price} to every variable of the session; no sale writes
    nothing (the variables keep their previous owner)."""
    if result.get("winner") is None:
        return {}
    value = {"item": result.get("item"), "winner": result["winner"], "price": result["price"]}
    return write_all(session.variables, value)
