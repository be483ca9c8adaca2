"""Anomaly detection: rolling statistics over a few key series, and an alarm when one
leaves its band.

Every `[anomaly] interval` seconds the arbiter samples the daemon's own counters (the
figures metrics.py exports, so nothing new is counted) into five series: request rate,
error rate, session failure rate, p95 request latency and worker restarts (per second).
Each series keeps an exponentially weighted mean and variance (`Band`). After `warmup`
samples, a sample farther from the mean than the band -- the largest of `sigmas` standard
deviations, the series' absolute floor and `relative` times the mean -- makes the series
anomalous: an `anomaly.<series>` event (state "entered"), a warning in the log, the
metrics `mabeamd_anomalies_total` and `mabeamd_anomaly_active`. Back inside the band it
clears (an event with state "cleared", an info line). One alarm per excursion, not one per
sample.

Why EWMA and these floors: the machine this runs on is shared and noisy, so a band from the
series' own recent spread follows the daemon's normal load without hand-set thresholds; the
floors keep a quiet daemon (variance near zero) from firing on one stray error, and the
relative term keeps a busy one from firing on ordinary jitter. The band learns only from
samples inside it, so a burst stays one alarm until it ends (an outlier would otherwise
widen the band at once and "clear" a burst still going on); an excursion that lasts
`warmup` samples is taken as a new level: the band starts again from there (cleared), so
a lasting change becomes the new normal rather than an endless alarm.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mabeamd.config import AnomalySection
from mabeamd.observe.opstats import BUCKETS

log = logging.getLogger(__name__)

# name -> (absolute floor of the band, the directions that are anomalous, unit for logs)
SERIES: dict[str, tuple[float, tuple[str, ...], str]] = {
    "request_rate": (20.0, ("high", "low"), "/s"),
    "error_rate": (2.0, ("high",), "/s"),
    "session_failure_rate": (0.5, ("high",), "/s"),
    "p95_latency": (0.005, ("high",), "s"),
    "worker_restarts": (0.01, ("high",), "/s"),
}
MIN_LATENCY_SAMPLES = 20  # fewer requests in an interval: no p95 for that interval


@dataclass
class Band:
    """An EWMA mean and variance with an alarm band (pure: the tests drive it directly)."""

    alpha: float
    sigmas: float
    warmup: int
    floor: float
    relative: float
    directions: tuple[str, ...] = ("high", "low")
    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    active: bool = False
    outside: int = 0  # consecutive samples outside the band

    def limit(self) -> float:
        return max(self.sigmas * math.sqrt(self.var), self.floor, self.relative * abs(self.mean))

    def update(self, x: float) -> str | None:
        """Add a sample; "entered" or "cleared" when the series' state changes, else None."""
        change = None
        if self.n >= self.warmup:
            dev = x - self.mean
            if (("high" in self.directions and dev > self.limit())
                    or ("low" in self.directions and -dev > self.limit())):
                self.outside += 1
                if not self.active:
                    self.active = True
                    return "entered"
                if self.outside >= self.warmup:  # a lasting new level: learn it afresh
                    self.mean, self.var, self.n = x, 0.0, 1
                    self.active, self.outside = False, 0
                    return "cleared"
                return None  # an outlier does not widen the band it left
            self.outside = 0
            if self.active:
                self.active = False
                change = "cleared"
        if self.n == 0:
            self.mean = x
        else:  # West's incremental EWMA variance
            diff = x - self.mean
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1 - self.alpha) * (self.var + diff * incr)
        self.n += 1
        return change


class AnomalySource(Protocol):
    """What the watch reads (the arbiter implements it)."""

    def anomaly_counters(self) -> dict[str, float]:
        """Cumulative counts: "requests", "errors" (every endpoint), "session_failures"
        (failed and timed out), "restarts" (workers)."""

    def latency_buckets(self) -> list[int]:
        """Cumulative request counts per opstats.BUCKETS bound (the last +Inf), summed over
        the agent endpoint and the shard endpoints."""


