"""`mabeamctl`: drive a running mabeamd over its control socket.

Socket: --socket PATH, else $MABEAM_SOCKET, else the one the configuration names
(--config FILE, else /etc/mabeamd/mabeamd.toml if present, else the built-in defaults).

Exit status: 0 success; 1 the daemon refused the command; 2 bad usage; 3 `status`: the
daemon answers but is not ready (starting, stopping, a worker not serving its shard, or a
disk refusing writes: the same test as /readyz); 65 `protocols eval` refused its input; 69
the daemon is not running or unreachable; 75 no answer within --timeout seconds of
silence; 78 the configuration given with --config is invalid. `audit` reads files and has
its own (ctl/audit.py): 0 verified, 1 verification failed, 2 usage, 66 no audit log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from mabeamd import __version__
from mabeamd import config as configmod
from mabeamd import paths as pathsmod
from mabeamd.config import EX_CONFIG, ConfigError
from mabeamd.ctl import audit, opdocs, render, sessions, views
from mabeamd.ctl.client import CommandFailed, ControlClient, NotRunning, Timeout
from mabeamd.ctl.opdocs import add_op_parser

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_NOT_READY = 3  # `status` of a daemon that answers but does not serve every shard


def _common() -> argparse.ArgumentParser:
    # Defaults are SUPPRESSed so the options work before or after the command name.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help="control socket (default: $MABEAM_SOCKET, else from the config)")
    p.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="daemon configuration used to find the socket")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="give up after this long without any answer or progress (default 10)")
    return p


def _seconds(text: str) -> float:
    """--timeout: a positive, finite number of seconds (argparse turns the error into
    usage, exit 2)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return x


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="mabeamctl", parents=[common],
                                description="Control a running mabeamd.",
                                epilog=opdocs.overview(), formatter_class=opdocs.RAW)
    p.add_argument("--version", action="version", version=f"mabeamctl {__version__}",
                   help="print mabeamctl's version and exit (the daemon's: `version`)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_op_parser(sub, "status", common, "status")
    add_op_parser(sub, "ping", common, "ping")
    w = add_op_parser(sub, "workers", common, "workers", "workers.restart",
                      help="List workers, or restart one.")
    w.add_argument("action", nargs="?", choices=["list", "restart"], default="list")
    w.add_argument("target", nargs="?", help="worker index or 'all' (for restart)")
    a = add_op_parser(sub, "agents", common, "agents.list", "agents.show", "managed.list",
                      "managed.start", "managed.stop", "managed.restart", "managed.scale",
                      help="Registered agents and managed agent programs.")
    a.add_argument("action", nargs="?", default="list",
                   choices=["list", "show", "programs", "start", "stop", "restart", "scale"])
    a.add_argument("target", nargs="?", help="agent id (show) or program name")
    a.add_argument("count", nargs="?", type=int, help="process count (scale)")
    a.add_argument("--capability", help="list: only agents with this capability")
    a.add_argument("--status", choices=["healthy", "unhealthy"], help="list: only this status")
    v = sub.add_parser("vars", parents=[common], help="Universal variables.")
    vsub = v.add_subparsers(dest="vars_action", required=True, metavar="ACTION")
    add_op_parser(vsub, "get", common, "vars.get").add_argument("name")
    vs = add_op_parser(vsub, "set", common, "vars.set")
    vs.add_argument("name")
    vs.add_argument("value", help="JSON, e.g. 42, '\"text\"', '{\"a\": 1}'")
    vs.add_argument("--expect-version", type=int, help="compare-and-set")
    vc = add_op_parser(vsub, "create", common, "vars.create")
    vc.add_argument("name")
    vc.add_argument("value", nargs="?", default="null", help="JSON (default null)")
    vc.add_argument("--type", default="any")
    vc.add_argument("--access", default="public")
    vc.add_argument("--writers", default="", help="comma-separated agent ids (restricted)")
    vc.add_argument("--policy", default="last_write_wins")
    vc.add_argument("--min", type=float)
    vc.add_argument("--max", type=float)
    vc.add_argument("--enum", help="JSON list of allowed values")
    vc.add_argument("--max-size", type=int)
    vd = add_op_parser(vsub, "delete", common, "vars.delete")
    vd.add_argument("name")
    vd.add_argument("--expect-version", type=int)
    vl = add_op_parser(vsub, "list", common, "vars.list")
    vl.add_argument("prefix", nargs="?", default="")
    vl.add_argument("--after", default="")
    vl.add_argument("--limit", type=int, default=100)
    add_op_parser(vsub, "history", common, "vars.history").add_argument("name")
    vw = vsub.add_parser("watch", parents=[common], help="Print changes as they happen.")
    vw.add_argument("pattern", nargs="?", default="", help="name prefix")
    vw.add_argument("--count", type=int, help="stop after this many changes")
    add_op_parser(vsub, "snapshot", common, "vars.snapshot")
    k = sub.add_parser("keys", parents=[common], help="CURVE key pairs (no daemon needed).")
    k.add_argument("action", choices=["generate"])
    k.add_argument("name", help="key name = the agent namespace it may register; "
                                "'server' for the daemon's own")
    k.add_argument("--dir", default=".", help="where to write NAME.key and NAME.key_secret")
    k.add_argument("--force", action="store_true", help="replace existing files")
    sessions.add_parsers(sub, common)
    audit.add_parser(sub, common)
    add_op_parser(sub, "backup", common, "backup").add_argument("dir")
    for name in ("plugins", "reload", "stop", "version"):
        add_op_parser(sub, name, common, name)
    return p


def resolve_socket(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    env = os.environ.get("MABEAM_SOCKET")
    if env:
        return Path(env)
    path = getattr(args, "config", None)
    if path is None and pathsmod.DEFAULT_CONFIG.exists():
        path = str(pathsmod.DEFAULT_CONFIG)
    return pathsmod.resolve(configmod.load(path)).control_socket


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


class UsageError(Exception):
    pass


Result = tuple[Any, str]  # (the reply, shown with --json; the human text)


def cmd_status(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("status")
    return out, views.show_status(out)


def cmd_ping(c: ControlClient, args: argparse.Namespace) -> Result:
    t0 = time.monotonic()
    out = c.call("ping")
    ms = (time.monotonic() - t0) * 1000
    return {**out, "round_trip_ms": round(ms, 3)}, f"pong from mabeamd in {ms:.2f} ms"


def cmd_workers(c: ControlClient, args: argparse.Namespace) -> Result:
    if args.action == "list":
        out = c.call("workers")
        return out, views.show_workers(out["workers"])
    if args.target is None:
        raise UsageError("workers restart needs a worker index or 'all'")
    target: int | str = args.target
    if target != "all":
        try:
            target = int(target)
        except ValueError:
            raise UsageError(f"worker index must be a number or 'all', got {target!r}") from None
    out = c.call("workers.restart", {"index": target}, _progress)
    return out, "\n".join(f"worker {r['index']}: {r['state']} (pid {r['old_pid']} -> "
                          f"{r['pid']})" for r in out["restarted"])


def cmd_agents(c: ControlClient, args: argparse.Namespace) -> Result:
    action, target = args.action, args.target
    if action == "list":
        out = c.call("agents.list")
        agents = out["agents"]
        if args.capability:
            agents = [a for a in agents if args.capability in a["capabilities"]]
        if args.status:
            agents = [a for a in agents if a["status"] == args.status]
        out = {"agents": agents}
        return out, views.show_agents(agents)
    if action == "programs":
        out = c.call("managed.list")
        return out, views.show_programs(out["programs"])
    if target is None:
        raise UsageError(f"agents {action} needs {'an agent id' if action == 'show' else 'a name'}")
    if action == "show":
        out = c.call("agents.show", {"agent": target})
        return out, views.show_agent(out)
    if action == "scale":
        if args.count is None or args.count < 0:
            raise UsageError("agents scale NAME N needs a count N >= 0")
        out = c.call("managed.scale", {"name": target, "count": args.count}, _progress)
    else:
        out = c.call(f"managed.{action}", {"name": target}, _progress)
    return out, views.show_programs([out])


def cmd_plugins(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("plugins")
    return out, views.show_plugins(out["plugins"])


def cmd_reload(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("reload", on_progress=_progress)
    text = "reloaded: " + (", ".join(out["changed"]) or "no option changed")
    if out["restart_required"]:
        text += "\nnot applied until restart: " + ", ".join(out["restart_required"])
    return out, text


def cmd_stop(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("stop", on_progress=_progress)
    out["exited"] = gone = wait_gone(int(out["pid"]), c.timeout)
    return out, (f"mabeamd (pid {out['pid']}) stopped" if gone else
                 f"mabeamd (pid {out['pid']}) stopped its workers but has not exited yet")


def cmd_version(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("version")
    return out, render.pairs(list(out.items()))


INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what msgpack (and so the wire) can carry


def _json_arg(text: str, what: str) -> Any:
    """A JSON argument; `-` reads it from stdin, `@FILE` from a file (for big values).
    Strict JSON: NaN, Infinity and numbers that overflow a double are refused, and integers
    must fit in 64 bits."""
    if text == "-" or text.startswith("@"):
        try:
            text = sys.stdin.read() if text == "-" else Path(text[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what}: cannot read {text[1:] or 'stdin'}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None

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


def cmd_vars(c: ControlClient, args: argparse.Namespace) -> Result:
    act = args.vars_action
    if act in ("get", "history"):
        out = c.call(f"vars.{act}", {"name": args.name})
        if act == "history":
            return out, views.show_history(out)
        return out, views.show_var(out)
    if act == "set":
        body: dict[str, Any] = {"name": args.name, "value": _json_arg(args.value, "value")}
        if args.expect_version is not None:
            body["expect_version"] = args.expect_version
        out = c.call("vars.set", body)
        return out, f"{out['name']} = {json.dumps(out['value'])} (version {out['version']})"
    if act == "create":
        cons: dict[str, Any] = {}
        for key in ("min", "max", "max_size"):
            if getattr(args, key) is not None:
                cons[key] = getattr(args, key)
        if args.enum:
            cons["enum"] = _json_arg(args.enum, "--enum")
        body = {"name": args.name, "value": _json_arg(args.value, "value"), "type": args.type,
                "access": args.access, "policy": args.policy, "constraints": cons or None}
        if args.writers:
            body["writers"] = [w for w in args.writers.split(",") if w]
        out = c.call("vars.create", body)
        return out, views.show_var(out)
    if act == "delete":
        body = {"name": args.name}
        if args.expect_version is not None:
            body["expect_version"] = args.expect_version
        out = c.call("vars.delete", body)
        return out, f"{out['name']} deleted (version {out['version']})"
    if act == "list":
        out = c.call("vars.list", {"prefix": args.prefix, "after": args.after,
                                   "limit": args.limit})
        return out, views.show_vars(out)
    if act == "snapshot":
        out = c.call("vars.snapshot", on_progress=_progress)
        return out, "\n".join(f"shard {s['shard']}: {s['variables']} variables at WAL seq "
                              f"{s['seq']}" for s in out["shards"])
    return watch_vars(c, args)


def watch_vars(c: ControlClient, args: argparse.Namespace) -> Result:
    """Subscribe to var.<pattern> events and print each change as a line (JSON with --json)."""
    import zmq

    from mabeamd.net import wire

    endpoint = c.call("status").get("event_endpoint")
    if not endpoint:
        raise UsageError("the daemon has no event endpoint ([events] endpoint is empty)")
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, f"var.{args.pattern}".encode())
    sub.connect(endpoint.removeprefix("curve+"))
    print(f"watching var.{args.pattern}* on {endpoint} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            if not sub.poll(1000):
                continue
            _, body = sub.recv_multipart()
            ev = wire.unpack(body, max_size=1 << 30)
            seen += 1
            if getattr(args, "json", False):
                print(json.dumps(ev, default=repr, sort_keys=True), flush=True)
            else:
                value = ("" if ev.get("op") == "delete" else
                         " = " + json.dumps(ev.get("value"), default=repr))
                print(f"{ev['name']} {ev['op']} v{ev['version']} by {ev['by']}{value}",
                      flush=True)
    finally:
        sub.close()
    return None, ""


def cmd_backup(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("backup", {"dir": os.path.abspath(args.dir)}, on_progress=_progress)
    lines = [f"shard {f['shard']}: {f['variables']} variables at WAL seq {f['seq']}, "
             f"{f['bytes']} bytes, sha256 {f['sha256'][:16]}..." for f in out["shards"]]
    return out, "\n".join([*lines, f"manifest {out['manifest']}"])


COMMANDS = {"backup": cmd_backup, "status": cmd_status, "ping": cmd_ping, "vars": cmd_vars,
            "workers": cmd_workers, "agents": cmd_agents,
            "plugins": cmd_plugins, "reload": cmd_reload, "stop": cmd_stop,
            "version": cmd_version, "sessions": sessions.cmd_sessions,
            "protocols": sessions.cmd_protocols}


def keys_generate(args: argparse.Namespace) -> int:
    """Local: write NAME.key / NAME.key_secret; needs no daemon."""
    from mabeamd.agents.auth import generate
    from mabeamd.config import MANAGED_NAME

    if not MANAGED_NAME.match(args.name):
        raise UsageError("key name: letters, digits, '_', '.', '-' (it is the agent namespace)")
    directory = Path(args.dir)
    if (directory / f"{args.name}.key").exists() and not args.force:
        print(f"mabeamctl: {directory / args.name}.key exists (use --force to replace it)",
              file=sys.stderr)
        return 1
    try:
        public, secret = generate(directory, args.name)
    except OSError as exc:
        print(f"mabeamctl: keys generate: cannot write into {directory}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    out = {"public": str(public), "secret": str(secret)}
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2))
    else:
        print(f"public key  {public}  (give to the daemon's authorized_keys, or to clients)")
        print(f"secret key  {secret}  (mode 0600; keep it where only its owner reads it)")
    return 0


def _print(out: Any, text: str, args: argparse.Namespace) -> None:
    print(json.dumps(out, indent=2, sort_keys=True, default=repr) if getattr(args, "json", False)
          else text)


def run(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return keys_generate(args)
    if args.command == "audit":  # the files, not the daemon (ctl/audit.py says why)
        return audit.run(args)
    if args.command == "protocols" and args.protocols_action == "eval":
        out = sessions.protocols_eval(args.name, args.file)
        print(json.dumps(out, indent=2, sort_keys=True, default=repr))
        return 0
    if args.command == "protocols" and args.local:
        rows = sessions.protocols_local_list()
        _print(rows, sessions.show_protocols(rows), args)
        return 0
    if args.command == "sessions" and args.sessions_action == "decide":
        args.decision_value = _json_arg(args.decision, "the decision")
    with ControlClient(resolve_socket(args), timeout=getattr(args, "timeout", 10.0)) as client:
        out, text = COMMANDS[args.command](client, args)
    if out is None:  # streamed already (vars watch)
        return 0
    _print(out, text, args)
    if args.command == "status" and not out.get("ready", True):
        print("mabeamctl: not ready: " + "; ".join(out.get("not_ready") or []),
              file=sys.stderr)
        return EX_NOT_READY
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"mabeamctl: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except NotRunning as exc:
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
        return 2
    except sessions.EvalError as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return sessions.EX_DATAERR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went (`mabeamctl ... | head -1`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
