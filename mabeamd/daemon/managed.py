"""Managed agents: the [managed.NAME] programs the daemon launches and keeps running.

Each program runs `numprocesses` copies; copy i is agent id NAME/i. A copy is started with
MABEAM_ENDPOINT, MABEAM_AGENT_ID and MABEAM_AGENT_TOKEN in its environment (the token lets a
restarted copy take over its predecessor's registration at once), its stdout and stderr go to
the daemon's log tagged with the agent id, and it is restarted by the program's policy:

    always       restart whenever it exits
    on-failure   restart when it exits non-zero or is killed by a signal
    never        leave it stopped

Restarts use the same backoff and crash budget as workers (backoff.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from typing import Any

from mabeamd.agents.registry import Registry
from mabeamd.config import ManagedSection
from mabeamd.daemon.backoff import BackoffSettings, RestartPolicy
from mabeamd.daemon.child import OutputPump, Reaper, describe_status, send_signal, spawn
from mabeamd.net.wire import ErrorCode, WireError

log = logging.getLogger("mabeamd.managed")


def _backoff(s: ManagedSection) -> BackoffSettings:
    return BackoffSettings(s.backoff_initial, s.backoff_max, s.backoff_factor, s.backoff_jitter,
                           s.max_restarts, s.restart_window)


class ManagedProcess:
    def __init__(self, program: ManagedProgram, index: int) -> None:
        self.program = program
        self.index = index
        self.agent_id = f"{program.name}/{index}"
        self.token = secrets.token_urlsafe(16)
        self.state = "stopped"  # running | backoff | stopping | stopped | exited | failed
        self.pid: int | None = None
        self.started_at = 0.0
        self.starts = 0
        self.restarts = 0
        self.last_exit: str | None = None
        self.policy = RestartPolicy(_backoff(program.settings))
        self._exited = asyncio.Event()
        self._exited.set()
        self._timer: asyncio.TimerHandle | None = None
        self._pump: OutputPump | None = None
        program.sup.registry.preassign(self.agent_id, self.token, program.name)

    def start(self) -> None:
        self._cancel_timer()
        s = self.program.settings
        sup = self.program.sup
        env = {**sup.base_env, **s.env, **sup.agent_env, "MABEAM_AGENT_ID": self.agent_id,
               "MABEAM_AGENT_TOKEN": self.token, "MABEAM_MANAGED_NAME": self.program.name}
        if self.starts:
            self.restarts += 1
        self.starts += 1
        try:
            proc = spawn([s.cmd, *s.args], env, s.cwd or None, capture=True)
        except OSError as exc:
            self.last_exit = f"spawn failed: {exc}"
            log.error("%s: spawn failed: %s", self.agent_id, exc)
            self._after_exit(failed=True)
            return
        assert proc.stdout is not None
        self._pump = OutputPump(asyncio.get_running_loop(), os.dup(proc.stdout.fileno()), log,
                                self.agent_id)
        proc.stdout.close()
        self.pid = proc.pid
        self.state = "running"
        self.started_at = time.monotonic()
        self._exited = asyncio.Event()
        sup.reaper.watch(proc.pid, self._on_exit)
        log.info("%s: started pid %d", self.agent_id, proc.pid)

    def _on_exit(self, returncode: int) -> None:
        status = describe_status(returncode)
        self.last_exit = status
        self.pid = None
        self._exited.set()
        if self.state == "stopping":
            self.state = "stopped"
            log.info("%s: stopped (%s)", self.agent_id, status)
            return
        log.warning("%s: exited (%s)", self.agent_id, status)
        self._after_exit(failed=returncode != 0)

    def _after_exit(self, failed: bool) -> None:
        mode = self.program.settings.restart
        if mode == "never" or (mode == "on-failure" and not failed):
            self.state = "exited"
            return
        delay = self.policy.record_failure(time.monotonic())
        if delay is None:
            self.state = "failed"
            log.error("%s: FAILED: restart budget spent; `mabeamctl agents restart %s` "
                      "starts it again", self.agent_id, self.program.name)
            return
        self.state = "backoff"
        self._timer = asyncio.get_running_loop().call_later(delay, self.start)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def stop(self) -> None:
        self._cancel_timer()
        if self.pid is None:
            if self.state in ("backoff", "running"):
                self.state = "stopped"
            return
        pid = self.pid
        self.state = "stopping"
        send_signal(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), self.program.settings.stop_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: no exit %gs after SIGTERM; SIGKILL", self.agent_id,
                        self.program.settings.stop_timeout)
            send_signal(pid, signal.SIGKILL)
            await self._exited.wait()

    def info(self) -> dict[str, Any]:
        return {"agent": self.agent_id, "state": self.state, "pid": self.pid,
                "uptime": (round(time.monotonic() - self.started_at, 3)
                           if self.state == "running" else None),
                "restarts": self.restarts, "last_exit": self.last_exit}


class ManagedProgram:
    def __init__(self, sup: ManagedSupervisor, name: str, settings: ManagedSection) -> None:
        self.sup = sup
        self.name = name
        self.settings = settings
        self.procs = [ManagedProcess(self, i) for i in range(settings.numprocesses)]

    def start(self) -> None:
        for p in self.procs:
            if p.pid is None:
                p.policy.reset()
                p.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs))

    async def scale(self, n: int) -> None:
        while len(self.procs) > n:
            p = self.procs.pop()
            await p.stop()
            self.sup.registry.release(p.agent_id)
        while len(self.procs) < n:
            p = ManagedProcess(self, len(self.procs))
            self.procs.append(p)
            p.start()

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "cmd": self.settings.cmd, "restart": self.settings.restart,
                "numprocesses": len(self.procs), "processes": [p.info() for p in self.procs]}


class ManagedSupervisor:
    def __init__(self, reaper: Reaper, registry: Registry, base_env: dict[str, str],
                 agent_env: dict[str, str]) -> None:
        self.reaper = reaper
        self.registry = registry
        self.base_env = base_env
        self.agent_env = agent_env  # MABEAM_ENDPOINT (and the server key for CURVE)
        self.programs: dict[str, ManagedProgram] = {}

    def start_all(self, config: dict[str, ManagedSection]) -> None:
        for name, settings in config.items():
            self.programs[name] = prog = ManagedProgram(self, name, settings)
            prog.start()

    def program(self, name: Any) -> ManagedProgram:
        prog = self.programs.get(name) if isinstance(name, str) else None
        if prog is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no managed program {name!r}; configured: "
                            f"{', '.join(sorted(self.programs)) or 'none'}")
        return prog

    async def apply(self, config: dict[str, ManagedSection]) -> list[str]:
        """Reload: start new programs, stop removed ones, restart changed ones."""
        changes = []
        for name in sorted(set(self.programs) - set(config)):
            await self.programs.pop(name).stop()
            changes.append(f"stopped {name}")
        for name, settings in sorted(config.items()):
            old = self.programs.get(name)
            if old is not None and old.settings == settings:
                continue
            if old is not None:
                await old.stop()
            self.programs[name] = prog = ManagedProgram(self, name, settings)
            prog.start()
            changes.append(f"{'restarted' if old else 'started'} {name}")
        return changes

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.programs.values()))

    def info(self) -> list[dict[str, Any]]:
        return [p.info() for _, p in sorted(self.programs.items())]
