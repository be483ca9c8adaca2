"""mabeamctl's command line: every subcommand, its options and its help.

The help of a subcommand that sends control ops is those ops' docstrings (opdocs.py); the
others say here what they do. Shell completion and the man page are generated from this
same parser (manual.py), so whatever is added here shows up in both.
"""

from __future__ import annotations

import argparse
from typing import Any

from mabeamd import __version__
from mabeamd.ctl import audit, opdocs, sessions
from mabeamd.ctl.opdocs import RAW, add_op_parser
from mabeamd.ctl.usage import number, positive_int, seconds
from mabeamd.storage.variables import ACCESS, POLICIES, TYPES

VARS_HELP = """\
Universal variables: typed, versioned values the agents share. Writes made here act
as @admin (they bypass access modes and conflict policies, not types and constraints).
Values are strict JSON; '-' reads one from stdin, @FILE from a file."""

WATCH_HELP = """\
Print each change of the variables whose names start with PREFIX, one line each (JSON
with --json), until Ctrl-C, --count changes or --timeout seconds without one. The same
as `mabeamctl events var.PREFIX`, with one line a change."""

EVENTS_HELP = """\
Print the daemon's events as they happen, one line each (--json: one JSON object a
line), until Ctrl-C, --count N events, or --timeout seconds without one: exit 0 (75 if
--count N was not reached). The event endpoint is asked of the daemon (`status`).

Each TOPIC is a prefix, matched as a ZeroMQ SUB matches it: agent. worker. var. session.
daemon. anomaly., or narrower (var.plan/, agent.gone); none = every topic.

Events missed (a subscriber that falls [events] hwm behind loses some) show as a line
'--- N events missed', found from the events' sequence numbers: every topic's with no
TOPIC, a family's (agent, var, ...) when a TOPIC covers the whole family. A narrower
prefix cannot tell a missed event from other names' events, so it reports none."""

TOP_HELP = """\
A live view refreshed every --interval seconds until q or Ctrl-C: workers (state, CPU,
RSS, writes and one-hop requests per second), agents, request and event rates, sessions
per second by protocol, and the busiest shards. Rates are the differences of the
daemon's counters between two refreshes. It needs a terminal; --once prints one frame
(rates over --interval) and exits, --once --json the same as JSON."""

KEYS_HELP = """\
Write a CURVE key pair NAME.key (public) and NAME.key_secret (the pair, mode 0600) into
--dir. Needs no daemon. docs/operations.md, "Securing remote agents with CURVE", says
where each file goes."""

COMPLETION_HELP = """\
Print a completion script for SHELL, generated from this parser (by shtab), e.g.

  mabeamctl completion bash > /etc/bash_completion.d/mabeamctl
  mabeamctl completion zsh > /usr/local/share/zsh/site-functions/_mabeamctl"""

MANPAGE_HELP = """\
Print the man page mabeamctl(1) in roff, generated from this parser: every command,
its options and the control ops it sends, e.g.

  mabeamctl manpage > /usr/local/share/man/man1/mabeamctl.1 && mandb -q"""


def common() -> argparse.ArgumentParser:
    # Defaults are SUPPRESSed so the options work before or after the command name.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help="control socket (default: $MABEAM_SOCKET, else from the config)")
    p.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="daemon configuration used to find the socket")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON")
    p.add_argument("--timeout", type=seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="give up after this long without any answer or progress (default 10)")
    return p


def _plain(sub: Any, name: str, parent: argparse.ArgumentParser, help: str,
           description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that is not one control op: `help` is its line in the parent's list,
    `description` (default: the same) heads its own --help."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[parent], help=help, description=description or help,
        formatter_class=RAW)
    return parser


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def _vars(sub: Any, c: argparse.ArgumentParser) -> None:
    v = _plain(sub, "vars", c, "Universal variables.", VARS_HELP)
    vsub = v.add_subparsers(dest="vars_action", required=True, metavar="ACTION")
    add_op_parser(vsub, "get", c, "vars.get").add_argument("name")
    vs = add_op_parser(vsub, "set", c, "vars.set")
    vs.add_argument("name")
    vs.add_argument("value", help="JSON, e.g. 42, '\"text\"', '{\"a\": 1}'; - or @FILE")
    vs.add_argument("--expect-version", type=int, help="compare-and-set")
    vc = add_op_parser(vsub, "create", c, "vars.create")
    vc.add_argument("name")
    vc.add_argument("value", nargs="?", default="null", help="JSON (default null); - or @FILE")
    vc.add_argument("--type", default="any", choices=TYPES, metavar="TYPE",
                    help=f"one of {_choices(TYPES)} (default any)")
    vc.add_argument("--access", default="public", choices=ACCESS, metavar="ACCESS",
                    help=f"one of {_choices(ACCESS)} (default public)")
    vc.add_argument("--writers", default="", help="comma-separated agent ids (restricted)")
    vc.add_argument("--policy", default="last_write_wins", choices=POLICIES, metavar="POLICY",
                    help=f"one of {_choices(POLICIES)} (default last_write_wins)")
    vc.add_argument("--min", type=number, help="smallest allowed number")
    vc.add_argument("--max", type=number, help="largest allowed number")
    vc.add_argument("--enum", help="JSON list of allowed values")
    vc.add_argument("--max-size", type=positive_int, metavar="BYTES",
                    help="largest allowed value, packed bytes")
    vd = add_op_parser(vsub, "delete", c, "vars.delete")
    vd.add_argument("name")
    vd.add_argument("--expect-version", type=int)
    vl = add_op_parser(vsub, "list", c, "vars.list")
    vl.add_argument("prefix", nargs="?", default="")
    vl.add_argument("--after", default="", help="start after this name (the page's 'next')")
    vl.add_argument("--limit", type=positive_int, default=100)
    add_op_parser(vsub, "history", c, "vars.history").add_argument("name")
    vw = _plain(vsub, "watch", c, "Print changes as they happen.", WATCH_HELP)
    vw.add_argument("pattern", nargs="?", default="", metavar="PREFIX", help="name prefix")
    vw.add_argument("--count", type=positive_int, help="stop after this many changes")
    _curve_options(vw)
    add_op_parser(vsub, "snapshot", c, "vars.snapshot")


