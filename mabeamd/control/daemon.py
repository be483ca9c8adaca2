"""The daemon itself: ping, version, status, plugins, reload, stop."""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING, Any

import msgpack
import pluggy
import zmq

from mabeamd import __version__
from mabeamd.control.command import command
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress

BUSY_STATES = ("stopping", "running", "starting")  # a worker in one has not exited yet


@command("ping", checked=False, changes=False)
async def ping(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Whether the daemon answers; any body.

    Reply: {"pong": true, "time": UNIX_SECONDS}
    """
    return {"pong": True, "time": time.time()}


@command("version", changes=False)
async def version(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """The daemon's version, its protocol's and libraries'.

    Reply: {"mabeamd", "protocol", "python", "pyzmq", "libzmq", "msgpack", "pluggy"}
    """
    return {
        "mabeamd": __version__,
        "protocol": wire.PROTOCOL.decode(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "pluggy": pluggy.__version__,
    }


@command("status", changes=False)
async def status(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """The daemon's state, uptime, directories and counters.

    Worker, agent, session and traffic counts; plugins add theirs under "extensions".
    Reply: {"pid", "version", "state" (starting/running/stopping), "summary", "uptime",
    "workers": {"total", STATE: COUNT}, "agents", "sessions", "managed", "control",
    "loop_lag", "storage", "extensions", ...}: docs/protocol.md lists every field.
    """
    return host.status()


@command("plugins", changes=False)
async def plugins(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Every plugin found: active, failed or disabled.

    With the hooks each implements and the error of a failed one.
    Reply: {"plugins": [{"name", "value", "dist", "version", "state", "error", "hooks"}]}
    """
    return {"plugins": host.plugin_records()}


@command("reload")
async def reload(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Reload the configuration and the plugins.

    Like SIGHUP, but the reply says what changed and what needs a restart.

    Reply: {"ok": true, "changed": [KEY], "restart_required": [KEY], "plugins": {...}}
    Refused: bad_request "reload refused: ..." (the running configuration is kept),
    shutting_down.
    """
    host.refuse_if_stopping()
    result = await host.reload("mabeamctl reload")
    if not result["ok"]:
        raise WireError(ErrorCode.BAD_REQUEST, f"reload refused: {result['error']}")
    return result


@command("stop")
async def stop(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Stop gracefully; answer once every worker has exited.

    Progress lines at least once a second while workers are still stopping.
    Reply: {"stopped": true, "pid": PID}; the process exits right after.
    """
    host.request_stop("mabeamctl stop")
    await progress(f"stopping mabeamd (pid {os.getpid()}): {host.worker_count} workers")
    while not await host.wait_workers_stopped(1.0):
        left = sum(1 for s in host.worker_states() if s in BUSY_STATES)
        await progress(f"waiting for {left} worker(s) to exit")
    return {"stopped": True, "pid": os.getpid()}
