"""Every control op, by name: the commands of the group modules, in one registry.

A group module is one area the daemon is administered in; its commands are the `Command`s it
defines (control/command.py), listed here in the order they are defined. The server looks
ops up in `build_handlers(host)`; mabeamctl reads `COMMANDS` for its help.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from mabeamd.control import agents, cluster, daemon, managed, sessions, variables, workers
from mabeamd.control.command import Command

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Handler

GROUPS: tuple[ModuleType, ...] = (daemon, workers, agents, managed, variables, sessions,
                                  cluster)


def _collect(groups: tuple[ModuleType, ...]) -> dict[str, Command]:
    found: dict[str, Command] = {}
    for group in groups:
        for value in vars(group).values():
            if isinstance(value, Command):
                if value.op in found and found[value.op] is not value:
                    raise RuntimeError(f"control op {value.op!r} defined twice")
                found[value.op] = value
    return found


COMMANDS = _collect(GROUPS)
# The ops that change something: the control server audits them (observe/audit.py).
CHANGES = frozenset(op for op, c in COMMANDS.items() if c.changes)


def build_handlers(host: ControlHost) -> dict[str, Handler]:
    """The control ops, bound to one host."""
    return {op: c.bind(host) for op, c in COMMANDS.items()}
