"""What mabeamctl takes from its command line: strict JSON values (also from stdin and
@FILE), seconds, and the errors that make a usage error (exit 2) or a missing input (66).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

EX_USAGE = 2  # argparse's own status for bad usage; ours is the same
EX_NOINPUT = 66  # sysexits: an input file named on the command line cannot be read
INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what msgpack (and so the wire) can carry


class UsageError(Exception):
    """Bad usage: one line on stderr, exit 2, nothing sent."""


class NoInput(Exception):
    """A file named on the command line cannot be read: exit 66 (EX_NOINPUT)."""


def seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse turns the error into usage, exit 2)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return x


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return n


def number(text: str) -> int | float:
    """A --min/--max limit: an integer stays one (`{"max": 10}`, not 10.0, which an int
    variable's constraint would show as a float), anything else must be a finite float."""
    try:
        n = int(text)
    except ValueError:
        pass
    else:
        if not INT_RANGE[0] <= n <= INT_RANGE[1]:
            raise argparse.ArgumentTypeError(f"{text} is outside the 64-bit integers")
        return n
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def json_arg(text: str, what: str) -> Any:
    """A JSON argument; `-` reads it from stdin, `@FILE` from a file (for big values).
    Strict JSON: NaN, Infinity and numbers that overflow a double are refused, and integers
    must fit in 64 bits."""
    if text == "-" or text.startswith("@"):
        try:
            text = sys.stdin.read() if text == "-" else Path(text[1:]).read_text()
        except OSError as exc:
            raise NoInput(f"{what}: cannot read {text[1:] or 'stdin'}: "
                          f"{exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{what}: {text[1:] or 'stdin'} is not UTF-8 text") from None

    def constant(name: str) -> Any:
        raise UsageError(f"{what}: {name} is not JSON; give a finite number")

    def finite(s: str) -> float:
        x = float(s)
        if not math.isfinite(x):
            raise UsageError(f"{what}: {s} does not fit in a double; give a finite number")
        return x

    def bounded(s: str) -> int:
        n = int(s)
        if not INT_RANGE[0] <= n <= INT_RANGE[1]:
            raise UsageError(f"{what}: {s} is outside the 64-bit integers the wire carries")
        return n
    try:
        return json.loads(text, parse_constant=constant, parse_float=finite, parse_int=bounded)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} must be JSON ({exc.msg}); quote strings: '\"text\"'") from None
    except ValueError as exc:  # int() of a huge literal (Python's digit limit)
        raise UsageError(f"{what}: {exc}") from None
