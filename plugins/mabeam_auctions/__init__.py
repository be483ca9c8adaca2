"""Built-in plugin `auctions`: sealed-bid (first and second price), English, Dutch and
combinatorial (VCG) auctions. See docs/protocols.md for each one's params, answers and outcome.
"""

from __future__ import annotations

from mabeam_auctions.clock import Dutch, English
from mabeam_auctions.combinatorial import Combinatorial
from mabeam_auctions.sealed import SealedBid
from mabeamd.hookspecs import hookimpl
from mabeamd.protocol import Protocol

PROTOCOLS: list[Protocol] = [SealedBid(), English(), Dutch(), Combinatorial()]


@hookimpl
def mabeamd_protocols() -> list[Protocol]:
    return PROTOCOLS
