"""The arbiter: the daemon's one main process.

It owns the runtime directory (instance lock, sockets), the worker link, the control socket
and the plugin host; it spawns one WorkerWatcher per worker slot and reacts to signals:
SIGTERM/SIGINT stop gracefully (a second one kills the workers at once), SIGHUP reloads the
configuration and plugins without closing any socket.

Nothing here blocks the event loop: child exits arrive through pidfds, worker silence is a
deadline check, log writes go through a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, ProcessCollector

from mabeamd import __version__
from mabeamd import config as configmod
from mabeamd import paths as pathsmod
from mabeamd.addresses import parse_endpoint
from mabeamd.agents.agentops import AgentService
from mabeamd.agents.auth import AuthError, KeyAuthenticator, load_server_keys
from mabeamd.agents.endpoint import AgentEndpoint
from mabeamd.agents.events import EventPublisher
from mabeamd.agents.registry import Registry
from mabeamd.agents.varops import VariableService
from mabeamd.config import EX_CONFIG, Config, ConfigError, worker_count
from mabeamd.console.feed import Feed
from mabeamd.control.commands import CHANGES, build_handlers
from mabeamd.control.server import ControlServer
from mabeamd.daemon import consoleside
from mabeamd.daemon.auditside import AuditReports
from mabeamd.daemon.child import Reaper
from mabeamd.daemon.managed import ManagedSupervisor
from mabeamd.daemon.sdnotify import Notifier, child_environment
from mabeamd.daemon.watcher import State, WorkerWatcher
from mabeamd.daemon.workerside import WorkerSide
from mabeamd.logsetup import LogSetup
from mabeamd.net.link import WorkerLink
from mabeamd.net.shardcall import ShardCalls
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.observe import audit as auditlog
from mabeamd.observe.anomaly import AnomalyWatch
from mabeamd.observe.http import MonitorServer
from mabeamd.observe.metrics import DaemonCollector
from mabeamd.observe.opstats import OpStats
from mabeamd.paths import Paths
from mabeamd.plugins import PluginHost
from mabeamd.sessions.service import SessionService
from mabeamd.storage import janitor
from mabeamd.storage.statedir import (
    StateDirError,
    check_shm,
    exposed,
    lock_dir,
    lock_state_dir,
    open_state,
    remove_segments,
    segment_group,
)

log = logging.getLogger("mabeamd.arbiter")
STATE_LOCK_WAIT = 5.0  # seconds to wait for a predecessor's hold on the state directory
STALL = 0.5  # seconds of the arbiter's own loop lag taken as a stall (see _liveness_loop)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


if TYPE_CHECKING:
    from mabeamd.cluster.directory import Directory
    from mabeamd.cluster.membership import Membership


class StartupError(Exception):
    """The daemon cannot start; str() is the operator's message, `code` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Arbiter(WorkerSide):
    def __init__(
        self,
        config: Config,
        paths: Paths,
        *,
        config_path: str | None,
        overrides: dict[tuple[str, str], tuple[Any, str]],
        logs: LogSetup,
    ) -> None:
        self.config = config
        self.paths = paths
        self.config_path = config_path
        self.overrides = overrides
        self.logs = logs
        self.notifier = Notifier()
        self.plugins = PluginHost()
        self.worker_count = worker_count(config)
        self.shm_gid: int | None = None  # [variables] shm_group, resolved at start
        self.watchers: list[WorkerWatcher] = []
        self.state = "starting"
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.ready_after: float | None = None
        self.stop_reason = ""
        self.stop_requested = asyncio.Event()
        self.workers_stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._bg: set[asyncio.Task[Any]] = set()
        self._lock_fds: list[int] = []  # runtime and state directory locks
        self.reaper: Reaper
        # Signs the write credentials agents use on shard endpoints (credentials.py); the
        # workers get it in their environment. Per run: a restart voids every credential.
        self.write_key = secrets.token_bytes(32)
        self.revoked: dict[str, int] = {}  # agent -> highest revoked epoch, for new workers
        self.cluster: Membership | None = None  # cluster mode (cluster/membership.py)
        self.console_feed: Feed | None = None  # [console] enabled (daemon/consoleside.py)
        self.directory: Directory | None = None  # and its agent directory (directory.py)
        self.loop_lag = self.loop_lag_max = 0.0  # seconds late, the liveness tick's
        self.stalls = 0

    # --- start-up --------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        group = bool(self.config.control.group)
        for label, d, mode in (("runtime", self.paths.runtime_dir, 0o750 if group else 0o700),
                               ("state", self.paths.state_dir, 0o700)):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=mode)
            except OSError as exc:
                raise StartupError(f"cannot create {label} directory {d}: {exc.strerror}") from exc
            if not os.access(d, os.W_OK | os.X_OK):
                raise StartupError(f"{label} directory {d} is not writable by uid {os.geteuid()}")
        try:
            fd = lock_dir(self.paths.runtime_dir)
        except BlockingIOError:
            raise StartupError(
                f"another mabeamd is already running with runtime directory "
                f"{self.paths.runtime_dir} (try: mabeamctl --socket "
                f"{self.paths.control_socket} status)") from None
        self._lock_fds.append(fd)
        try:
            # A few seconds' grace: the janitor of a daemon that just died holds the lock
            # until it has removed that daemon's segments (storage/janitor.py).
            state_lock = lock_state_dir(self.paths.state_dir, wait=STATE_LOCK_WAIT)
        except StateDirError as exc:
            self._release_lock()
            raise StartupError(str(exc)) from None
        self._lock_fds.append(state_lock)
        warning = exposed(self.paths.state_dir)
        if warning:
            log.warning("%s", warning)
        try:
            self.meta = open_state(self.paths.state_dir, self.worker_count)
            check_shm(Path(self.config.variables.shm_dir), self.config.variables.min_free_shm)
            self.shm_gid = segment_group(self.config.variables.shm_group)
        except StateDirError as exc:
            self._release_lock()
            raise StartupError(str(exc), EX_CONFIG) from exc
        try:
            self._lock_fds.append(janitor.start(Path(self.config.variables.shm_dir),
                                                self.meta.shm_prefix, state_lock))
        except OSError as exc:  # not fatal: segments are then removed at the next start
            log.warning("segment janitor not started (%s): after a kill -9 this daemon's "
                        "segments stay in %s until it starts again", exc,
                        self.config.variables.shm_dir)

    def _release_lock(self) -> None:
        """Close the lock descriptors (and the janitor's pipe: it cleans up and goes)."""
        while self._lock_fds:
            os.close(self._lock_fds.pop())  # closing drops the flock

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._prepare_dirs()
        try:
            return await self._run(loop)
        finally:
            self._release_lock()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        self.reaper = Reaper(loop)
        self.plugins.load(self.config.plugins.disabled)
        self.plugins.call("mabeamd_configure", config=self.config)

        self.audit = auditlog.from_config(self.config.audit, self.paths.state_dir)
        self.audit.start()
        self.reports = AuditReports(self.audit)
        self.ctx = zmq.asyncio.Context()
        self.link = WorkerLink(self.ctx, self.paths.worker_link, self._on_link_message)
        self.control = ControlServer(self.ctx, self.paths.control_socket, build_handlers(self),
                                     self.config.control.max_message, audit=self.audit,
                                     changes=CHANGES)
        try:
            self._setup_agents()
            self.link.bind()
            self.control.bind(self.config.control.group)
            self.endpoint.bind()
            self.events.bind()
        except (zmq.ZMQError, OSError, AuthError) as exc:
            self._close_sockets()
            raise StartupError(f"cannot bind sockets: {exc}") from exc

        if self.config.cluster.etcd:
            try:
                self.cluster = await self._join_cluster()
            except StartupError:
                self._close_sockets()
                raise
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.request_stop, name)
        loop.add_signal_handler(signal.SIGHUP, self._background, self.reload, "SIGHUP")

        self.monitor = self._monitor()
        if self.monitor is not None:
            await self.monitor.start()
        tasks = [asyncio.create_task(c) for c in
                 (self.link.run(), self.control.run(), self._liveness_loop(),
                  self._watchdog_loop(), self.endpoint.run(), self.events.run(),
                  self.agents.sweep_loop(), self.anomaly.run())]
        if self.console_feed is not None:
            tasks.append(asyncio.create_task(self.console_feed.run()))
        log.info("mabeamd %s starting: %d workers, control socket %s, config %s",
                 __version__, self.worker_count, self.paths.control_socket, self.config.source)
        self.watchers = [WorkerWatcher(i, self, self.config.workers)
                         for i in range(self.worker_count)]
        for w in self.watchers:
            w.start()
        self.managed = ManagedSupervisor(self.reaper, self.registry,
                                         child_environment(dict(os.environ)),
                                         self._managed_agent_env())
        self.managed.start_all(self.config.managed)

        settle = asyncio.gather(*(w.wait_settled() for w in self.watchers))
        stop = asyncio.ensure_future(self.stop_requested.wait())
        waiters: set[asyncio.Future[Any]] = {settle, stop}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not self.stop_requested.is_set():
            self.state = "running"
            self.ready_after = time.monotonic() - self.started_mono
            self.plugins.call("mabeamd_startup", config=self.config, paths=self.paths)
            self.notifier.ready(self.status_line())
            log.info("ready in %.0f ms: %s", self.ready_after * 1000, self.status_line())
        else:
            settle.cancel()
        await stop
        await self._shutdown()
        for t in tasks:
            await cancel_and_wait(t)
        self._close_sockets()
        if self.monitor is not None:
            await self.monitor.close()
        self.reaper.close()
        self.ctx.term()
        self.notifier.close()
        self.audit.close()  # the sessions ended by the shutdown are in it
        log.info("stopped (%s)", self.stop_reason)
        return 0

    async def _join_cluster(self) -> Membership:
        """Cluster mode: join before any worker starts (they need the cluster's shard
        count to be ours)."""
        try:
            from mabeamd.cluster.membership import ClusterError, Membership
        except ImportError as exc:
            raise StartupError(f"[cluster] etcd is set but the etcd client is missing ({exc}): "
                               "pip install 'mabeamd[cluster]'", EX_CONFIG) from None
        c = self.config.cluster
        advertise = c.advertise or self.config.agents.endpoints[0]
        # The server key pair (if any): its public half tells the other nodes who they reach
        # at a curve+ advertise address; both halves are this node's client keys on links to
        # nodes that advertise one.
        try:
            keys = load_server_keys(self.config.security.server_key) \
                if self.config.security.server_key else None
        except AuthError as exc:
            raise StartupError(str(exc), EX_CONFIG) from None
        member = Membership(c, shards=self.meta.shards, advertise=advertise,
                            agent_endpoints=list(self.config.agents.endpoints),
                            events_endpoint=self.config.events.endpoint or None,
                            curve_key=keys[0].decode() if keys and advertise.startswith(
                                "curve+") else None)
        try:
            await member.start()
        except ClusterError as exc:
            await member.stop()
            raise StartupError(str(exc), EX_CONFIG) from None
        from mabeamd.cluster.directory import Directory

        self.directory = Directory(member, timeout=c.request_timeout, curve_keys=keys)
        try:
            await self.directory.start()
        except Exception as exc:
            await self.directory.stop()
            await member.stop()
            raise StartupError(f"cannot read the cluster's directory from etcd: {exc!r}") \
                from None
        self.agents.attach_directory(self.directory)
        from mabeamd.sessions.remote import RemoteSessions

        self.sessions.remote = RemoteSessions(
            self.sessions, self.directory,
            lambda i, agents: self.link.send(i, self.watchers[i].generation, "agents_down",
                                             {"agents": agents}))
        self.directory.on_remote_gone = self._agent_down
        return member

    def _setup_agents(self) -> None:
        """The agent endpoint, the event publisher and, for curve+ endpoints, CURVE/ZAP."""
        cfg = self.config
        endpoints = [parse_endpoint(e) for e in cfg.agents.endpoints]
        events_ep = parse_endpoint(cfg.events.endpoint) if cfg.events.endpoint else None
        wanted = [e for e in [*endpoints, events_ep] if e is not None]
        curve_keys = None
        self.auth: KeyAuthenticator | None = None
        if any(e.curve for e in wanted):
            curve_keys = load_server_keys(cfg.security.server_key)
            self.auth = KeyAuthenticator(self.ctx, on_failure=self.reports.auth_failure)
            self.auth.start()
            self.auth.reload(cfg.security.authorized_keys)
        self.events = EventPublisher(self.ctx, events_ep, cfg.events.hwm, curve_keys,
                                     on_interest=self._var_interest,
                                     node=cfg.cluster.node if cfg.cluster.etcd else None)
        self.registry = Registry(cfg.agents.max_agents,
                                 owner_of=self.auth.owner_of if self.auth else None,
                                 on_revoke=self._revoke)
        self.endpoint = AgentEndpoint(self.ctx, [e for e in endpoints if e is not None],
                                      cfg.agents.max_message, cfg.agents.max_in_flight,
                                      curve_keys)
        self.endpoint.configure_limits(dataclasses.asdict(cfg.limits))
        self.endpoint.conn_of = self.registry.conn_of
        self.agents = AgentService(
            self.endpoint, self.registry, self.events, cfg.agents, shards=self.worker_count,
            write_key=self.write_key, on_down=self._agent_down,
            on_takeover=self.reports.takeover, hello_extra={
                "shards": self.worker_count, "max_message": cfg.agents.max_message,
                "shm": {"dir": cfg.variables.shm_dir, "prefix": self.meta.shm_prefix},
                "events": events_ep.address if events_ep is not None else None})
        self.shard_calls = ShardCalls(
            self.worker_count,
            lambda i, body: self.link.send(i, self.watchers[i].generation, "request", body),
            lambda i: self.watchers[i].state is State.RUNNING, self.events.publish_write)
        self.variables = VariableService(self.shard_calls, self.registry,
                                         self.plugins.authorize,
                                         on_forbidden=self.reports.forbidden)
        self.variables.install(self.endpoint)
        self.sessions = SessionService(self.shard_calls, self.registry, self.endpoint,
                                       self.events, self.plugins, settings=cfg.sessions,
                                       on_outcome=self.reports.session,
                                       start_gate=self.reports.gate)
        self.sessions.install(self.endpoint)
        self.var_events = False  # whether workers send the events of direct writes
        # Per worker, from its current generation's heartbeats: "shard_traffic" and
        # "shard_ops" (its shard endpoint's counters) and "shard" (the shard's gauges), the
        # latest sent; "storage", the disk's refusal as of the latest heartbeat (None: fine).
        self.beats: dict[int, dict[str, Any]] = {}
        # Per worker: (pid, shard endpoint) from its hello, until it says "open".
        self._hellos: dict[int, tuple[int, str | None]] = {}
        self.anomaly = AnomalyWatch(self, cfg.anomaly, self.events.publish)

    def _monitor(self) -> MonitorServer | None:
        """The /metrics, /healthz and /readyz listener ([metrics] listen; empty: none), and
        the console on it when [console] enabled (fed the events and sessions' ends)."""
        if not self.config.metrics.listen:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(self))
        ProcessCollector(registry=registry)  # the arbiter's own CPU, memory, fds
        console = None
        if self.config.console.enabled:
            console, self.console_feed = consoleside.build(
                self, self.config.console, self._request_counters)
            self.events.listeners.append(self.console_feed.on_event)
            self.sessions.on_ended_extra.append(self.console_feed.on_session_ended)
        return MonitorServer(self.config.metrics.listen, registry, self.readiness, console)

    def _request_counters(self) -> dict[str, OpStats]:
        """Requests by op on the agent endpoint and every shard endpoint (the console's
        rates)."""
        out = {"agent": self.endpoint.ops}
        for i, beat in self.beats.items():
            if beat.get("shard_ops"):
                out[f"shard {i}"] = OpStats.from_snapshot(beat["shard_ops"])
        return out

    def _managed_agent_env(self) -> dict[str, str]:
        """Where managed agents connect: the first plain endpoint, else the first CURVE one
        (with the server's public key; the program's env must then supply client keys)."""
        endpoints = self.endpoint.endpoints
        chosen = next((e for e in endpoints if not e.curve), endpoints[0])
        env = {"MABEAM_ENDPOINT": chosen.address}
        if chosen.curve:
            public, _ = load_server_keys(self.config.security.server_key)
            env["MABEAM_SERVER_KEY"] = public.decode()
        return env

    def _close_sockets(self) -> None:
        for closer in ("control", "link", "events"):
            obj = getattr(self, closer, None)
            if obj is not None:
                obj.close()
        endpoint = getattr(self, "endpoint", None)
        if endpoint is not None:
            for sock in endpoint.sockets:
                sock.close(linger=0)
        if getattr(self, "auth", None) is not None:
            assert self.auth is not None
            self.auth.stop()

    # --- stopping --------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self.stop_requested.is_set():
            if reason.startswith("SIG"):
                log.warning("second %s: killing workers now", reason)
                for w in self.watchers:
                    w.kill_now()
            return
        self.stop_reason = reason
        self.state = "stopping"
        self.stop_requested.set()

    def refuse_if_stopping(self) -> None:
        if self.stop_requested.is_set():
            raise WireError(ErrorCode.SHUTTING_DOWN, "mabeamd is shutting down")

    async def _shutdown(self) -> None:
        log.info("stopping (%s): stopping %d workers", self.stop_reason, len(self.watchers))
        self.notifier.stopping()
        self.plugins.call("mabeamd_shutdown", reason=self.stop_reason)
        # Managed agents first, while they can still say bye; then stop accepting agent work
        # (waiting requests get `shutting_down`).
        await self.managed.stop_all()
        await self.endpoint.close()
        self.events.publish("daemon.stopping", {"reason": self.stop_reason})
        stops = asyncio.gather(*(w.stop() for w in self.watchers))
        try:
            await asyncio.wait_for(asyncio.shield(stops), self.config.daemon.shutdown_timeout)
        except asyncio.TimeoutError:
            log.error("shutdown_timeout (%gs) reached: killing workers",
                      self.config.daemon.shutdown_timeout)
            for w in self.watchers:
                w.kill_now()
            await asyncio.gather(*(w.wait_exited() for w in self.watchers))
            stops.cancel()
        self.workers_stopped.set()
        if self.directory is not None:
            await self.directory.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # out of the cluster now, not a lease TTL from now
        removed = remove_segments(Path(self.config.variables.shm_dir), self.meta.shm_prefix)
        log.debug("removed %d shared-memory segment files", removed)
        await self.control.drain(timeout=2.0)
        for t in list(self._bg):
            await cancel_and_wait(t)

    # --- reload ----------------------------------------------------------------------------

    def _background(self, fn: Any, *args: Any) -> None:
        task = asyncio.ensure_future(fn(*args))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def reload(self, source: str) -> dict[str, Any]:
        """Re-read the config file (same command-line overrides) and the plugins.

        A config that does not validate is refused and the running one kept. Options that
        cannot change at run time keep their old values and are reported.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                try:
                    new = configmod.load(self.config_path, self.overrides)
                    pathsmod.resolve(new)
                except ConfigError as exc:
                    log.error("reload (%s) refused; keeping the running configuration: %s",
                              source, exc)
                    return {"ok": False, "error": str(exc)}
                changed, restart = configmod.reload_diff(self.config, new)
                self.config = configmod.merge_for_reload(self.config, new)
                self.logs.set_level(self.config.daemon.log_level)
                self.audit.on_failure = self.config.audit.on_failure
                self._reconfigure_agents()
                for w in self.watchers:
                    w.reconfigure(self.config.workers)
                try:
                    self.control.apply_group(self.config.control.group)
                except OSError as exc:
                    log.error("reload: cannot apply control group: %s", exc)
                self.plugins.load(self.config.plugins.disabled)
                self.plugins.call("mabeamd_configure", config=self.config)
                self.sessions.reconfigure(self.config.sessions, self.plugins.protocols())
                self.anomaly.reconfigure(self.config.anomaly)
                for change in await self.managed.apply(self.config.managed):
                    log.info("reload (%s): managed agents: %s", source, change)
                if restart:
                    log.warning("reload (%s): %s changed but only take effect after a restart",
                                source, ", ".join(restart))
                log.info("reloaded (%s): %s", source,
                         ", ".join(changed) if changed else "no option changed")
                return {"ok": True, "changed": changed, "restart_required": restart,
                        "plugins": self.plugins.summary()}
            finally:
                self.notifier.ready(self.status_line())

    def _reconfigure_agents(self) -> None:
        a = self.config.agents
        self.agents.reconfigure(a)
        self.endpoint.max_in_flight = a.max_in_flight
        self.endpoint.configure_limits(limits := dataclasses.asdict(self.config.limits))
        self._to_running_workers("limits", limits)
        self.registry.max_agents = a.max_agents
        if self.auth is not None:
            try:
                self.auth.reload(self.config.security.authorized_keys)
            except AuthError as exc:
                log.error("reload: authorized keys not reloaded: %s", exc)

    # --- periodic deadlines ----------------------------------------------------------------

    async def _liveness_loop(self) -> None:
        """Every tick: kill workers gone silent -- unless the arbiter itself was the one
        stalled (a saturated machine, a swap storm, SIGSTOP): its own loop lag is measured
        here, and a stall is not held against workers whose heartbeats it could not read
        (two healthy workers were once killed at the same instant for "no heartbeat for
        3.4 s" while the arbiter's loop was starved)."""
        last = time.monotonic()
        while True:
            interval = min(0.25, self.config.workers.heartbeat_interval / 2)
            await asyncio.sleep(interval)
            now = time.monotonic()
            lag = max(0.0, now - last - interval)
            last = now
            self.loop_lag = lag
            self.loop_lag_max = max(self.loop_lag_max, lag)
            if lag > STALL:
                self.stalls += 1
                log.warning("the arbiter's event loop stalled for %.2f s; not counting that "
                            "against the workers' heartbeats", lag)
                for w in self.watchers:
                    w.excuse(lag)
                continue  # let the link deliver what queued up before judging anyone
            for w in self.watchers:
                w.check_liveness(now)
            self.notifier.flush()  # a state change systemd's full queue refused earlier

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
