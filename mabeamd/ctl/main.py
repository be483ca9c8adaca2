"""`mabeamctl`: drive a running mabeamd over its control socket.

Socket: --socket PATH, else $MABEAM_SOCKET, else the one the configuration names (--config
FILE, else /etc/mabeamd/mabeamd.toml if present, else the built-in defaults); when the
configuration leaves the directory to the defaults and this user's own socket does not
exist, the system daemon's (/run/mabeamd/control.sock) is tried: a non-root member of
[control] group resolves the defaults to its own XDG runtime directory, not the system's.

Exit status: 0 success; 1 the daemon refused the command; 2 bad usage (also an unknown
protocol for `protocols eval`); 3 `status`: the daemon answers but is not ready (starting,
stopping, a worker not serving its shard, or a disk refusing writes: the same test as
/readyz); 65 `protocols eval`: the mechanism refused its input; 66 an input file cannot be
read; 69 the daemon is not running, is unreachable, or lacks what was asked (no event
endpoint); 75 no answer within --timeout seconds of silence (`events --count N`: fewer
than N events); 78 the configuration given with --config is invalid. `audit` reads files
and has its own (ctl/audit.py): 0 verified, 1 verification failed, 2 usage, 66 no audit log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mabeamd import config as configmod
from mabeamd import paths as pathsmod
from mabeamd.config import EX_CONFIG, ConfigError
from mabeamd.ctl import audit, commands, sessions
from mabeamd.ctl.client import CommandFailed, ControlClient, NotRunning, Timeout, Unavailable
from mabeamd.ctl.parser import build_parser
from mabeamd.ctl.usage import EX_NOINPUT, EX_USAGE, NoInput, UsageError, json_arg

__all__ = ["build_parser", "main", "resolve_socket", "socket_candidates"]

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_NOT_READY = 3  # `status` of a daemon that answers but does not serve every shard


def socket_candidates(args: argparse.Namespace) -> list[Path]:
    """Where to look for the control socket, in order (docs/operations.md, mabeamctl)."""
    if getattr(args, "socket", None):
        return [Path(args.socket)]
    env = os.environ.get("MABEAM_SOCKET")
    if env:
        return [Path(env)]
    path = getattr(args, "config", None)
    if path is None and pathsmod.DEFAULT_CONFIG.exists():
        path = str(pathsmod.DEFAULT_CONFIG)
    cfg = configmod.load(path)
    own = pathsmod.resolve(cfg).control_socket
    if cfg.control.socket or cfg.daemon.runtime_dir:
        return [own]  # the configuration says where: nowhere else is right
    system = pathsmod.SYSTEM_RUNTIME_DIR / "control.sock"
    return [own] if system == own else [own, system]


def resolve_socket(args: argparse.Namespace) -> Path:
    """The first candidate that exists; none: not running, naming every place looked at."""
    found = socket_candidates(args)
    for p in found:
        if p.exists():
            return p
    if len(found) > 1:
        raise NotRunning("mabeamd is not running (no control socket at "
                         + " or ".join(map(str, found)) + ")")
    return found[0]  # the client's probe says why it cannot be used


def _print(out: Any, text: str, args: argparse.Namespace) -> None:
    print(json.dumps(out, indent=2, sort_keys=True, default=repr) if getattr(args, "json", False)
          else text)


def _local(args: argparse.Namespace) -> int | None:
    """Commands that need no daemon; None for the others."""
    if args.command == "keys":
        return commands.keys_generate(args)
    if args.command == "audit":  # the files, not the daemon (ctl/audit.py says why)
        return audit.run(args)
    if args.command in ("completion", "manpage"):
        from mabeamd.ctl import manual

        print(manual.completion(build_parser(), args.shell) if args.command == "completion"
              else manual.manpage(build_parser()), end="")
        return 0
    if args.command == "protocols" and args.protocols_action == "eval":
        out = sessions.protocols_eval(args.name, args.file, args.params)
        print(json.dumps(out, indent=2, sort_keys=True, default=repr))
        return 0
    if args.command == "protocols" and args.local:
        rows = sessions.protocols_local_list()
        _print(rows, sessions.show_protocols(rows), args)
        return 0
    return None


def _streaming(args: argparse.Namespace) -> bool:
    return args.command in ("events", "top") or (
        args.command == "vars" and args.vars_action == "watch")


def run(args: argparse.Namespace) -> int:
    local = _local(args)
    if local is not None:
        return local
    if args.command == "sessions" and args.sessions_action == "decide":
        args.decision_value = json_arg(args.decision, "the decision")
    with ControlClient(resolve_socket(args), timeout=getattr(args, "timeout", 10.0)) as client:
        if _streaming(args):
            from mabeamd.ctl import tail, top

            if args.command == "top":
                return top.cmd_top(client, args)
            return (tail.cmd_events if args.command == "events" else tail.cmd_watch)(
                client, args)
        out, text = commands.COMMANDS[args.command](client, args)
    _print(out, text, args)
    if args.command == "status" and not out.get("ready", True):
        print("mabeamctl: not ready: " + "; ".join(out.get("not_ready") or []),
              file=sys.stderr)
        return EX_NOT_READY
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except ConfigError as exc:
        print(f"mabeamctl: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (NotRunning, Unavailable) as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except Timeout as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except CommandFailed as exc:
        print(f"mabeamctl: {args.command} failed: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except (UsageError, audit.UsageError) as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return EX_USAGE
    except NoInput as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except sessions.EvalError as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return sessions.EX_DATAERR
    except KeyboardInterrupt:
        # Ctrl-C while waiting on a one-shot command (the tails and top end on it with 0).
        return 130
    except BrokenPipeError:
        # The reader went (`mabeamctl ... | head -1`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
