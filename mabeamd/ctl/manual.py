"""Shell completion and the man page, both generated from mabeamctl's argparse parser, so
neither can drift from the commands.

Completion is shtab's (maintained, pure Python, no run-time hook: the script it prints is
static, unlike argcomplete's, which re-runs mabeamctl on every Tab). The man page is
written here: argparse already holds every usage line, description and option help, and
turning those into roff is short, where a generator package would be one more dependency
for a single page.
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Iterator

from mabeamd import __version__


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    text: str = shtab.complete(parser, shell=shell)
    return text if text.endswith("\n") else text + "\n"


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a line starting with '.' or "'" would be
    read as a request."""
    text = text.replace("\\", "\\e")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _opt(text: str) -> str:
    return _roff(text).replace("-", "\\-")


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command below `parser`, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def _options(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        names = action.option_strings or [str(action.metavar or action.dest)]
        if set(action.option_strings) & skip:
            continue
        metavar = ""
        if action.option_strings and action.nargs != 0:
            metavar = " " + str(action.metavar or action.dest.upper())
        lines += [".TP", f"\\fB{_opt(', '.join(map(str, names)))}\\fR{_opt(metavar)}",
                  _roff(action.help or "")]
    return lines


def manpage(parser: argparse.ArgumentParser) -> str:
    """mabeamctl(1) in roff (man -l to read it)."""
    from mabeamd.ctl import main as ctlmain

    today = datetime.date.today().isoformat()
    common = {"--socket", "-c", "--config", "--json", "--timeout", "-h", "--help"}
    out = [f'.TH MABEAMCTL 1 "{today}" "mabeamd {__version__}" "mabeamd manual"',
           ".SH NAME", "mabeamctl \\- control a running mabeamd",
           ".SH SYNOPSIS", ".nf", _opt(parser.format_usage().removeprefix("usage: ").strip()),
           ".fi", ".SH DESCRIPTION", _roff(parser.description or ""),
           ".PP", "Options every command takes, before or after the command name:"]
    out += _options(parser, set())
    out += [".SH COMMANDS"]
    for path, sub in _subcommands(parser):
        out += [".SS " + _roff(" ".join(path)), ".nf",
                _opt(sub.format_usage().removeprefix("usage: ").strip()), ".fi"]
        if sub.description:
            out += [".PP", ".nf", _roff(sub.description), ".fi"]
        out += _options(sub, common)
    doc = ctlmain.__doc__ or ""
    status = re.sub(r"\s+", " ", doc[doc.index("Exit status:"):]).strip()
    sock = re.sub(r"\s+", " ", doc[doc.index("Socket:"):doc.index("Exit status:")]).strip()
    out += [".SH EXIT STATUS", _roff(status), ".SH FILES", _roff(sock),
            ".SH SEE ALSO", "\\fBmabeamd\\fR(8); docs/operations.md in the mabeamd sources"]
    return "\n".join(out) + "\n"
