"""The agent programs the daemon runs itself ([managed.NAME] in the configuration)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress

MAX_SCALE = 1000


@command("managed.list", changes=False)
async def managed_list(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Every managed program and its processes.

    Reply: {"programs": [{"name", "cmd", "restart", "numprocesses",
    "processes": [{"agent", "state", "pid", "uptime", "restarts", "last_exit"}]}]}
    """
    return {"programs": host.managed_rows()}


@command("managed.start", {"name"}, {"name"})
async def managed_start(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Start a managed program's processes not running.

    Body: {"name": NAME}
    Reply: the program, as in managed.list
    Refused: not_found, shutting_down.
    """
    host.refuse_if_stopping()
    prog = host.managed_program(body.get("name"))
    prog.start()
    return prog.info()


@command("managed.stop", {"name"}, {"name"})
async def managed_stop(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Stop a managed program's processes until started.

    Body: {"name": NAME}
    Reply: a progress line, then the program
    Refused: not_found.
    """
    prog = host.managed_program(body.get("name"))
    await progress(f"stopping {prog.name}")
    await prog.stop()
    return prog.info()


@command("managed.restart", {"name"}, {"name"})
async def managed_restart(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Stop a managed program's processes, then start them.

    Body: {"name": NAME}
    Reply: a progress line, then the program
    Refused: not_found, shutting_down.
    """
    host.refuse_if_stopping()
    prog = host.managed_program(body.get("name"))
    await progress(f"stopping {prog.name}")
    await prog.stop()
    prog.start()
    return prog.info()


@command("managed.scale", {"name", "count"}, {"name", "count"})
async def managed_scale(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Run COUNT processes of a managed program.

    New ones are started, or the last ones stopped.

    Body: {"name": NAME, "count": 0..1000}
    Reply: a progress line, then the program
    Refused: bad_request (count), not_found, shutting_down.
    """
    host.refuse_if_stopping()
    prog = host.managed_program(body.get("name"))
    count = body.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SCALE:
        raise WireError(ErrorCode.BAD_REQUEST, f"count must be 0..{MAX_SCALE}")
    await progress(f"scaling {prog.name} from {len(prog.procs)} to {count}")
    await prog.scale(count)
    return prog.info()
