"""Order fields and outcome terms shared by the market mechanisms (amounts:
mabeamd.protocol.money)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mabeamd.protocol import ProtocolError, cents, integer, number, terms


def solve_limits(params: Mapping[str, Any], max_iterations: int) -> dict[str, Any]:
    """An equilibrium solver's params: the tolerance it must certify, and its bounds on
    iterations (default `max_iterations`) and on seconds."""
    return {"tolerance": number(params, "tolerance", 1e-6, lo=1e-15, hi=1.0),
            "max_iterations": integer(params, "max_iterations", max_iterations, lo=1,
                                      hi=10_000_000),
            "time_limit": number(params, "time_limit", 5.0, lo=0.001, hi=3600)}


def trade_terms(lines: Iterable[tuple[str, float, float]], price: float | None,
                welfare: float | None) -> dict[str, Any]:
    """The shared outcome terms (mabeamd.protocol.terms) of a market's executed lines, each
    (agent, units bought -- negative: sold --, the price per unit it paid or got): every
    trader's net units (fractional ones rounded as amounts are) and net payment (a seller's
    receipt negative)."""
    held: dict[str, Any] = {}
    paid: dict[str, float] = {}
    for agent, q, p in lines:
        held[agent] = held.get(agent, 0) + q
        paid[agent] = paid.get(agent, 0.0) + q * p
    return terms({a: cents(q) if isinstance(q, float) else q for a, q in held.items()}, paid,
                 price, welfare)


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
