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
    capture: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a child with no inherited descriptors but stdout/stderr: ours, or with
    capture=True one pipe for both (read it with OutputPump).

    The returned Popen must not be waited on by the caller: the Reaper reaps it.
    """
    proc = subprocess.Popen(
        list(argv), env=env, cwd=cwd or None, close_fds=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        restore_signals=True,
    )
    # Popen is only a launcher: mark it done so neither its __del__ nor subprocess's
    # internal clean-up ever calls waitpid on a pid the Reaper owns.
    proc.returncode = 0
    return proc


class OutputPump:
    """Reads a child's output pipe on the event loop and logs it line by line."""

    MAX_LINE = 4096

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, logger: logging.Logger,
                 tag: str) -> None:
        self._loop, self._fd, self._log, self._tag = loop, fd, logger, tag
        self._buf = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > self.MAX_LINE:  # an endless line: log it in pieces
            lines.append(self._buf)
            self._buf = b""
        for line in lines:
            self._log.info("[%s] %s", self._tag, line.decode("utf-8", "replace").rstrip())

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._buf:
            self._log.info("[%s] %s", self._tag, self._buf.decode("utf-8", "replace"))
            self._buf = b""
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1


def send_signal(pid: int, sig: int) -> bool:
    """Signal a pid we have not reaped yet; False if it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False
