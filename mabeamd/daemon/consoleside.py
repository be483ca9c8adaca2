"""The arbiter's side of the web console: what it is given to read, and what feeds it.

The console (mabeamd/console/) reads the daemon through the control ops marked read-only
(`changes=False`) -- the same answers `mabeamctl` gets, bound to the same host -- and is fed
the event stream and each ended session's final record. Nothing else of the arbiter is
handed to it, so it cannot change anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mabeamd.console.app import Console, Op
from mabeamd.console.feed import Feed
from mabeamd.control.commands import COMMANDS
from mabeamd.observe.opstats import OpStats

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.schema import ConsoleSection


async def _quiet(_: str) -> None:
    """Progress lines of a control op: the console has no one to show them to."""


def read_only_ops(host: ControlHost) -> dict[str, Op]:
    ops: dict[str, Op] = {}
    for op, command in COMMANDS.items():
        if not command.changes:
            handler = command.bind(host)

            async def call(body: dict[str, Any], handler: Any = handler) -> Any:
                return await handler(body, _quiet)
            ops[op] = call
    return ops


def build(host: ControlHost, settings: ConsoleSection,
          stats: Callable[[], Mapping[str, OpStats]]) -> tuple[Console, Feed]:
    feed = Feed(settings.keep_sessions, stats)
    return Console(read_only_ops(host), feed, settings.show_answers), feed
