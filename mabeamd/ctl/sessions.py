"""`mabeamctl sessions ...` and `mabeamctl protocols ...`.

`protocols eval NAME FILE` runs a protocol's pure mechanism here, in this process, on a JSON
input (FILE `-` = stdin) and prints the JSON outcome: no daemon needed, the plugins installed
next to mabeamctl are used. Exit 65 when the mechanism refuses the input (sysexits
EX_DATAERR), 2 for an unknown protocol (usage), 66 when FILE cannot be read (EX_NOINPUT).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mabeamd.ctl import render
from mabeamd.ctl.client import ControlClient
from mabeamd.ctl.opdocs import RAW, add_op_parser
from mabeamd.ctl.usage import NoInput, UsageError

EX_DATAERR = 65
STATES = ("queued", "collecting", "deciding", "escalated", "applied", "failed", "cancelled",
          "timed_out", "starting")


class EvalError(Exception):
    pass


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("sessions", parents=[common], help="Coordination sessions.",
                       description="Coordination sessions: list them, show one, cancel one, "
                       "or decide an escalated one.\nAgents start sessions (session.start, "
                       "docs/protocol.md); the operator watches and steps in.")
    ss = s.add_subparsers(dest="sessions_action", required=True, metavar="ACTION")
    sl = add_op_parser(ss, "list", common, "sessions.list")
    sl.add_argument("--state", choices=STATES, help="only sessions in this state")
    add_op_parser(ss, "show", common, "sessions.show").add_argument("id")
    sc = add_op_parser(ss, "cancel", common, "sessions.cancel")
    sc.add_argument("id")
    sc.add_argument("--reason", help="recorded as the session's reason")
    sd = add_op_parser(ss, "decide", common, "sessions.decide")
    sd.add_argument("id")
    sd.add_argument("decision", help='JSON, e.g. \'{"allocations": {"a1": 2}}\'')
    p = sub.add_parser("protocols", parents=[common], help="Coordination protocols.",
                       description="Coordination protocols: what the daemon (or, --local, "
                       "this host) offers, and\n`eval` to run one's pure mechanism offline "
                       "on a JSON input.")
    ps = p.add_subparsers(dest="protocols_action", required=True, metavar="ACTION")
    pl = add_op_parser(ps, "list", common, "protocols.list")
    pl.add_argument("--local", action="store_true",
                    help="what the plugins installed here provide (no daemon needed)")
    pe = ps.add_parser("eval", parents=[common], add_help=False, formatter_class=RAW,
                       help="Run a protocol's pure mechanism offline on a JSON input.",
                       description=EVAL_HELP)
    # The protocols are listed only when help is asked for: finding them loads every
    # plugin, which no other command run should pay for.
    pe.add_argument("-h", "--help", action=_EvalHelp, help="show this help message and exit")
    pe.add_argument("name", metavar="PROTOCOL")
    pe.add_argument("file", metavar="FILE", help="JSON input file, - for stdin")
    pe.add_argument("--params", metavar="JSON", type=params_arg,
                    help="a JSON object of params laid over the input's own (a key given "
                    "here replaces the file's), e.g. '{\"payment\": \"pay_as_bid\", "
                    "\"time_limit\": 30}' for a CATS file")


EVAL_HELP = """Run PROTOCOL's pure mechanism here, offline, on the JSON input in FILE, and
print the JSON outcome. No daemon needed: the plugins installed next to mabeamctl are used.
Exit 65 when the mechanism refuses the input, 2 for an unknown protocol, 66 when FILE
cannot be read.

--params JSON lays params over the input's own, key by key, so a file in another
format (a CATS file for combinatorial) or a saved input runs with other params.

