"""`mabeamctl`: drive a running mabeamd over its control socket.

Socket: --socket PATH, else $MABEAM_SOCKET, else the one the configuration names
(--config FILE, else /etc/mabeamd/mabeamd.toml if present, else the built-in defaults).

Exit status: 0 success; 1 the daemon refused the command; 2 bad usage; 69 the daemon is
not running or unreachable; 75 no answer within --timeout seconds of silence; 78 the
configuration given with --config is invalid.
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

from mabeamd import config as configmod
from mabeamd import paths as pathsmod
from mabeamd.config import EX_CONFIG, ConfigError
from mabeamd.ctl import render
from mabeamd.ctl.client import CommandFailed, ControlClient, NotRunning, Timeout

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75


def _common() -> argparse.ArgumentParser:
    # Defaults are SUPPRESSed so the options work before or after the command name.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help="control socket (default: $MABEAM_SOCKET, else from the config)")
    p.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="daemon configuration used to find the socket")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="give up after this long without any answer or progress (default 10)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="mabeamctl", parents=[common],
                                description="Control a running mabeamd.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[common], help="daemon state and summary")
    w = sub.add_parser("workers", parents=[common], help="list workers, or restart one")
    w.add_argument("action", nargs="?", choices=["list", "restart"], default="list")
    w.add_argument("target", nargs="?", help="worker index or 'all' (for restart)")
    sub.add_parser("plugins", parents=[common], help="loaded, failed and disabled plugins")
    sub.add_parser("reload", parents=[common], help="reload configuration and plugins")
    sub.add_parser("stop", parents=[common], help="stop the daemon gracefully and wait")
    sub.add_parser("version", parents=[common], help="daemon and library versions")
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


def show_status(s: dict[str, Any]) -> str:
    w = s["workers"]
    head = f"mabeamd {s['version']} (pid {s['pid']}) {s['state']}: {s['summary']}"
    ready = (f" (ready after {s['ready_after']:.2f}s)" if s.get("ready_after") is not None
             else "")
    c = s["control"]
    items: list[tuple[str, Any]] = [
        ("uptime", render.duration(s["uptime"]) + ready),
        ("config", s["config"]),
        ("runtime_dir", s["runtime_dir"]),
        ("state_dir", s["state_dir"]),
        ("control", f"{s['control_socket']} (requests {c['requests']}, errors {c['errors']}, "
                    f"undeliverable {c['undeliverable']})"),
        ("log", f"{s['log_level']} -> {s['log_target']}"),
        ("systemd", "notify" if s["systemd_notify"] else "not under systemd"),
        ("workers", ", ".join(f"{w[k]} {k}" for k in
                              ("running", "starting", "backoff", "stopping", "stopped", "failed")
                              ) + f" (of {w['total']})"),
        ("plugins", ", ".join(f"{v} {k}" for k, v in s["plugins"].items())),
    ]
    items += [(f"plugin {k}", json.dumps(v, sort_keys=True)) for k, v in
              sorted(s.get("extensions", {}).items())]
    return head + "\n" + render.pairs(items)


def show_workers(ws: list[dict[str, Any]]) -> str:
    rows = []
    for w in ws:
        last = w["last_exit"] or "-"
        if w["state"] == "backoff" and w["restart_in"] is not None:
            last += f" (restart in {w['restart_in']:.1f}s)"
        rows.append([w["index"], w["state"].upper() if w["state"] == "failed" else w["state"],
                     w["pid"], w["cpu_percent"], render.size(w["rss"]),
                     render.duration(w["uptime"]), w["restarts"], w["crashes"],
                     w["start_failures"] + w["spawn_failures"], last])
    return render.table(["WORKER", "STATE", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS",
                         "CRASHES", "START_FAIL", "LAST EXIT"], rows)


def show_plugins(ps: list[dict[str, Any]]) -> str:
    if not ps:
        return "no plugins installed (entry-point group mabeamd.plugins)"
    rows = [[p["name"], p["state"], f"{p['dist'] or '-'} {p['version'] or ''}".strip(),
             p["value"], ",".join(h.removeprefix("mabeamd_") for h in p["hooks"]) or "-",
             p["error"] or ""] for p in ps]
    return render.table(["NAME", "STATE", "DIST", "TARGET", "HOOKS", "ERROR"], rows)


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


def run(args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    client = ControlClient(resolve_socket(args), timeout=getattr(args, "timeout", 10.0))
    cmd = args.command
    out: Any
    with client:
        if cmd == "workers" and args.action == "restart":
            if args.target is None:
                print("mabeamctl: workers restart needs a worker index or 'all'", file=sys.stderr)
                return 2
            target: int | str = args.target
            if target != "all":
                try:
                    target = int(target)
                except ValueError:
                    print(f"mabeamctl: worker index must be a number or 'all', got {target!r}",
                          file=sys.stderr)
                    return 2
            out = client.call("workers.restart", {"index": target}, _progress)
            text = "\n".join(f"worker {r['index']}: {r['state']} (pid {r['old_pid']} -> "
                             f"{r['pid']})" for r in out["restarted"])
        elif cmd == "workers":
            out = client.call("workers")
            text = show_workers(out["workers"])
        elif cmd == "status":
            out = client.call("status")
            text = show_status(out)
        elif cmd == "plugins":
            out = client.call("plugins")
            text = show_plugins(out["plugins"])
        elif cmd == "reload":
            out = client.call("reload", on_progress=_progress)
            text = "reloaded: " + (", ".join(out["changed"]) or "no option changed")
            if out["restart_required"]:
                text += ("\nnot applied until restart: " + ", ".join(out["restart_required"]))
        elif cmd == "stop":
            out = client.call("stop", on_progress=_progress)
            gone = wait_gone(int(out["pid"]), client.timeout)
            out["exited"] = gone
            text = (f"mabeamd (pid {out['pid']}) stopped" if gone else
                    f"mabeamd (pid {out['pid']}) stopped its workers but has not exited yet")
        else:  # version
            out = client.call("version")
            text = render.pairs(list(out.items()))
    print(json.dumps(out, indent=2, sort_keys=True) if as_json else text)
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