def _curve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", metavar="FILE.key_secret",
                   help="CURVE: this client's key pair, one listed in the daemon's "
                        "[security] authorized_keys (only for a curve+ event endpoint)")
    p.add_argument("--server-key", metavar="FILE.key",
                   help="CURVE: the daemon's public key (only for a curve+ event endpoint)")


def _events(sub: Any, c: argparse.ArgumentParser) -> None:
    e = _plain(sub, "events", c, "Tail the event stream.", EVENTS_HELP)
    e.add_argument("topics", nargs="*", metavar="TOPIC", help="topic prefix (default: all)")
    e.add_argument("--count", type=positive_int, help="stop after this many events")
    _curve_options(e)


def _top(sub: Any, c: argparse.ArgumentParser) -> None:
    t = _plain(sub, "top", c, "A live view: workers, agents, sessions, busiest shards.",
               TOP_HELP)
    t.add_argument("--interval", type=seconds, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    t.add_argument("--once", action="store_true",
                   help="print one frame and exit (no terminal needed)")
    t.add_argument("--shards", type=positive_int, default=5, metavar="N",
                   help="how many of the busiest shards to show (default 5)")


def _manual(sub: Any, c: argparse.ArgumentParser) -> None:
    m = _plain(sub, "completion", c, "Print a shell completion script (bash or zsh).",
               COMPLETION_HELP)
    m.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    _plain(sub, "manpage", c, "Print the man page mabeamctl(1), generated from the parser.",
           MANPAGE_HELP)


def build_parser() -> argparse.ArgumentParser:
    c = common()
    p = argparse.ArgumentParser(prog="mabeamctl", parents=[c],
                                description="Control a running mabeamd.",
                                epilog=opdocs.overview(), formatter_class=RAW)
    p.add_argument("--version", action="version", version=f"mabeamctl {__version__}",
                   help="print mabeamctl's version and exit (the daemon's: `version`)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_op_parser(sub, "status", c, "status")
    add_op_parser(sub, "ping", c, "ping")
    w = add_op_parser(sub, "workers", c, "workers", "workers.restart",
                      help="List workers (`workers` or `workers list`), or restart one "
                           "(`workers restart N|all`).")
    w.add_argument("action", nargs="?", choices=["list", "restart"], default="list")
    w.add_argument("target", nargs="?", help="restart: worker index or 'all'")
    a = add_op_parser(sub, "agents", c, "agents.list", "agents.show", "managed.list",
                      "managed.start", "managed.stop", "managed.restart", "managed.scale",
                      help="Registered agents and managed agent programs.")
    a.add_argument("action", nargs="?", default="list",
                   choices=["list", "show", "programs", "start", "stop", "restart", "scale"])
    a.add_argument("target", nargs="?", help="agent id (show) or program name")
    a.add_argument("count", nargs="?", type=int, help="process count (scale)")
    a.add_argument("--capability", help="list: only agents with this capability")
    a.add_argument("--status", choices=["healthy", "unhealthy"], help="list: only this status")
    cl = add_op_parser(sub, "cluster", c, "cluster.status",
                       help="The cluster this node is in: nodes, leases, etcd members and "
                            "their health, this node's cache lag (`cluster status`).")
    cl.add_argument("action", nargs="?", choices=["status"], default="status")
    _vars(sub, c)
    _events(sub, c)
    _top(sub, c)
    k = _plain(sub, "keys", c, "CURVE key pairs (no daemon needed).", KEYS_HELP)
    k.add_argument("action", choices=["generate"])
    k.add_argument("name", help="key name = the agent namespace it may register; "
                                "'server' for the daemon's own")
    k.add_argument("--dir", default=".", help="where to write NAME.key and NAME.key_secret")
    k.add_argument("--force", action="store_true", help="replace existing files")
    sessions.add_parsers(sub, c)
    audit.add_parser(sub, c)
    add_op_parser(sub, "backup", c, "backup").add_argument("dir")
    for name in ("plugins", "reload", "stop", "version"):
        add_op_parser(sub, name, c, name)
    _manual(sub, c)
    return p
