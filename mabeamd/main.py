"""`mabeamd`: parse the command line, load the configuration, run the arbiter.

Exit status: 0 after a clean stop, 78 (EX_CONFIG) for a bad configuration, 1 when the daemon
cannot start for another reason (instance already running, directory not writable, ...).
It runs in the foreground; systemd (or the terminal) supervises it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from mabeamd import __version__
from mabeamd import config as configmod
from mabeamd import paths as pathsmod
from mabeamd.config import EX_CONFIG, LOG_LEVELS, ConfigError

log = logging.getLogger("mabeamd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mabeamd",
        description="Multi-agent coordination daemon (runs in the foreground).",
    )
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"TOML configuration (default: {pathsmod.DEFAULT_CONFIG} if it exists, "
                        "else built-in defaults)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (0 = one per CPU)")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--runtime-dir", metavar="DIR", help="sockets and instance lock")
    p.add_argument("--state-dir", metavar="DIR", help="durable state")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print the resolved paths and exit")
    p.add_argument("--reshard", type=int, metavar="N",
                   help="offline: move every variable of the (stopped) daemon's state "
                        "directory into N shards, keep the old shards as a backup, and exit; "
                        "then set workers.count = N")
    p.add_argument("--check-state", action="store_true",
                   help="offline: load every shard of the (stopped) daemon's state directory "
                        "without writing, report shards that cannot be loaded and names that "
                        "are misplaced or in two shards, say what --repair would do, and exit "
                        "(0 clean, 1 problems)")
    p.add_argument("--repair", action="store_true",
                   help="with --check-state: move misplaced names to their shard and keep "
                        "the chosen copy of each duplicated one (see --keep)")
    p.add_argument("--keep", action="append", default=[], metavar="NAME=SHARD",
                   help="with --check-state --repair: the copy of duplicated NAME to keep "
                        "(repeat for each duplicated name)")
    p.add_argument("--json", action="store_true", help="with --check-state: JSON output")
    p.add_argument("--restore", metavar="DIR",
                   help="offline: verify the backup in DIR (mabeamctl backup) and restore it "
                        "into the (empty or new) state directory, then exit")
    p.add_argument("--version", action="version", version=f"mabeamd {__version__}")
    return p


def overrides_from(args: argparse.Namespace) -> dict[tuple[str, str], tuple[Any, str]]:
    out: dict[tuple[str, str], tuple[Any, str]] = {}
    for attr, key, flag in (("workers", ("workers", "count"), "--workers"),
                            ("log_level", ("daemon", "log_level"), "--log-level"),
                            ("runtime_dir", ("daemon", "runtime_dir"), "--runtime-dir"),
                            ("state_dir", ("daemon", "state_dir"), "--state-dir")):
        value = getattr(args, attr)
        if value is not None:
            out[key] = (value, flag)
    return out


def offline(paths: pathsmod.Paths, what: str, work: Callable[[], int]) -> int:
    """Run an offline tool's `work` under the state directory's lock (the one a running
    daemon holds: a tool never works beside one)."""
    from mabeamd.storage.statedir import StateDirError, lock_state_dir

    try:
        fd = lock_state_dir(paths.state_dir, what)
    except (StateDirError, OSError) as exc:
        print(f"mabeamd: {exc}", file=sys.stderr)
        return 1
    try:
        return work()
    finally:
        os.close(fd)


def run_reshard(cfg: configmod.Config, paths: pathsmod.Paths, shards: int) -> int:
    from mabeamd.storage.reshard import reshard
    from mabeamd.storage.statedir import StateDirError
    from mabeamd.storage.wal import WalCorrupt

    try:
        out = reshard(paths.state_dir, shards, cfg.variables.history)
    except (StateDirError, WalCorrupt, OSError) as exc:
        print(f"mabeamd: --reshard: {exc}", file=sys.stderr)
        return 1
    print(f"resharded {paths.state_dir}: {out['variables']} variables from {out['from']} to "
          f"{out['to']} shards; old shards kept as {out['backup']}. Set workers.count = "
          f"{out['to']} before starting.")
    return 0


def run_check_state(cfg: configmod.Config, paths: pathsmod.Paths, args: argparse.Namespace,
                    ) -> int:
    import json

    from mabeamd.storage import checkstate
    from mabeamd.storage.statedir import StateDirError

    keep: dict[str, int] = {}
    for item in args.keep:
        name, sep, shard = item.rpartition("=")
        if not sep or not name or not shard.isdigit():
            print(f"mabeamd: --keep {item!r}: expected NAME=SHARD (a shard number)",
                  file=sys.stderr)
            return 2
        keep[name] = int(shard)
    if keep and not args.repair:
        print("mabeamd: --keep goes with --repair", file=sys.stderr)
        return 2
    try:
        report, effects = checkstate.check(paths.state_dir, cfg.variables.history, keep)
        repaired = False
        if args.repair and report.blocked:
            pass  # reported below; nothing written
        elif args.repair and effects:
            checkstate.repair(paths.state_dir, effects)
            repaired = True
    except (StateDirError, OSError) as exc:
        print(f"mabeamd: --check-state: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**report.as_dict(), "repaired": repaired}, indent=2, default=repr))
    else:
        print(checkstate.render(report))
        if repaired:
            print(f"repaired: {len(report.actions)} action(s) written to the shards' WALs")
        elif args.repair and report.blocked:
            print("nothing written: resolve what 'cannot repair' lists first")
    if report.clean or repaired:
        return 0
    return 1


def run_restore(paths: pathsmod.Paths, source: str) -> int:
    from pathlib import Path

    from mabeamd.storage import backup

    try:
        out = backup.restore(Path(source), paths.state_dir)
    except (backup.BackupError, OSError) as exc:
        print(f"mabeamd: --restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {source} into {paths.state_dir}: {out['variables']} variables in "
          f"{out['shards']} shards (checksums verified). Start mabeamd with workers.count = "
          f"{out['shards']}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = args.config
    if config_path is None and pathsmod.DEFAULT_CONFIG.exists():
        config_path = str(pathsmod.DEFAULT_CONFIG)
    overrides = overrides_from(args)
    try:
        cfg = configmod.load(config_path, overrides)
        paths = pathsmod.resolve(cfg)
    except ConfigError as exc:
        print(f"mabeamd: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.reshard is not None:
        return offline(paths, "--reshard", lambda: run_reshard(cfg, paths, args.reshard))
    if args.check_state:
        if not (paths.state_dir / "meta.json").exists():
            print(f"mabeamd: --check-state: {paths.state_dir} is not a mabeamd state "
                  "directory (no meta.json)", file=sys.stderr)
            return 1
        return offline(paths, "--check-state", lambda: run_check_state(cfg, paths, args))
    if args.restore is not None:
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return offline(paths, "--restore", lambda: run_restore(paths, args.restore))
    if args.repair or args.keep or args.json:
        print("mabeamd: --repair, --keep and --json go with --check-state", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"configuration OK: {cfg.source}")
        print(f"runtime_dir     {paths.runtime_dir}")
        print(f"state_dir       {paths.state_dir}")
        print(f"control_socket  {paths.control_socket}")
        return 0

    import uvloop

    from mabeamd.daemon.arbiter import Arbiter, StartupError
    from mabeamd.malloc import return_big_frees

    return_big_frees()
    from mabeamd.logsetup import LogSetup

    logs = LogSetup()
    logs.start(cfg.daemon.log_level)
    started = time.monotonic()
    try:
        arbiter = Arbiter(cfg, paths, config_path=config_path, overrides=overrides, logs=logs)
        return int(uvloop.run(arbiter.run()))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    except Exception:
        log.exception("mabeamd crashed after %.1fs", time.monotonic() - started)
        return 1
    finally:
        logs.stop()


if __name__ == "__main__":
    sys.exit(main())
