"""WorkerWatcher: supervises one worker slot (spawn, liveness, restart policy, stop).

States:
    STARTING  spawned, waiting for the worker's hello
    RUNNING   said hello; heartbeats keep it alive
    BACKOFF   died unexpectedly; a restart is scheduled
    STOPPING  asked to stop (TERM, then KILL after workers.stop_timeout)
    STOPPED   stopped on purpose
    FAILED    crash budget spent; stays down until `mabeamctl workers restart N`

Every unplanned exit burns the crash budget. It is counted as a *crash* when the worker had
said hello, as a *start failure* when it died (or was killed for silence) before that, and
as a *spawn failure* when the exec itself failed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from mabeamd.config import WorkersSection
from mabeamd.control.server import Progress
from mabeamd.daemon.backoff import BackoffSettings, RestartPolicy
from mabeamd.daemon.child import Reaper, describe_status, send_signal, spawn

log = logging.getLogger(__name__)



class State(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class WatcherHost(Protocol):
    """What a watcher needs from the arbiter (kept narrow so the watcher is testable alone)."""

    reaper: Reaper

    def worker_argv(self, index: int, generation: int) -> list[str]: ...

    def worker_env(self) -> dict[str, str]: ...

    async def send_to_worker(self, index: int, generation: int, op: str) -> bool: ...

    def worker_event(self, index: int, event: str, details: dict[str, Any]) -> None: ...


def backoff_settings(w: WorkersSection) -> BackoffSettings:
    return BackoffSettings(w.backoff_initial, w.backoff_max, w.backoff_factor, w.backoff_jitter,
                           w.max_restarts, w.restart_window)


@dataclass
class Counters:
    restarts: int = 0  # spawns after the first one, automatic or by an admin
    crashes: int = 0
    start_failures: int = 0
    spawn_failures: int = 0
    hung_kills: int = 0


class WorkerWatcher:
    def __init__(self, index: int, host: WatcherHost, settings: WorkersSection) -> None:
        self.index = index
        self.host = host
        self.settings = settings
        self.policy = RestartPolicy(backoff_settings(settings))
        self.state = State.STOPPED
        self.generation = 0
        self.pid: int | None = None
        self.counters = Counters()
        self.spawned_at = 0.0  # monotonic
        self.ready_at = 0.0
        self.last_seen = 0.0
        self.last_exit: str | None = None
        self.last_exit_wall: float | None = None
        self.next_start_at: float | None = None
        self._kill_reason: str | None = None
        self._exited = asyncio.Event()
        self._exited.set()
        self._settled = asyncio.Event()  # RUNNING or FAILED since the last (re)start
        self._restart_timer: asyncio.TimerHandle | None = None
        self._ps: psutil.Process | None = None
        self._lock = asyncio.Lock()  # serialises admin stop/restart of this slot only

    # --- configuration ---------------------------------------------------------------------

    def reconfigure(self, settings: WorkersSection) -> None:
        self.settings = settings
        self.policy.settings = backoff_settings(settings)

    # --- spawning --------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the worker now (from STOPPED, BACKOFF or FAILED)."""
        self._cancel_timer()
        if self.generation > 0:
            self.counters.restarts += 1
        self.generation += 1
        gen = self.generation
        self._settled.clear()
        self._kill_reason = None
        self.next_start_at = None
        try:
            proc = spawn(self.host.worker_argv(self.index, gen), self.host.worker_env())
        except OSError as exc:
            self.counters.spawn_failures += 1
            self._record_exit(f"spawn failed: {exc}")
            log.error("worker %d: spawn failed: %s", self.index, exc)
            self.host.worker_event(self.index, "spawn_failed",
                                   {"pid": None, "generation": gen, "error": str(exc)})
            self._after_failure()
            return
        self.pid = proc.pid
        self.state = State.STARTING
        self.spawned_at = time.monotonic()
        self._exited = asyncio.Event()
        self._ps = None
        self.host.reaper.watch(proc.pid, lambda rc: self._on_exit(gen, rc))
        log.debug("worker %d: spawned pid %d (generation %d)", self.index, proc.pid, gen)
        self.host.worker_event(self.index, "spawned", {"pid": proc.pid, "generation": gen})

    def on_hello(self, generation: int, pid: int) -> None:
        if generation != self.generation or self.state is not State.STARTING:
            return
        self.state = State.RUNNING
        self.ready_at = self.last_seen = time.monotonic()
        self._settled.set()
        log.info("worker %d: running (pid %d, started in %.0f ms)", self.index, pid,
                 (self.ready_at - self.spawned_at) * 1000)
        self.host.worker_event(self.index, "running", {"pid": pid, "generation": generation})

    def on_heartbeat(self, generation: int) -> None:
        if generation == self.generation:
            self.last_seen = time.monotonic()

    def on_loading(self, generation: int) -> None:
        """A starting worker still loading its shard: start_timeout counts from now."""
        if generation == self.generation and self.state is State.STARTING:
            self.last_seen = time.monotonic()

    # --- exits -----------------------------------------------------------------------------

    def _record_exit(self, text: str) -> None:
        self.last_exit = text
        self.last_exit_wall = time.time()

    def _on_exit(self, generation: int, returncode: int) -> None:
        status = describe_status(returncode)
        pid = self.pid
        self.pid = None
        self._ps = None
        self._exited.set()
        planned = self.state is State.STOPPING
        was_running = self.state is State.RUNNING
        reason = f" ({self._kill_reason})" if self._kill_reason else ""
        self._record_exit(status + reason)
        # Leave RUNNING/STARTING before observers hear of the exit, so what they read
        # (e.g. the STATUS= line sent to systemd) already counts this worker as down.
        self.state = State.STOPPED if planned else State.BACKOFF
        self.host.worker_event(self.index, "exited", {"pid": pid, "generation": generation,
                                                      "status": status, "planned": planned})
        if planned:
            log.info("worker %d: stopped (%s)", self.index, status)
            self.host.worker_event(self.index, "stopped", {"pid": pid, "generation": generation})
            return
        if was_running:
            self.counters.crashes += 1
            log.error("worker %d (pid %s): died: %s%s", self.index, pid, status, reason)
        else:
            self.counters.start_failures += 1
            log.error("worker %d (pid %s): failed to start: %s%s", self.index, pid, status,
                      reason)
        self._after_failure()

    def _after_failure(self) -> None:
        delay = self.policy.record_failure(time.monotonic())
        if delay is None:
            self.state = State.FAILED
            self._settled.set()
            s = self.policy.settings
            log.error("worker %d: FAILED: more than %d failures in %gs; it stays down until "
                      "`mabeamctl workers restart %d`", self.index, s.max_restarts, s.window,
                      self.index)
            self.host.worker_event(self.index, "failed",
                                   {"pid": None, "generation": self.generation})
            return
        self.state = State.BACKOFF
        self.next_start_at = time.monotonic() + delay
        log.info("worker %d: restarting in %.2fs", self.index, delay)
        self._restart_timer = asyncio.get_running_loop().call_later(delay, self.start)

    def _cancel_timer(self) -> None:
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None

    # --- liveness --------------------------------------------------------------------------

    def excuse(self, seconds: float) -> None:
        """The arbiter's own loop stalled this long: the silence it could not hear (the
        worker's heartbeats sat queued in the link meanwhile) is not the worker's."""
        self.last_seen += seconds
        self.spawned_at += seconds

    def check_liveness(self, now: float) -> None:
        """Kill a worker that went silent (RUNNING) or never said hello (STARTING)."""
        if self.pid is None or self._kill_reason:
            return
        if self.state is State.RUNNING and now - self.last_seen > self.settings.heartbeat_timeout:
            self._kill_reason = f"hung: no heartbeat for {now - self.last_seen:.1f}s"
            self.counters.hung_kills += 1
            self.host.worker_event(self.index, "hung",
                                   {"pid": self.pid, "generation": self.generation})
        elif self.state is State.STARTING and \
                now - max(self.spawned_at, self.last_seen) > self.settings.start_timeout:
            # Which silence it was tells the operator what to change: a process that never
            # spoke (a loaded host starting Python, a wrapper that hangs) or a load that
            # stopped reporting progress (a stuck disk, a wedged worker).
            if self.last_seen <= self.spawned_at:
                self._kill_reason = (f"no sign of life within {self.settings.start_timeout:g}s "
                                     "of its start (start_timeout)")
            else:
                self._kill_reason = (f"loading progress stopped: silent for "
                                     f"{now - self.last_seen:.1f}s (start_timeout "
                                     f"{self.settings.start_timeout:g}s)")
        else:
            return
        log.error("worker %d (pid %d): %s; killing it", self.index, self.pid, self._kill_reason)
        send_signal(self.pid, signal.SIGKILL)

    # --- stopping and admin restarts -------------------------------------------------------

    async def stop(self, progress: Progress | None = None) -> None:
        """Stop on purpose: ask nicely over the link and with SIGTERM, SIGKILL after
        workers.stop_timeout. Returns once the process is reaped."""
        self._cancel_timer()
        if self.pid is None:
            if self.state is not State.FAILED:
                self.state = State.STOPPED
            self.next_start_at = None
            return
        pid = self.pid
        self.state = State.STOPPING
        await self.host.send_to_worker(self.index, self.generation, "stop")
        send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout
        while not self._exited.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("worker %d (pid %d): no exit %gs after SIGTERM; sending SIGKILL",
                            self.index, pid, self.settings.stop_timeout)
                if progress:
                    await progress(f"worker {self.index}: SIGKILL after "
                                   f"{self.settings.stop_timeout:g}s")
                send_signal(pid, signal.SIGKILL)
                await self._exited.wait()
                break
            try:
                await asyncio.wait_for(self._exited.wait(), timeout=min(1.0, left))
            except asyncio.TimeoutError:
                if progress:
                    await progress(f"worker {self.index}: waiting for pid {pid} to exit")

    def kill_now(self) -> None:
        self._cancel_timer()
        if self.pid is not None:
            self.state = State.STOPPING
            send_signal(self.pid, signal.SIGKILL)

    async def restart(self, progress: Progress) -> dict[str, Any]:
        """Admin restart: stop if running, clear the crash budget, start, wait until settled."""
        async with self._lock:
            old = self.pid
            if old is not None:
                await progress(f"worker {self.index}: stopping pid {old}")
                await self.stop(progress)
            self.policy.reset()
            self.start()
            if self.pid is not None:
                await progress(f"worker {self.index}: started pid {self.pid}, waiting for hello")
            while not self._settled.is_set():
                try:
                    await asyncio.wait_for(self._settled.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    await progress(f"worker {self.index}: {self.state.value}")
            return {"index": self.index, "old_pid": old, "pid": self.pid,
                    "state": self.state.value}

    async def wait_settled(self) -> None:
        await self._settled.wait()

    async def wait_exited(self) -> None:
        await self._exited.wait()

    # --- introspection ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        d: dict[str, Any] = {
            "index": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "generation": self.generation,
            "uptime": round(now - self.ready_at, 3) if self.state is State.RUNNING else None,
            "last_heartbeat_age": (round(now - self.last_seen, 3)
                                   if self.state is State.RUNNING else None),
            "restarts": self.counters.restarts,
            "crashes": self.counters.crashes,
            "start_failures": self.counters.start_failures,
            "spawn_failures": self.counters.spawn_failures,
            "hung_kills": self.counters.hung_kills,
            "failures_in_window": self.policy.failures_in_window(now),
            "last_exit": self.last_exit,
            "last_exit_time": self.last_exit_wall,
            "restart_in": (round(max(0.0, self.next_start_at - now), 3)
                           if self.next_start_at is not None else None),
            "cpu_percent": None, "cpu_seconds": None, "rss": None,
        }
        if self.pid is not None:
            try:
                if self._ps is None or self._ps.pid != self.pid:
                    self._ps = psutil.Process(self.pid)
                    self._ps.cpu_percent(None)  # primes the counter; next call is meaningful
                with self._ps.oneshot():
                    times = self._ps.cpu_times()
                    d["cpu_percent"] = self._ps.cpu_percent(None)
                    d["cpu_seconds"] = round(times.user + times.system, 3)
                    d["rss"] = self._ps.memory_info().rss
            except psutil.Error:
                pass
        return d


def worker_argv(index: int, generation: int, *, link: str, heartbeat: float, log_level: str,
                wrapper: list[str], shard_args: list[str]) -> list[str]:
    return [*wrapper, sys.executable, "-m", "mabeamd.worker", "--index", str(index),
            "--generation", str(generation), "--link", link, "--parent", str(os.getpid()),
            "--heartbeat", repr(heartbeat), "--log-level", log_level, *shard_args]