Each protocol's input (its "inputs" map) is documented in docs/protocols.md, in the
section named after it (## PROTOCOL), with an example; "Common shapes" there describes
what they share. A third-party protocol's plugin documents its own."""


class _EvalHelp(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        try:
            rows = protocols_local_list()
        except Exception as exc:  # help must print even when a plugin cannot load
            listing = f"(the installed protocols could not be listed: {exc})"
        else:
            listing = "\n".join(f"  {r['name']:<26} {r['summary']}" for r in rows) or "  none"
        parser.description = f"{EVAL_HELP}\n\nprotocols installed here:\n{listing}"
        parser.print_help()
        parser.exit()


def show_sessions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no sessions"
    return render.table(["SESSION", "PROTOCOL", "STATE", "INITIATOR", "SHARD", "REASON"],
                        [[r["session"], r["protocol"], r["state"], r["initiator"], r["shard"],
                          r.get("reason") or ""] for r in rows])


def show_session(r: dict[str, Any]) -> str:
    items: list[tuple[str, Any]] = [
        ("protocol", r["protocol"]), ("state", r["state"]), ("initiator", r["initiator"]),
        ("shard", r.get("shard")),
    ]
    if "participants" in r:
        items += [("participants", f"{len(r['participants'])}: "
                                   f"{', '.join(r['participants'][:20])}"
                                   + (" ..." if len(r["participants"]) > 20 else "")),
                  ("variables", ", ".join(r["variables"]) or "-"),
                  ("round", f"{r['round']}" + (f" ({r['open_round']}: {r['answered']} answered,"
                                               f" {len(r['waiting'])} waiting)"
                                               if r.get("open_round") else "")),
                  ("absent", ", ".join(r["absent"]) or "-"),
                  ("params", json.dumps(r["params"], sort_keys=True))]
    if r.get("reason"):
        items.append(("reason", r["reason"]))
    if r.get("result") is not None:
        items.append(("result", json.dumps(r["result"], sort_keys=True)))
    if r.get("writes"):
        items.append(("writes", json.dumps(r["writes"], sort_keys=True)))
    return f"session {r['session']}\n" + render.pairs(items)


def show_protocols(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no protocols (no protocol plugin is loaded)"
    return render.table(["PROTOCOL", "PLUGIN", "DEADLINE", "SUMMARY"],
                        [[r["name"], r.get("plugin") or "-", f"{r['default_deadline']:g}s",
                          r["summary"]] for r in rows])


def local_protocols() -> dict[str, Any]:
    from mabeamd.plugins import PluginHost

    host = PluginHost()
    host.load()
    return {"host": host, "protocols": host.protocols()}


def protocols_local_list() -> list[dict[str, Any]]:
    found = local_protocols()
    owners = found["host"].protocol_owner
    return [{**p.describe(), "plugin": owners.get(n)}
            for n, p in sorted(found["protocols"].items())]


def params_arg(text: str) -> dict[str, Any]:
    """--params: a JSON object, or argparse's usage error (exit 2) saying what it got."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object of params, e.g. "
                                         "'{\"solver\": \"bnb\"}'")
    return value


def protocols_eval(name: str, file: str,
                   params: dict[str, Any] | None = None) -> dict[str, Any]:
    from mabeamd.protocol import ProtocolError

    protos = local_protocols()["protocols"]
    proto = protos.get(name)
    if proto is None:
        raise UsageError(f"unknown protocol {name!r}; installed here: "
                        f"{', '.join(sorted(protos)) or 'none'}")
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise NoInput(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise EvalError(f"{file}: not UTF-8 text (JSON is)") from None
    try:
        inputs = proto.parse_input(text)
    except ProtocolError as exc:
        raise EvalError(f"{file}: {exc}") from None
    if not isinstance(inputs, dict):
        raise EvalError(f"{file}: the input must be a JSON object")
    if params:
        given = inputs.get("params", {})
        if not isinstance(given, dict):
            raise EvalError(f"{file}: params must be a JSON object")
        inputs = {**inputs, "params": {**given, **params}}
    try:
        result: dict[str, Any] = proto.decide(inputs)
    except ProtocolError as exc:
        raise EvalError(f"{name}: {exc}") from None
    return result


def cmd_sessions(c: ControlClient, args: argparse.Namespace) -> tuple[Any, str]:
    act = args.sessions_action
    if act == "list":
        out = c.call("sessions.list", {"state": args.state} if args.state else {})
        return out, show_sessions(out)
    if act == "show":
        out = c.call("sessions.show", {"session": args.id})
        return out, show_session(out)
    if act == "cancel":
        body = {"session": args.id}
        if args.reason:
            body["reason"] = args.reason
        out = c.call("sessions.cancel", body)
        return out, f"session {args.id}: cancelling"
    out = c.call("sessions.decide", {"session": args.id, "decision": args.decision_value})
    return out, f"session {args.id}: decision accepted"


def cmd_protocols(c: ControlClient, args: argparse.Namespace) -> tuple[Any, str]:
    out = c.call("protocols.list")
    return out, show_protocols(out)
