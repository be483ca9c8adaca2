"""Read CATS instance files (Leyton-Brown et al.'s Combinatorial Auction Test Suite) into the
combinatorial auction's input.

A CATS file has `goods N`, `bids M` and `dummy D` lines, then one bid per line:
`ID PRICE GOOD GOOD ... #`, goods numbered from 0. Goods numbered N and above are "dummy
goods": CATS puts the same dummy good in every bid of one XOR bidder. So bids sharing a dummy
good become one bidder (`d<GOOD>`) and a bid with none is a bidder of its own (`b<ID>`).
Lines starting with `%` are comments. Items are named by their numbers ("0", "1", ...).
"""

from __future__ import annotations

from typing import Any

from mabeamd.protocol import ProtocolError


def parse_cats(text: str) -> dict[str, Any]:
    header: dict[str, int] = {}
    bidders: dict[str, list[dict[str, Any]]] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        words = line.split()
        if words[0] in ("goods", "bids", "dummy"):
            if len(words) != 2 or not words[1].isdigit():
                raise ProtocolError(f"CATS line {no}: expected '{words[0]} N'")
            header[words[0]] = int(words[1])
            continue
        if "goods" not in header:
            raise ProtocolError(f"CATS line {no}: a bid before the 'goods N' line")
        if words[-1] != "#" or len(words) < 4:
            raise ProtocolError(f"CATS line {no}: expected 'ID PRICE GOOD... #'")
        try:
            bid_id, price = int(words[0]), float(words[1])
            goods = [int(w) for w in words[2:-1]]
        except ValueError:
            raise ProtocolError(f"CATS line {no}: ID and goods must be integers, PRICE a "
                                "number") from None
        n = header["goods"]
        real = sorted({g for g in goods if g < n})
        dummies = [g for g in goods if g >= n]
        if any(g < 0 for g in goods) or not real:
            raise ProtocolError(f"CATS line {no}: goods must be in 0..{n - 1} (plus dummies)")
        if len(dummies) > 1:
            raise ProtocolError(f"CATS line {no}: more than one dummy good")
        who = f"d{dummies[0]}" if dummies else f"b{bid_id}"
        bidders.setdefault(who, []).append({"items": [str(g) for g in real], "price": price})
    if "goods" not in header:
        raise ProtocolError("not a CATS file: no 'goods N' line")
    declared = header.get("bids")
    got = sum(len(b) for b in bidders.values())
    if declared is not None and declared != got:
        raise ProtocolError(f"CATS file declares {declared} bids but has {got}")
    return {"params": {"items": [str(g) for g in range(header["goods"])]},
            "participants": [{"id": who} for who in bidders],
            "responses": [{"agent": who, "value": {"bids": bids}, "seq": k}
                          for k, (who, bids) in enumerate(bidders.items())]}
