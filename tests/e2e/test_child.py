"""The Reaper sees child exits at once, through pidfds or the SIGCHLD fallback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest

from mabeamd.daemon.child import Reaper, describe_status


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_reaper_reports_exit_codes_and_signals(use_pidfd: bool) -> None:
    async def run() -> list[tuple[str, int, float]]:
        loop = asyncio.get_running_loop()
        reaper = Reaper(loop, use_pidfd=use_pidfd)
        done: asyncio.Queue[tuple[str, int, float]] = asyncio.Queue()
        procs = {
            "exit3": subprocess.Popen(["sh", "-c", "exit 3"]),
            "sleep": subprocess.Popen(["sleep", "30"]),
        }
        for name, p in procs.items():
            p.returncode = 0  # the Reaper owns waitpid, as in the arbiter
            reaper.watch(p.pid, lambda rc, n=name: done.put_nowait((n, rc, time.monotonic())))
        first = await asyncio.wait_for(done.get(), 5)
        t_kill = time.monotonic()
        # Not Popen.send_signal: with returncode set (the Reaper owns waitpid) it does nothing.
        os.kill(procs["sleep"].pid, signal.SIGKILL)
        second = await asyncio.wait_for(done.get(), 5)
        reaper.close()
        return [first, (second[0], second[1], second[2] - t_kill)]

    (n1, rc1, _), (n2, rc2, latency) = asyncio.run(run())
    assert (n1, rc1) == ("exit3", 3)
    assert (n2, rc2) == ("sleep", -signal.SIGKILL)
    assert latency < 0.5  # event driven, not a polling period


def test_describe_status() -> None:
    assert describe_status(0) == "exit 0"
    assert describe_status(-9) == "killed by SIGKILL"
    assert describe_status(-200) == "killed by signal 200"
