"""A control command: one op, the fields it takes, and its text.

A command is an async function `(host, body, progress) -> reply` made into a `Command` by
`@command(op, fields, required)`. Its docstring is its specification (what it does, the
body, the reply, the refusals): mabeamctl shows it as the op's help, so it is written for
the operator. The fields are checked before the function runs (unknown or missing ones are
`bad_request`), so each op's arguments are declared on the op itself.

Import-light on purpose (no sockets, nothing of the daemon): mabeamctl imports the command
modules to build its help.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mabeamd.net.wire import check_fields

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Handler, Progress

Run = Callable[["ControlHost", dict[str, Any], "Progress"], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    op: str
    run: Run
    fields: frozenset[str] | None  # None: the body is checked further in (see `command`)
    required: frozenset[str]
    # Whether the op changes something: such ops are written to the audit log (and refused
    # while it cannot be written, with [audit] on_failure = "refuse"). Read-only ops say so.
    changes: bool = True

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.run) or ""

    @property
    def summary(self) -> str:
        return self.doc.split("\n", 1)[0]

    def bind(self, host: ControlHost) -> Handler:
        async def handler(body: dict[str, Any], progress: Progress) -> Any:
            if self.fields is not None:
                check_fields(body, self.op, self.fields, self.required)
            return await self.run(host, body, progress)
        return handler


def command(op: str, fields: Iterable[str] = (), required: Iterable[str] = (), *,
            checked: bool = True, changes: bool = True) -> Callable[[Run], Command]:
    """Make `run` the command `op`, taking `fields` of which `required` must be present.
    With `checked=False` the body is not checked here: the command takes any body, or
    hands it to a service that checks it. `changes=False` marks a read-only op (not
    audited); the default is audited, so a new op is recorded unless it says otherwise."""
    def make(run: Run) -> Command:
        return Command(op, run, frozenset(fields) if checked else None, frozenset(required),
                       changes)
    return make
