"""What each control op does. Handlers take the request body and a progress callback and
return the reply body; they raise WireError for refusals. Argument checking lives here,
next to the op it guards."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pluggy
import zmq

from mabeamd import __version__
from mabeamd.control.server import Handler, Progress
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError, check_fields
from mabeamd.storage import backup
from mabeamd.storage.variables import ADMIN

if TYPE_CHECKING:
    from mabeamd.daemon.arbiter import Arbiter


def _worker_index(arbiter: Arbiter, body: dict[str, Any]) -> list[int]:
    check_fields(body, "workers.restart", {"index"}, {"index"})
    index = body.get("index")
    n = len(arbiter.watchers)
    if index == "all":
        return list(range(n))
    if isinstance(index, bool) or not isinstance(index, int):
        raise WireError(ErrorCode.BAD_REQUEST, "index must be a worker number or \"all\"")
    if not 0 <= index < n:
        raise WireError(ErrorCode.NOT_FOUND, f"no worker {index}; workers are 0..{n - 1}")
    return [index]


def build_handlers(arbiter: Arbiter) -> dict[str, Handler]:
    """The control ops, bound to one arbiter."""

    async def ping(body: dict[str, Any], progress: Progress) -> Any:
        return {"pong": True, "time": time.time()}

    async def version(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "version")
        return {
            "mabeamd": __version__,
            "protocol": wire.PROTOCOL.decode(),
            "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)),
            "pluggy": pluggy.__version__,
        }

    async def status(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "status")
        return arbiter.status()

    async def workers(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "workers")
        return {"workers": [{**w.info(),
                             "shard_endpoint": arbiter.agents.shard_endpoints[w.index],
                             "shard_traffic": arbiter.shard_traffic.get(w.index),
                             "storage": arbiter.storage.get(w.index)}
                            for w in arbiter.watchers]}

    async def workers_restart(body: dict[str, Any], progress: Progress) -> Any:
        indexes = _worker_index(arbiter, body)
        arbiter.refuse_if_stopping()
        results = []
        for i in indexes:  # one at a time: the other workers keep serving meanwhile
            results.append(await arbiter.watchers[i].restart(progress))
        return {"restarted": results}

    async def plugins(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "plugins")
        return {"plugins": [r.to_dict() for r in arbiter.plugins.records.values()]}

    async def reload(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "reload")
        arbiter.refuse_if_stopping()
        result = await arbiter.reload("mabeamctl reload")
        if not result["ok"]:
            raise WireError(ErrorCode.BAD_REQUEST, f"reload refused: {result['error']}")
        return result

    async def stop(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "stop")
        arbiter.request_stop("mabeamctl stop")
        await progress(f"stopping mabeamd (pid {os.getpid()}): "
                       f"{len(arbiter.watchers)} workers")
        while not arbiter.workers_stopped.is_set():
            try:
                await asyncio.wait_for(arbiter.workers_stopped.wait(), 1.0)
            except asyncio.TimeoutError:
                states = [w.state.value for w in arbiter.watchers]
                left = sum(1 for s in states if s in ("stopping", "running", "starting"))
                await progress(f"waiting for {left} worker(s) to exit")
        return {"stopped": True, "pid": os.getpid()}

    async def agents_list(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "agents.list")
        return {"agents": arbiter.agents.admin_list()}

    async def agents_show(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "agents.show", {"agent"}, {"agent"})
        return arbiter.agents.admin_show(str(body.get("agent")))

    async def managed_list(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "managed.list")
        return {"programs": arbiter.managed.info()}

    async def managed_start(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "managed.start", {"name"}, {"name"})
        arbiter.refuse_if_stopping()
        prog = arbiter.managed.program(body.get("name"))
        prog.start()
        return prog.info()

    async def managed_stop(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "managed.stop", {"name"}, {"name"})
        prog = arbiter.managed.program(body.get("name"))
        await progress(f"stopping {prog.name}")
        await prog.stop()
        return prog.info()

    async def managed_restart(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "managed.restart", {"name"}, {"name"})
        arbiter.refuse_if_stopping()
        prog = arbiter.managed.program(body.get("name"))
        await progress(f"stopping {prog.name}")
        await prog.stop()
        prog.start()
        return prog.info()

    async def managed_scale(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "managed.scale", {"name", "count"}, {"name", "count"})
        arbiter.refuse_if_stopping()
        prog = arbiter.managed.program(body.get("name"))
        count = body.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
            raise WireError(ErrorCode.BAD_REQUEST, "count must be 0..1000")
        await progress(f"scaling {prog.name} from {len(prog.procs)} to {count}")
        await prog.scale(count)
        return prog.info()

    def vars_op(op: str, fields: set[str], required: set[str]) -> Handler:
        async def handler(body: dict[str, Any], progress: Progress) -> Any:
            check_fields(body, f"vars.{op}", fields, required)
            return await arbiter.variables.forward(f"var.{op}", body, ADMIN)
        return handler

    async def vars_list(body: dict[str, Any], progress: Progress) -> Any:
        return await arbiter.variables.list_vars(body)

    async def vars_snapshot(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "vars.snapshot")
        out = []
        for i in range(arbiter.shard_calls.shards):
            await progress(f"snapshot of shard {i}")
            out.append(await arbiter.shard_calls.call(i, "var.snapshot", {}, ADMIN))
        return {"shards": out}

    async def backup_cmd(body: dict[str, Any], progress: Progress) -> Any:
        """An online, consistent copy of every shard, with a manifest of checksums
        (storage/backup.py); restore it offline with `mabeamd --restore DIR`."""
        check_fields(body, "backup", {"dir"}, {"dir"})
        target = body["dir"]
        if not isinstance(target, str) or not os.path.isabs(target):
            raise WireError(ErrorCode.BAD_REQUEST, "dir must be an absolute path")
        arbiter.refuse_if_stopping()
        try:
            directory = backup.prepare(Path(target))
        except (backup.BackupError, OSError) as exc:
            raise WireError(ErrorCode.BAD_REQUEST, f"backup: {exc}") from None
        files = []
        for i in range(arbiter.shard_calls.shards):
            await progress(f"backup of shard {i}")
            files.append(await arbiter.shard_calls.call(i, "var.backup",
                                                          {"dir": str(directory)}, ADMIN))
        try:
            manifest = backup.write_manifest(directory, arbiter.shard_calls.shards, files)
        except OSError as exc:
            raise WireError(ErrorCode.BAD_REQUEST, f"backup: {exc}") from None
        return {"dir": str(directory), "manifest": str(manifest), "shards": files}

    async def sessions_list(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "sessions.list", {"state"})
        state = body.get("state")
        if state is not None and not isinstance(state, str):
            raise WireError(ErrorCode.BAD_REQUEST, "state must be a session state")
        return arbiter.sessions.summaries(state)

    async def sessions_show(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "sessions.show", {"session"}, {"session"})
        return await arbiter.sessions.show(body["session"])

    async def sessions_cancel(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "sessions.cancel", {"session", "reason"}, {"session"})
        return await arbiter.sessions.cancel_as(body["session"], "mabeamctl",
                                                body.get("reason"))

    async def sessions_decide(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "sessions.decide", {"session", "decision"}, {"session", "decision"})
        return await arbiter.sessions.decide(body["session"], body["decision"])

    async def protocols_list(body: dict[str, Any], progress: Progress) -> Any:
        check_fields(body, "protocols.list")
        owners = arbiter.plugins.protocol_owner
        return [{**p.describe(), "plugin": owners.get(name)}
                for name, p in sorted(arbiter.sessions.protocols.items())]

    return {
        "backup": backup_cmd,
        "sessions.list": sessions_list,
        "sessions.show": sessions_show,
        "sessions.cancel": sessions_cancel,
        "sessions.decide": sessions_decide,
        "protocols.list": protocols_list,
        "vars.get": vars_op("get", {"name"}, {"name"}),
        "vars.history": vars_op("history", {"name"}, {"name"}),
        "vars.create": vars_op("create", {"name", "value", "type", "access", "writers",
                                          "policy", "constraints"}, {"name"}),
        "vars.set": vars_op("set", {"name", "value", "expect_version"}, {"name", "value"}),
        "vars.delete": vars_op("delete", {"name", "expect_version"}, {"name"}),
        "vars.list": vars_list,
        "vars.snapshot": vars_snapshot,
        "ping": ping,
        "agents.list": agents_list,
        "agents.show": agents_show,
        "managed.list": managed_list,
        "managed.start": managed_start,
        "managed.stop": managed_stop,
        "managed.restart": managed_restart,
        "managed.scale": managed_scale,
        "version": version,
        "status": status,
        "workers": workers,
        "workers.restart": workers_restart,
        "plugins": plugins,
        "reload": reload,
        "stop": stop,
    }

