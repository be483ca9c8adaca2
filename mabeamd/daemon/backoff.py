"""Restart policy: exponential backoff with jitter, bounded by a crash budget.

Pure logic (time and randomness are passed in) so the supervision rules are unit-tested
without processes. A failure is any unplanned exit, crash or failed start alike: both burn
the same budget, because a worker that cannot start is as broken as one that keeps dying.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffSettings:
    initial: float
    maximum: float
    factor: float
    jitter: float
    max_restarts: int
    window: float


class RestartPolicy:
    def __init__(self, settings: BackoffSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._failures: deque[float] = deque()

    def failures_in_window(self, now: float) -> int:
        self._prune(now)
        return len(self._failures)

    def _prune(self, now: float) -> None:
        while self._failures and now - self._failures[0] > self.settings.window:
            self._failures.popleft()

    def record_failure(self, now: float) -> float | None:
        """Count a failure at `now`; return the delay before the next start, or None when the
        budget is spent (more than max_restarts failures within the window)."""
        s = self.settings
        self._prune(now)
        self._failures.append(now)
        n = len(self._failures)
        if n > s.max_restarts:
            return None
        base = min(s.maximum, s.initial * s.factor ** (n - 1))
        spread = base * s.jitter
        return max(0.0, min(s.maximum, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self._failures.clear()
