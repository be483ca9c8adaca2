from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from mabeamd.testing import Daemon


@pytest.fixture(autouse=True)
def fresh_zmq_context() -> Iterator[None]:
    """Every client in a process shares zmq.Context.instance() (by design: one I/O thread
    per process). In the test process that made tests share it too: once, late in a full
    run, connections from it stopped coming up and every later test that used a client
    failed, while fresh processes (and the same tests alone) passed. Each test now gets a
    new instance context; the old one is destroyed with whatever a test left in it."""
    yield
    ctx = zmq.Context.instance()
    ctx.destroy(linger=0)


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
