"""mabeamctl's help, from the control ops' own docstrings (mabeamd/control/).

Each subcommand names the ops it sends: `mabeamctl COMMAND --help` shows their whole text,
the overview their first lines. The command modules are import-light, so reading them costs
mabeamctl no daemon machinery.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from mabeamd.control.commands import COMMANDS

RAW = argparse.RawDescriptionHelpFormatter


def op_text(ops: tuple[str, ...]) -> str:
    """The ops' docstrings, each under its name."""
    return "\n\n".join(f"op {op}:\n{textwrap.indent(COMMANDS[op].doc, '  ')}" for op in ops)


def add_op_parser(sub: Any, name: str, common: argparse.ArgumentParser, *ops: str,
                  help: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that sends `ops`: its one-line help is the first op's (unless it sends
    several, when `help` says what the subcommand does), its description all of theirs."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=help or COMMANDS[ops[0]].summary,
        description=f"{help}\n\n{op_text(ops)}" if help else op_text(ops),
        formatter_class=RAW)
    return parser


def overview() -> str:
    """Every op's first line, for `mabeamctl --help`."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {op:<{width}}{c.summary}" for op, c in COMMANDS.items()]
    return ("control ops (`mabeamctl COMMAND --help` shows the whole text of those the "
            "command sends):\n" + "\n".join(lines))