def p95_of(delta: Sequence[int]) -> float | None:
    """The p95 of an interval's requests from per-bucket cumulative counts (each bucket's
    upper bound; +Inf reads as the largest finite bound); None when too few requests."""
    total = delta[-1] if delta else 0
    if total < MIN_LATENCY_SAMPLES:
        return None
    want = 0.95 * total
    for bound, n in zip((*BUCKETS, BUCKETS[-1]), delta, strict=True):
        if n >= want:
            return bound
    return BUCKETS[-1]


class AnomalyWatch:
    def __init__(self, source: AnomalySource, settings: AnomalySection,
                 publish: Callable[[str, dict[str, Any]], None]) -> None:
        self.source = source
        self.publish = publish
        self.settings = settings
        self.bands = self._bands(settings)
        self.fired: dict[str, int] = dict.fromkeys(SERIES, 0)
        self.last: dict[str, float] = {}
        self._prev: dict[str, float] | None = None
        self._prev_buckets: list[int] | None = None
        self._prev_t = 0.0

    @staticmethod
    def _bands(s: AnomalySection) -> dict[str, Band]:
        return {name: Band(s.alpha, s.sigmas, s.warmup, floor, s.relative, directions)
                for name, (floor, directions, _) in SERIES.items()}

    def reconfigure(self, settings: AnomalySection) -> None:
        """A reload: new thresholds take effect at once, the learnt means and variances
        carry over."""
        self.settings = settings
        for band in self.bands.values():
            band.alpha, band.sigmas = settings.alpha, settings.sigmas
            band.warmup, band.relative = settings.warmup, settings.relative

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.interval)
            if self.settings.enabled:
                self.sample(loop.time())

    def sample(self, now: float) -> None:
        counters = self.source.anomaly_counters()
        buckets = self.source.latency_buckets()
        prev, prev_buckets, dt = self._prev, self._prev_buckets, now - self._prev_t
        self._prev, self._prev_buckets, self._prev_t = counters, buckets, now
        if prev is None or prev_buckets is None or dt <= 0:
            return
        values: dict[str, float | None] = {
            "request_rate": _rate(counters, prev, "requests", dt),
            "error_rate": _rate(counters, prev, "errors", dt),
            "session_failure_rate": _rate(counters, prev, "session_failures", dt),
            "worker_restarts": _rate(counters, prev, "restarts", dt),
            "p95_latency": p95_of([max(0, a - b) for a, b in zip(buckets, prev_buckets,
                                                                  strict=True)]),
        }
        for name, value in values.items():
            if value is None:
                continue
            self.last[name] = value
            band = self.bands[name]
            mean, limit = band.mean, band.limit()
            change = band.update(value)
            if change is not None:
                self._report(name, change, value, mean, limit)

    def _report(self, name: str, change: str, value: float, mean: float,
                limit: float) -> None:
        unit = SERIES[name][2]
        direction = "high" if value > mean else "low"
        body = {"series": name, "state": change, "value": round(value, 6),
                "mean": round(mean, 6), "band": round(limit, 6), "direction": direction}
        if change == "entered":
            self.fired[name] += 1
            log.warning("anomaly: %s is %s: %.4g%s against a mean of %.4g%s (band +-%.4g)",
                        name, direction, value, unit, mean, unit, limit)
        else:
            log.info("anomaly: %s is back in its band (%.4g%s)", name, value, unit)
        self.publish(f"anomaly.{name}", body)

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per series: fired (alarms so far), active, mean, band, last sample."""
        return {name: {"fired": self.fired[name], "active": b.active,
                       "mean": b.mean, "band": b.limit(), "last": self.last.get(name)}
                for name, b in self.bands.items()}


def _rate(now: dict[str, float], before: dict[str, float], key: str, dt: float,
          ) -> float | None:
    if key not in now or key not in before:
        return None
    # A counter that went down (a worker restarted and counts from zero): no sample.
    d = now[key] - before[key]
    return d / dt if d >= 0 else None
