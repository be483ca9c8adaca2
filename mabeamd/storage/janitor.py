"""The segment janitor: removes a daemon's shared-memory segments once its arbiter is gone,
however it went.

The arbiter removes its segments when it stops; killed with -9 it cannot, and its workers
(SIGKILLed by the kernel the moment it dies) cannot either, so the files stayed in
/dev/shm -- RAM on a tmpfs -- until the same state directory was started again. The janitor
is a tiny process started at start-up: it holds the read end of a pipe whose write end only
the arbiter has, and when that end closes (the arbiter exited, for any reason) it unlinks
the files and exits. It also holds the state directory's lock until it is done, so a daemon
restarted on the same directory at once waits for it instead of having its new segments
(same names) removed under it.

It is not the arbiter's child (it forks once and the first process exits at once), so
nothing in the arbiter reaps it or counts it as a worker; it sits in its own session, so a
Ctrl-C in the terminal does not reach it; SIGTERM (systemd stopping the unit's cgroup)
makes it clean up and exit. It imports nothing from mabeamd: it starts in milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CODE = r"""
import os, signal, sys
shm_dir, prefix, pipe_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
if os.fork():
    os._exit(0)
def clean(*_):
    try:
        names = os.listdir(shm_dir)
    except OSError:
        names = []
    for name in names:
        if name.startswith(prefix + "-s"):
            try:
                os.unlink(os.path.join(shm_dir, name))
            except OSError:
                pass
    os._exit(0)
signal.signal(signal.SIGTERM, clean)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
while True:
    try:
        if not os.read(pipe_fd, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
clean()
"""


def start(shm_dir: Path, prefix: str, lock_fd: int) -> int:
    """Start the janitor for segments `prefix-s*` in `shm_dir`; returns the pipe's write end
    (keep it open for the arbiter's life; it is close-on-exec, so no worker holds it)."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", CODE, str(shm_dir), prefix, str(r)],
            pass_fds=(r, lock_fd), close_fds=True, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        proc.wait()  # the first process exits as soon as it has forked the janitor
    finally:
        os.close(r)
    return w
