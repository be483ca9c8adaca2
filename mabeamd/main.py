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


def run_reshard(cfg: configmod.Config, paths: pathsmod.Paths, shards: int) -> int:
    from mabeamd.reshard import reshard
    from mabeamd.statedir import StateDirError, lock_state_dir
    from mabeamd.wal import WalCorrupt

    try:
        fd = lock_state_dir(paths.state_dir, "--reshard")
    except (StateDirError, OSError) as exc:
        print(f"mabeamd: {exc}", file=sys.stderr)
        return 1
    try:
        out = reshard(paths.state_dir, shards, cfg.variables.history)
    except (StateDirError, WalCorrupt, OSError) as exc:
        print(f"mabeamd: --reshard: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)
    print(f"resharded {paths.state_dir}: {out['variables']} variables from {out['from']} to "
          f"{out['to']} shards; old shards kept as {out['backup']}. Set workers.count = "
          f"{out['to']} before starting.")
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
        return run_reshard(cfg, paths, args.reshard)
    if args.check_config:
        print(f"configuration OK: {cfg.source}")
        print(f"runtime_dir     {paths.runtime_dir}")
        print(f"state_dir       {paths.state_dir}")
        print(f"control_socket  {paths.control_socket}")
        return 0

    import uvloop

    from mabeamd.arbiter import Arbiter, StartupError
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
