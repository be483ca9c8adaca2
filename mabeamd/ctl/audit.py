"""`mabeamctl audit`: read and verify the audit log (docs/operations.md "Audit").

It reads the files, not the control socket: a verification must not depend on the daemon
it checks (a stopped daemon, or a copy of the directory on another machine, verifies the
same), and the log can be long. So it needs read access to STATE_DIR/audit (root, or the
daemon's user); the directory is found from --dir, else the configuration's state
directory (--config, else /etc/mabeamd/mabeamd.toml, else the defaults).

    mabeamctl audit [--since TIME] [--kind K] [--json]   the records, one line each
    mabeamctl audit verify SESSION_ID                     re-run that session's mechanism
    mabeamctl audit verify --all                          the chain and every session

Exit status: 0 everything verified (or printed); 1 verification failed (each problem is
printed with its file and line); 2 bad usage, or no such session in the log; 66 no audit
log there (EX_NOINPUT); 78 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mabeamd.observe import audit as log

EX_VERIFY_FAILED = 1
EX_USAGE = 2
EX_NOINPUT = 66
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    what = "Read and verify the audit log (reads STATE_DIR/audit; needs no daemon)."
    a = sub.add_parser("audit", parents=[common], help=what, description=what + (
        " `audit` lists records; `audit verify SESSION_ID` re-runs one session's mechanism "
        "on its recorded inputs and checks the recorded outcome, payments and writes; "
        "`audit verify --all` checks the hash chain and every session (docs/operations.md, "
        "Audit)."))
    a.add_argument("action", nargs="?", choices=["list", "verify"], default="list")
    a.add_argument("session", nargs="?", help="verify: the session id")
    a.add_argument("--all", action="store_true", help="verify: the chain and every session")
    a.add_argument("--since", metavar="TIME",
                   help="only records from TIME on: ISO 8601 (UTC unless it says), or an "
                        "age such as 30m, 2h, 1d")
    a.add_argument("--kind", help="only records of this kind (control, forbidden, session, "
                                  "auth_failure, takeover)")
    a.add_argument("--dir", metavar="DIR", help="the audit directory (default: "
                                                "STATE_DIR/audit from the configuration)")


def since(text: str) -> float:
    if text and text[-1] in UNITS and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * UNITS[text[-1]]
    try:
        return log.parse_time(text)
    except ValueError:
        raise UsageError(f"--since: expected ISO 8601 or an age like 30m, got {text!r}") \
            from None


class UsageError(Exception):
    pass


def audit_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    from mabeamd import config as configmod
    from mabeamd import paths as pathsmod

    path = getattr(args, "config", None)
    if path is None and pathsmod.DEFAULT_CONFIG.exists():
        path = str(pathsmod.DEFAULT_CONFIG)
    return pathsmod.resolve(configmod.load(path)).state_dir / "audit"


def describe(rec: dict[str, Any]) -> str:
    """One readable line per record."""
    kind = rec.get("kind")
    head = f"{rec.get('time')} #{rec.get('seq')} {kind}"
    if kind == "control":
        err = rec.get("error") or {}
        how = "ok" if rec.get("ok") else f"refused {err.get('code')}: {err.get('message')}"
        return f"{head} {rec.get('op')} {json.dumps(rec.get('args'), sort_keys=True)} {how}"
    if kind == "forbidden":
        return (f"{head} {rec.get('agent')} {rec.get('op')} {rec.get('name')} "
                f"via {rec.get('via')}: {rec.get('reason')}")
    if kind == "session":
        versions = ", ".join(f"{n}@v{v}" for n, v in sorted((rec.get("versions") or {}).items()))
        return (f"{head} {rec.get('session')} {rec.get('protocol')} {rec.get('state')} "
                f"by {rec.get('initiator')}, {len(rec.get('participants') or [])} "
                f"participants" + (f", wrote {versions}" if versions else "")
                + (f" ({rec.get('reason')})" if rec.get("reason") else ""))
    if kind == "auth_failure":
        return f"{head} {rec.get('mechanism')} key {rec.get('key')} from " \
               f"{rec.get('address') or '?'}: {rec.get('reason')}"
    if kind == "takeover":
        return f"{head} {rec.get('agent')} taken over (proof: {rec.get('proof')})"
    return f"{head} {json.dumps(rec, sort_keys=True)}"


def _protocols() -> dict[str, Any]:
    from mabeamd.ctl.sessions import local_protocols

    protos: dict[str, Any] = local_protocols()["protocols"]
    return protos


def verify_one(protos: dict[str, Any], where: str, rec: dict[str, Any]) -> list[str]:
    """Problems with one session record (empty: it verifies); prints what holds."""
    from mabeamd.sessions.replay import Mismatch, verify_session

    proto = protos.get(str(rec.get("protocol")))
    sid = rec.get("session")
    if proto is None:
        return [f"{where}: session {sid}: protocol {rec.get('protocol')!r} is not installed "
                "here, so it cannot be re-run"]
    try:
        notes = verify_session(proto, rec)
    except Mismatch as exc:
        return [f"{where}: session {sid} ({rec.get('protocol')}): {exc}"]
    except Exception as exc:  # a plugin that raises on the record is a failed verification
        return [f"{where}: session {sid} ({rec.get('protocol')}): re-running it raised "
                f"{exc!r}"]
    print(f"{where}: session {sid} ({rec.get('protocol')}, {rec.get('state')}): "
          + "; ".join(notes))
    return []


def run(args: argparse.Namespace) -> int:
    directory = audit_dir(args)
    if not log.files(directory):
        print(f"mabeamctl: no audit log in {directory}", file=sys.stderr)
        return EX_NOINPUT
    try:
        if args.action == "verify":
            return verify(args, directory)
        t0 = since(args.since) if args.since else None
    except UsageError as exc:
        print(f"mabeamctl: {exc}", file=sys.stderr)
        return EX_USAGE
    for ln in log.lines(directory):
        rec = ln.record
        if rec is None:
            print(f"{ln.path.name}:{ln.number}: (not a record) {ln.text}")
            continue
        if args.kind and rec.get("kind") != args.kind:
            continue
        if t0 is not None:
            try:
                if log.parse_time(str(rec.get("time"))) < t0:
                    continue
            except ValueError:
                pass
        print(log.canonical(rec) if getattr(args, "json", False) else describe(rec))
    return 0


def verify(args: argparse.Namespace, directory: Path) -> int:
    if bool(args.all) == bool(args.session):
        raise UsageError("audit verify: give a SESSION_ID or --all")
    problems: list[str] = []
    protos = _protocols()
    if args.all:
        n, problems = log.verify_chain(directory)
        sessions = 0
        for ln in log.lines(directory):
            if ln.record is not None and ln.record.get("kind") == "session":
                sessions += 1
                problems += verify_one(protos, f"{ln.path.name}:{ln.number}", ln.record)
        summary = f"{n} records, {sessions} sessions"
    else:
        found = [ln for ln in log.lines(directory)
                 if ln.record is not None and ln.record.get("kind") == "session"
                 and ln.record.get("session") == args.session]
        if not found:
            print(f"mabeamctl: no session {args.session!r} in the audit log", file=sys.stderr)
            return EX_USAGE
        for ln in found:
            assert ln.record is not None
            if ln.record.get("hash") != log.record_hash(ln.record):
                problems.append(f"{ln.path.name}:{ln.number}: its hash does not match its "
                                "content (the line was edited)")
            problems += verify_one(protos, f"{ln.path.name}:{ln.number}", ln.record)
        summary = f"session {args.session}"
    for p in problems:
        print(f"FAILED {p}")
    if problems:
        print(f"audit verify: {summary}: {len(problems)} problem(s)", file=sys.stderr)
        return EX_VERIFY_FAILED
    print(f"audit verify: {summary}: ok")
    return 0
