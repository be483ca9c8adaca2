"""Where the daemon keeps its sockets and state, resolved the same way by mabeamd and mabeamctl.

An explicit config value wins. Otherwise: what systemd hands us (RuntimeDirectory= and
StateDirectory= set $RUNTIME_DIRECTORY / $STATE_DIRECTORY), then the FHS locations when
root, then the XDG base directories for an unprivileged user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mabeamd.config import (
    MAX_IPC_PATH,
    Config,
    ConfigError,
    Listener,
    check_clashes,
    listeners,
)

DEFAULT_CONFIG = Path("/etc/mabeamd/mabeamd.toml")
SYSTEM_RUNTIME_DIR = Path("/run/mabeamd")  # root's default; systemd's RuntimeDirectory=mabeamd


@dataclass(frozen=True)
class Paths:
    runtime_dir: Path
    state_dir: Path
    control_socket: Path

    @property
    def worker_link(self) -> Path:
        return self.runtime_dir / "workers.sock"

    def endpoint(self, path: Path) -> str:
        return f"ipc://{path}"


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name)
    # systemd joins several directories with ':'; ours is the first.
    return Path(value.split(":")[0]) if value else None


def default_runtime_dir() -> Path:
    env = _from_env("RUNTIME_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "mabeamd" if xdg else Path(f"/tmp/mabeamd-{os.getuid()}")


def default_state_dir() -> Path:
    env = _from_env("STATE_DIRECTORY")
    if env:
        return env
    if os.geteuid() == 0:
        return Path("/var/lib/mabeamd")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "mabeamd"


def resolve(cfg: Config) -> Paths:
    runtime = Path(cfg.daemon.runtime_dir) if cfg.daemon.runtime_dir else default_runtime_dir()
    state = Path(cfg.daemon.state_dir) if cfg.daemon.state_dir else default_state_dir()
    control = Path(cfg.control.socket) if cfg.control.socket else runtime / "control.sock"
    paths = Paths(runtime.absolute(), state.absolute(), control.absolute())
    for label, p in (("[control] socket", paths.control_socket),
                     ("[daemon] runtime_dir", paths.worker_link)):
        if len(os.fsencode(p)) > MAX_IPC_PATH:
            raise ConfigError(
                f"{cfg.source}: {label}: socket path {p} is {len(os.fsencode(p))} bytes; "
                f"expected at most {MAX_IPC_PATH} (the Unix socket limit): choose a shorter "
                "directory")
    # An endpoint on the control socket's or the worker link's path would unlink it at bind.
    check_clashes([Listener("[control] socket", "ipc", path=str(paths.control_socket)),
                   Listener("the worker link (RUNTIME_DIR/workers.sock)", "ipc",
                            path=str(paths.worker_link)), *listeners(cfg)], cfg.source)
    return paths
