"""What each mabeamctl command sends and prints: (the reply, shown with --json; the human
text). Commands that stream (events, top, vars watch) live in tail.py and top.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from mabeamd.ctl import render, sessions, views
from mabeamd.ctl.client import ControlClient
from mabeamd.ctl.usage import UsageError, json_arg


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
        if args.target is not None:
            # The docs give `workers` (list) and `workers restart N|all`; an index after
            # list was silently ignored, which reads as if it had filtered.
            raise UsageError(f"workers list takes no worker index (got {args.target!r}); "
                             "`workers --json` has every worker, `workers restart N` "
                             "restarts one")
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


def cmd_vars(c: ControlClient, args: argparse.Namespace) -> Result:
    act = args.vars_action
    if act in ("get", "history"):
        out = c.call(f"vars.{act}", {"name": args.name})
        if act == "history":
            return out, views.show_history(out)
        return out, views.show_var(out)
    if act == "set":
        body: dict[str, Any] = {"name": args.name, "value": json_arg(args.value, "value")}
        if args.expect_version is not None:
            body["expect_version"] = args.expect_version
        out = c.call("vars.set", body)
        return out, (f"{out['name']} = {render.abbrev(out['value'], 200)} "
                     f"(version {out['version']})")
    if act == "create":
        cons: dict[str, Any] = {}
        for key in ("min", "max", "max_size"):
            if getattr(args, key) is not None:
                cons[key] = getattr(args, key)
        if args.enum:
            cons["enum"] = json_arg(args.enum, "--enum")
        body = {"name": args.name, "value": json_arg(args.value, "value"), "type": args.type,
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
    raise UsageError(f"vars {act}: not a control command")  # watch: run() tails it


def cmd_cluster(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("cluster.status")
    return out, views.show_cluster(out)


def cmd_backup(c: ControlClient, args: argparse.Namespace) -> Result:
    out = c.call("backup", {"dir": os.path.abspath(args.dir)}, on_progress=_progress)
    lines = [f"shard {f['shard']}: {f['variables']} variables at WAL seq {f['seq']}, "
             f"{f['bytes']} bytes, sha256 {f['sha256'][:16]}..." for f in out["shards"]]
    return out, "\n".join([*lines, f"manifest {out['manifest']}"])


COMMANDS = {"backup": cmd_backup, "status": cmd_status, "ping": cmd_ping, "vars": cmd_vars,
            "workers": cmd_workers, "agents": cmd_agents, "cluster": cmd_cluster,
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
