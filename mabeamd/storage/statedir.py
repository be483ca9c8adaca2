"""The state directory's identity: how many shards it was created with, and its instance id
(which names its shared-memory segments, so two daemons never read each other's).

The shard count is fixed when the directory is created: a different workers.count later is
refused, because rehashing every variable is a deliberate operation (`mabeamd --reshard N`),
never a side effect of a config edit.

One daemon per state directory: the arbiter holds an flock on the directory itself for its
whole life (the runtime directory's lock does not cover a second daemon started with another
runtime directory, and two of them once acknowledged writes with the same sequence numbers
into one WAL). Offline tools (`--reshard`, `--check-state`) take the same lock. Each worker
also locks its own shard directory, so a worker left over from a crashed daemon can never
write beside its replacement.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

META = "meta.json"


class StateDirError(Exception):
    pass


@dataclass(frozen=True)
class StateMeta:
    shards: int
    instance: str

    @property
    def shm_prefix(self) -> str:
        return f"mabeamd-{self.instance}"


def lock_dir(path: Path, wait: float = 0.0, poll: Callable[[], None] = lambda: None) -> int:
    """An exclusive flock on directory `path`; returns the fd that holds it (closing it
    releases it). Waits up to `wait` seconds for a holder to go, calling `poll` between
    tries; raises BlockingIOError when it is still held then."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise
        poll()
        time.sleep(0.05)


def lock_state_dir(state_dir: Path, what: str = "mabeamd", wait: float = 0.0) -> int:
    """The one-daemon-per-state-directory lock; StateDirError naming the holder if taken
    (still, after `wait` seconds)."""
    try:
        return lock_dir(state_dir, wait=wait)
    except BlockingIOError:
        raise StateDirError(
            f"{what}: state directory {state_dir} is in use by another mabeamd (or an "
            "offline tool such as --reshard); one daemon per state directory: stop the other "
            "one first, or give this one its own state_dir") from None


def open_state(state_dir: Path, shards: int) -> StateMeta:
    path = state_dir / META
    if path.exists():
        try:
            data = json.loads(path.read_text())
            meta = StateMeta(int(data["shards"]), str(data["instance"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateDirError(f"{path}: unreadable ({exc})") from exc
        if meta.shards != shards:
            raise StateDirError(
                f"{state_dir} holds {meta.shards} shards but workers.count gives {shards}: "
                f"set workers.count = {meta.shards}, or stop and run `mabeamd --reshard "
                f"{shards}` with the same configuration first (docs/operations.md)")
        return meta
    meta = StateMeta(shards, secrets.token_hex(4))
    write_private(path, json.dumps({"shards": shards, "instance": meta.instance,
                                    "created": time.time()}) + "\n")
    return meta


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def exposed(state_dir: Path) -> str | None:
    """Why the state directory can be read by other users (values are in its files), or
    None. Only the directory itself is looked at: the files in it are created 0600."""
    mode = os.stat(state_dir).st_mode & 0o777
    if mode & 0o077:
        return (f"state directory {state_dir} has mode {mode:04o}: other users may read "
                f"every variable's value from its files; chmod 700 {state_dir}")
    return None


def check_shm(shm_dir: Path, min_free: int) -> None:
    try:
        st = os.statvfs(shm_dir)
    except OSError as exc:
        raise StateDirError(f"[variables] shm_dir {shm_dir}: {exc.strerror}") from exc
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        raise StateDirError(f"only {free >> 20} MiB free in {shm_dir}; [variables] "
                            f"min_free_shm asks for {min_free >> 20} MiB (enlarge the tmpfs, "
                            "e.g. mount -o remount,size=1G /dev/shm)")


def segment_group(name: str) -> int | None:
    """The gid `[variables] shm_group` names (None when empty: the daemon's own group).
    Checked here, in the daemon's own process, not at config check: whether the daemon's
    user may give its files to that group depends on who runs it, and a worker that could
    not would fail on every restart."""
    if not name:
        return None
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise StateDirError(f"[variables] shm_group: no group {name!r}") from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise StateDirError(
            f"[variables] shm_group: the daemon's user is not a member of {name!r}, so it "
            f"cannot give the segments to that group: add it (under systemd: "
            f"SupplementaryGroups={name}), or leave shm_group empty")
    return gid


def remove_segments(shm_dir: Path, prefix: str) -> int:
    n = 0
    for f in shm_dir.glob(f"{prefix}-s*"):
        try:
            f.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
