"""What the auction protocols share: flags in params and the writes an auction makes to its
allocation variables. Amounts and their rounding are mabeamd.protocol.money / cents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mabeamd.protocol import ProtocolError, Session, Trade, cents, terms, write_all


def flag(d: Mapping[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ProtocolError(f"{key} must be true or false")
    return v


def sale_terms(item: Any, winner: str | None, price: float | None,
               welfare: float | None) -> dict[str, Any]:
    """The shared outcome vocabulary (mabeamd.protocol.terms) of a one-item sale: the winner
    gets the item (as a bundle of one, like a combinatorial winner; "item" when params.item
    names none) and pays the price; no sale, nothing."""
    if winner is None or price is None:
        return terms({}, {}, None, None)
    return terms({winner: ["item" if item is None else item]}, {winner: price}, cents(price),
                 welfare)


def sale_writes(session: Session, result: dict[str, Any]) -> dict[str, Any]:
    """A sale writes {item, winner, price} to every variable of the session; no sale writes
    nothing (the variables keep their previous owner)."""
    if result.get("winner") is None:
        return {}
    value = {"item": result.get("item"), "winner": result["winner"], "price": result["price"]}
    return write_all(session.variables, value)


def sale_trade(result: dict[str, Any]) -> Trade | None:
    """A single-item sale's revenue and clearing price: what the winner pays."""
    price = result.get("price")
    if result.get("winner") is None or not isinstance(price, (int, float)):
        return None
    return Trade(float(price), (float(price),))
