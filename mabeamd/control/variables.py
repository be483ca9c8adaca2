"""The universal variables, as the administrator (`@admin`) acts on them, and the two
copies of every shard: a snapshot in place and an online backup elsewhere.

`@admin` writes ignore access modes and conflict policies (the control socket is
root-equivalent) but not constraints; otherwise each vars.* op is its var.* agent op.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress


@command("vars.get", {"name"}, {"name"}, changes=False)
async def get(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """One variable: value, version, type, access, rules.

    Body: {"name"}; reply and refusals as var.get.
    """
    return await host.var_request("var.get", body)


@command("vars.history", {"name"}, {"name"}, changes=False)
async def history(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """A variable's earlier versions, as many as kept.

    Body: {"name"}; reply and refusals as var.history.
    """
    return await host.var_request("var.history", body)


@command("vars.create", {"name", "value", "type", "access", "writers", "policy",
                         "constraints"}, {"name"})
async def create(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Create a variable owned by @admin.

    Body: as var.create without "agent"; reply (the variable) and refusals as var.create.
    """
    return await host.var_request("var.create", body)


@command("vars.set", {"name", "value", "expect_version"}, {"name", "value"})
async def set_(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Set a variable; "expect_version" compares first.

    With "expect_version" the write is made only if the variable is at that version
    (compare-and-set).
    Body: as var.set without "agent"; reply and refusals as var.set.
    """
    return await host.var_request("var.set", body)


@command("vars.delete", {"name", "expect_version"}, {"name"})
async def delete(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Delete a variable, if at "expect_version" when given.

    Body: as var.delete without "agent"; reply and refusals as var.delete.
    """
    return await host.var_request("var.delete", body)


# The variable service checks the body, as for var.list.
@command("vars.list", checked=False, changes=False)
async def list_(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """One page of variables by name prefix, in name order.

    Body: {"prefix"?, "after"?, "limit"?: 1..1000}; reply and refusals as var.list.
    """
    return await host.var_list(body)


@command("vars.snapshot")
async def snapshot(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Snapshot every shard now, one after another.

    Each shard then drops the WAL files it no longer needs.

    Reply: a progress line a shard, then {"shards": [{"shard", "seq", "variables",
    "wal_files_dropped"}]}
    Refused: busy (a shard's worker is restarting).
    """
    out = []
    for i in range(host.worker_count):
        await progress(f"snapshot of shard {i}")
        out.append(await host.to_shard(i, "var.snapshot", {}))
    return {"shards": out}


@command("backup", {"dir"}, {"dir"})
async def backup(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """An online, consistent copy of every shard into DIR.

    With a manifest of checksums. DIR is new or empty; restore the copy offline with
    `mabeamd --restore DIR` (storage/backup.py).
    Body: {"dir": ABSOLUTE PATH}
    Reply: a progress line a shard, then {"dir", "manifest", "shards": [{"shard", "path",
    "seq", "variables", "bytes", "sha256"}]}
    Refused: bad_request (not an absolute path, a directory in use or that cannot be
    written), busy, shutting_down.
    """
    from mabeamd.storage import backup as backups  # when used: mabeamctl reads this module

    target = body["dir"]
    if not isinstance(target, str) or not os.path.isabs(target):
        raise WireError(ErrorCode.BAD_REQUEST, "dir must be an absolute path")
    host.refuse_if_stopping()
    try:
        directory = backups.prepare(Path(target))
    except (backups.BackupError, OSError) as exc:
        raise WireError(ErrorCode.BAD_REQUEST, f"backup: {exc}") from None
    files = []
    for i in range(host.worker_count):
        await progress(f"backup of shard {i}")
        files.append(await host.to_shard(i, "var.backup", {"dir": str(directory)}))
    try:
        manifest = backups.write_manifest(directory, host.worker_count, files)
    except OSError as exc:
        raise WireError(ErrorCode.BAD_REQUEST, f"backup: {exc}") from None
    return {"dir": str(directory), "manifest": str(manifest), "shards": files}
