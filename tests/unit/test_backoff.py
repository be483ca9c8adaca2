"""The restart policy: backoff growth, cap, jitter bounds and the crash budget."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mabeamd.daemon.backoff import BackoffSettings, RestartPolicy


def policy(**kw: float) -> RestartPolicy:
    s = dict(initial=0.1, maximum=1.0, factor=2.0, jitter=0.0, max_restarts=5, window=60.0)
    s.update(kw)
    return RestartPolicy(BackoffSettings(**s), random.Random(1))  # type: ignore[arg-type]


def test_delays_double_then_cap_then_budget_spent() -> None:
    p = policy()
    delays = [p.record_failure(float(t)) for t in range(6)]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert delays[5] is None


def test_old_failures_leave_the_window() -> None:
    p = policy(max_restarts=2, window=11.0)
    assert p.record_failure(0.0) == 0.1
    assert p.record_failure(1.0) == 0.2
    assert p.record_failure(11.5) == 0.2  # the one at 0.0 has left the window
    assert p.failures_in_window(11.5) == 2
    assert p.record_failure(12.0) is None


def test_reset_clears_the_budget() -> None:
    p = policy(max_restarts=1)
    p.record_failure(0.0)
    assert p.record_failure(0.1) is None
    p.reset()
    assert p.record_failure(0.2) == 0.1


def test_zero_budget_fails_at_once() -> None:
    assert policy(max_restarts=0).record_failure(0.0) is None


@given(
    initial=st.floats(0, 5), extra=st.floats(0, 50), factor=st.floats(1, 10),
    jitter=st.floats(0, 1), budget=st.integers(0, 20), n=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_delay_always_within_bounds(initial: float, extra: float, factor: float, jitter: float,
                                    budget: int, n: int, seed: int) -> None:
    maximum = initial + extra
    p = RestartPolicy(BackoffSettings(initial, maximum, factor, jitter, budget, 1e9),
                      random.Random(seed))
    for i in range(1, n + 1):
        d = p.record_failure(float(i))
        if i > budget:
            assert d is None
        else:
            assert d is not None
            assert 0.0 <= d <= maximum
            base = min(maximum, initial * factor ** (i - 1))
            assert abs(d - base) <= base * jitter + 1e-9
