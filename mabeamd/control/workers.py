"""The worker slots: list them, restart one or all."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress


@command("workers", changes=False)
async def workers(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Every worker slot: state, pid, CPU, memory, restarts.

    Reply: {"workers": [{"index", "state", "pid", "generation", "uptime",
    "last_heartbeat_age", "restarts", "crashes", "start_failures", "spawn_failures",
    "hung_kills", "failures_in_window", "last_exit", "last_exit_time", "restart_in",
    "cpu_percent", "cpu_seconds", "rss", "shard_endpoint", "shard_traffic", "storage"}]}
    """
    return {"workers": host.worker_rows()}


@command("workers.restart", {"index"}, {"index"})
async def restart(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Restart worker N, or all of them one at a time.

    The others keep serving meanwhile. Each is stopped if running, its crash budget
    cleared, started, and waited for until it runs or fails.
    Body: {"index": N} or {"index": "all"}
    Reply: progress lines, then {"restarted": [{"index", "old_pid", "pid", "state"}]}
    Refused: bad_request (neither a number nor "all"), not_found (no such worker),
    shutting_down.
    """
    indexes = worker_indexes(host.worker_count, body["index"])
    host.refuse_if_stopping()
    results = []
    for i in indexes:
        results.append(await host.restart_worker(i, progress))
    return {"restarted": results}


def worker_indexes(n: int, index: Any) -> list[int]:
    if index == "all":
        return list(range(n))
    if isinstance(index, bool) or not isinstance(index, int):
        raise WireError(ErrorCode.BAD_REQUEST, "index must be a worker number or \"all\"")
    if not 0 <= index < n:
        raise WireError(ErrorCode.NOT_FOUND, f"no worker {index}; workers are 0..{n - 1}")
    return [index]
