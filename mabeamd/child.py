"""Spawning child processes and learning of their exit at once.

Exit detection uses a pidfd (Linux >= 5.3) registered with the event loop: the loop wakes
the moment the child dies, with no polling and no race with pid reuse. Where pidfd_open is
missing we fall back to a SIGCHLD handler that reaps the children we know. Either way this
module is the only place that calls waitpid, so nothing else may reap our children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

ExitCallback = Callable[[int], None]


def describe_status(returncode: int) -> str:
    """'exit 3' / 'killed by SIGKILL' for a Popen-style return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


class Reaper:
    """Watches child pids on an event loop and calls back with the return code once each."""

    def __init__(self, loop: asyncio.AbstractEventLoop, use_pidfd: bool = True) -> None:
        self._loop = loop
        self._callbacks: dict[int, ExitCallback] = {}
        self._pidfds: dict[int, int] = {}
        self._use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self._sigchld_installed = False

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self._callbacks[pid] = callback
        if self._use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except OSError as exc:  # ENOSYS on old kernels: fall back for good
                log.warning("pidfd_open unavailable (%s); using SIGCHLD", exc)
                self._use_pidfd = False
            else:
                self._pidfds[pid] = fd
                self._loop.add_reader(fd, self._on_pidfd, pid)
                return
        if not self._sigchld_installed:
            self._loop.add_signal_handler(signal.SIGCHLD, self._reap_all)
            self._sigchld_installed = True
        self._reap_all()  # the child may already be gone

    def _on_pidfd(self, pid: int) -> None:
        self._try_reap(pid)

    def _reap_all(self) -> None:
        for pid in list(self._callbacks):
            self._try_reap(pid)

    def _try_reap(self, pid: int) -> None:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got, status = pid, 255 << 8  # already reaped elsewhere: report as failure
        if got == 0:
            return
        self._forget(pid)
        callback = self._callbacks.pop(pid, None)
        if callback is not None:
            callback(os.waitstatus_to_exitcode(status))

    def _forget(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._pidfds):
            self._forget(pid)
        if self._sigchld_installed:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._sigchld_installed = False


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child with inherited stdout/stderr and no other inherited descriptors.

    The returned Popen must not be waited on by the caller: the Reaper reaps it.
    """
    return subprocess.Popen(
        list(argv), env=env, cwd=cwd, close_fds=True, stdin=subprocess.DEVNULL,
        restore_signals=True,
    )


def send_signal(pid: int, sig: int) -> bool:
    """Signal a pid we have not reaped yet; False if it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False
