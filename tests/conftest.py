from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mabeamd.testing import Daemon


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """Factory for real daemons; every one is killed and its temp dir removed afterwards."""
    made: list[Daemon] = []

    def factory(config: str = "", **kwargs: Any) -> Daemon:
        d = Daemon(config, **kwargs)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon with two workers."""
    return make_daemon().start()
