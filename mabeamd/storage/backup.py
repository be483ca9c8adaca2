"""Online backups and offline restore of a state directory.

`mabeamctl backup DIR` asks every shard's worker -- the only writer of its shard -- to write
a snapshot of its state as of now into DIR/shard-I/snapshot.mp (between two requests of its
batch loop, so the copy is consistent and nothing stops serving for longer than one
snapshot takes), then writes DIR/manifest.json:

    {"format": "mabeamd-backup-1", "created": TIME, "mabeamd": VERSION, "shards": N,
     "files": [{"shard": I, "path": "shard-I/snapshot.mp", "seq": S, "variables": V,
                "bytes": B, "sha256": HEX}]}

Shards are copied one after the other, each at its own instant: shards are independent
(a session's writes live in one shard), so every shard is consistent and nothing
half-applied is copied.

`mabeamd --restore DIR` (offline, on an empty or absent state directory) checks the manifest
and every checksum first, then writes a fresh meta.json (a new instance id) and each shard's
snapshot. Nothing is written if anything does not check out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mabeamd import __version__
from mabeamd.storage import snapshot
from mabeamd.storage.statedir import META, StateDirError, open_state

FORMAT = "mabeamd-backup-1"
MANIFEST = "manifest.json"


class BackupError(Exception):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(directory: Path) -> Path:
    """The backup directory, created 0700; refused if it exists and is not empty."""
    directory = directory.resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def write_shard(directory: Path, index: int, seq: int, states: list[dict[str, Any]],
                ) -> dict[str, Any]:
    """In the shard's worker: its snapshot into the backup; the manifest entry."""
    dest = directory / f"shard-{index}"
    dest.mkdir(mode=0o700, exist_ok=True)
    path = snapshot.write(dest, seq, states)
    return {"shard": index, "path": f"shard-{index}/{snapshot.NAME}", "seq": seq,
            "variables": len(states), "bytes": path.stat().st_size, "sha256": sha256(path)}


def write_manifest(directory: Path, shards: int, files: list[dict[str, Any]]) -> Path:
    manifest = {"format": FORMAT, "created": time.time(), "mabeamd": __version__,
                "shards": shards, "files": sorted(files, key=lambda f: f["shard"])}
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify(directory: Path) -> dict[str, Any]:
    """The manifest, once every file is there with its size and checksum, and loads."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{directory / MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{directory / MANIFEST}: not a {FORMAT} manifest")
    shards = manifest.get("shards")
    files = manifest.get("files")
    indexes = sorted(f["shard"] for f in files if isinstance(f, dict) and isinstance(
        f.get("shard"), int)) if isinstance(files, list) else []
    if not isinstance(shards, int) or shards < 1 or not isinstance(files, list) or \
            indexes != list(range(shards)) or len(files) != shards:
        raise BackupError(f"{directory / MANIFEST}: expected one file for each of its "
                          f"{shards} shards")
    for f in files:
        path = directory / str(f["path"])
        if path.name != snapshot.NAME or path.resolve().parent.parent != directory.resolve():
            raise BackupError(f"manifest path {f['path']!r} leaves the backup")
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            raise BackupError(f"{path}: missing or not {f['bytes']} bytes")
        if sha256(path) != f["sha256"]:
            raise BackupError(f"{path}: checksum mismatch (damaged since the backup)")
        try:
            seq, states = snapshot.load(path.parent)
            count = sum(1 for _ in states)
        except snapshot.SnapshotCorrupt as exc:
            raise BackupError(str(exc)) from exc
        if (seq, count) != (f["seq"], f["variables"]):
            raise BackupError(f"{path}: holds seq {seq} and {count} variables, the manifest "
                              f"says {f['seq']} and {f['variables']}")
    return manifest


def restore(directory: Path, state_dir: Path) -> dict[str, Any]:
    """Offline: the backup into an empty or absent state directory (the caller holds its
    lock). Everything is verified before anything is written."""
    directory = directory.resolve()
    manifest = verify(directory)
    if state_dir.exists() and any(p.name != ".lock" for p in state_dir.iterdir()):
        raise BackupError(f"{state_dir} is not empty: restore only into an empty or new state "
                          "directory (move the old one aside first)")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        meta = open_state(state_dir, manifest["shards"])  # a new instance id
    except StateDirError as exc:
        raise BackupError(str(exc)) from exc
    for f in manifest["files"]:
        dest = state_dir / f"shard-{f['shard']}"
        dest.mkdir(mode=0o700, exist_ok=True)
        tmp = dest / f".{snapshot.NAME}.restore"
        shutil.copyfile(directory / f["path"], tmp)
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest / snapshot.NAME)
    return {"shards": manifest["shards"], "variables": sum(f["variables"]
                                                           for f in manifest["files"]),
            "instance": meta.instance, "meta": str(state_dir / META)}
