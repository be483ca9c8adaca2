"""Built-in plugin `markets`: call market (k-double auction, McAfee), continuous double
auction, supply/demand step-curve equilibrium, Fisher market and exchange (Arrow-Debreu)
market equilibrium. See
docs/protocols.md for each one's params, answers and outcome.
"""

from __future__ import annotations

from mabeam_markets.callmarket import CallMarket
from mabeam_markets.cda import ContinuousDoubleAuction
from mabeam_markets.exchangemarket import ExchangeMarket
from mabeam_markets.fisher import FisherMarket
from mabeam_markets.stepcurve import SupplyDemand
from mabeamd.hookspecs import hookimpl
from mabeamd.protocol import Protocol

PROTOCOLS: list[Protocol] = [CallMarket(), ContinuousDoubleAuction(), SupplyDemand(),
                             FisherMarket(), ExchangeMarket()]


@hookimpl
def mabeamd_protocols() -> list[Protocol]:
    return PROTOCOLS
