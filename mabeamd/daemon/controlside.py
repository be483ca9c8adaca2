"""The arbiter as its control commands see it: the `ControlHost` side (control/host.py).

A base class of `Arbiter`, holding the views and requests the control commands make of it,
so that the arbiter's module keeps to start-up, signals and wiring. `reload`,
`request_stop` and `refuse_if_stopping` stay in the arbiter, whose signal handlers use them
too; with them the arbiter is the whole `ControlHost`. The attributes below are the
arbiter's, set up by it; they are declared here only for what these methods read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mabeamd import __version__
from mabeamd.daemon.watcher import State
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.observe.opstats import BUCKETS, Histograms, OpStats
from mabeamd.storage.variables import ADMIN

if TYPE_CHECKING:
    from mabeamd import protocol
    from mabeamd.agents.agentops import AgentService
    from mabeamd.agents.endpoint import AgentEndpoint
    from mabeamd.agents.events import EventPublisher
    from mabeamd.agents.registry import Registry
    from mabeamd.agents.varops import VariableService
    from mabeamd.cluster.membership import Membership
    from mabeamd.config import Config
    from mabeamd.control.server import ControlServer, Progress
    from mabeamd.daemon.managed import ManagedProgram, ManagedSupervisor
    from mabeamd.daemon.sdnotify import Notifier
    from mabeamd.daemon.watcher import WorkerWatcher
    from mabeamd.logsetup import LogSetup
    from mabeamd.net.link import WorkerLink
    from mabeamd.net.shardcall import ShardCalls
    from mabeamd.observe.anomaly import AnomalyWatch
    from mabeamd.observe.audit import AuditLog
    from mabeamd.observe.http import MonitorServer
    from mabeamd.paths import Paths
    from mabeamd.plugins import PluginHost
    from mabeamd.sessions.service import SessionService
    from mabeamd.storage.statedir import StateMeta


class ControlSide:
    config: Config
    paths: Paths
    logs: LogSetup
    notifier: Notifier
    plugins: PluginHost
    meta: StateMeta
    state: str
    started_mono: float
    started_wall: float
    ready_after: float | None
    worker_count: int
    watchers: list[WorkerWatcher]
    workers_stopped: asyncio.Event
    beats: dict[int, dict[str, Any]]
    monitor: MonitorServer | None
    loop_lag: float
    loop_lag_max: float
    stalls: int
    control: ControlServer
    link: WorkerLink
    endpoint: AgentEndpoint
    events: EventPublisher
    registry: Registry
    agents: AgentService
    variables: VariableService
    cluster: Membership | None
    shard_calls: ShardCalls
    sessions: SessionService
    managed: ManagedSupervisor
    anomaly: AnomalyWatch
    audit: AuditLog

    # --- the daemon ------------------------------------------------------------------------

    def worker_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in State}
        for w in self.watchers:
            counts[w.state.value] += 1
        return counts

    @property
    def storage(self) -> dict[int, dict[str, Any]]:
        """Shards whose disk refuses writes, with what the worker says of it."""
        return {i: b["storage"] for i, b in self.beats.items() if b.get("storage")}

    def status_line(self) -> str:
        c = self.worker_counts()
        n = len(self.watchers)
        text = f"{c['running']}/{n} workers running"
        if c["failed"]:
            text = f"degraded: {text}, {c['failed']} failed"
        if self.storage:
            text = (f"degraded: {text}; the disk refuses shard(s) "
                    f"{', '.join(str(i) for i in sorted(self.storage))}")
        return text

    def readiness(self) -> tuple[bool, list[str], str]:
        """(ready, why not, state) for /readyz: running, every worker serving its shard,
        no shard's disk refusing writes."""
        reasons = []
        if self.state != "running":
            reasons.append(f"the daemon is {self.state}")
        for w in self.watchers:
            if w.state is not State.RUNNING:
                reasons.append(f"worker {w.index} is {w.state.value}")
        for i in sorted(self.storage):
            reasons.append(f"the disk refuses writes to shard {i}")
        return not reasons, reasons, self.state

    def _listener_figures(self) -> dict[str, Any]:
        """The monitoring listener's and the console's counters (status, /metrics)."""
        m = self.monitor
        console = m.console if m is not None else None
        return {"requests": m.stats["requests"] if m else 0,
                "refused": m.stats["refused"] if m else 0,
                "evicted": m.stats["evicted"] if m else 0,
                "console": console is not None,
                "console_streams": m.streams if m else 0,
                "console_pages": console.stats["pages"] if console else 0}

    def request_stats(self) -> dict[str, OpStats]:
        return {"agent": self.endpoint.ops, "control": self.control.ops}

    def anomaly_counters(self) -> dict[str, float]:
        shard = [b.get("shard_traffic") or {} for b in self.beats.values()]
        s = self.sessions.stats
        return {"requests": self.endpoint.stats["requests"]
                + sum(t.get("requests", 0) for t in shard),
                "errors": self.endpoint.stats["errors"] + sum(t.get("errors", 0) for t in shard),
                "session_failures": s.get("failed", 0) + s.get("timed_out", 0),
                "restarts": sum(w.counters.restarts for w in self.watchers)}

    def latency_buckets(self) -> list[int]:
        total = [0] * (len(BUCKETS) + 1)
        stats = [self.endpoint.ops, *(OpStats.from_snapshot(b.get("shard_ops"))
                                      for b in self.beats.values() if b.get("shard_ops"))]
        for ops in stats:
            for counts, _ in ops.histograms().values():
                for i, n in enumerate(counts):
                    total[i] += n
        return total

    def session_outcomes(self) -> dict[tuple[str, str], int]:
        return dict(self.sessions.outcomes)

    def session_durations(self) -> Histograms:
        return self.sessions.durations

    def session_trades(self) -> dict[str, list[float]]:
        return self.sessions.trades

    def cluster_figures(self) -> dict[str, Any] | None:
        """Cluster mode: the lease, the etcd endpoints' latest probes and the directory's
        counters, all already in memory (a scrape never waits on etcd); None on one node."""
        if self.cluster is None:
            return None
        d = self.agents.directory
        return {"lease": self.cluster.lease(), "etcd": dict(self.cluster.health),
                "directory": d.status() if d is not None else None}

    def status(self) -> dict[str, Any]:
        extensions = dict(self.plugins.call("mabeamd_status"))
        ready, reasons, _ = self.readiness()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "state": self.state,
            "summary": self.status_line(),
            "ready": ready,
            "not_ready": reasons,
            "uptime": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_wall,
            "ready_after": self.ready_after,
            "config": self.config.source,
            "runtime_dir": str(self.paths.runtime_dir),
            "state_dir": str(self.paths.state_dir),
            "control_socket": str(self.paths.control_socket),
            "log_level": self.config.daemon.log_level,
            "log_target": self.logs.target,
            "systemd_notify": self.notifier.enabled,
            "workers": {"total": len(self.watchers), **self.worker_counts()},
            "plugins": self.plugins.summary(),
            "agents": self.registry.counts(),
            "variables": {"shards": self.worker_count, "fsync": self.config.variables.fsync,
                          "shm_prefix": self.meta.shm_prefix},
            "sessions": {"running": len(self.sessions.live), **self.sessions.stats,
                         "by_protocol": self.sessions.by_protocol()},
            "managed": {p.name: sum(1 for x in p.procs if x.state == "running")
                        for p in self.managed.programs.values()},
            "agent_endpoints": [str(e) for e in self.endpoint.endpoints],
            "agent_traffic": dict(self.endpoint.stats),
            # Buckets held by the agent endpoint ([limits]); None: limits are off.
            "rate_limit_buckets": limits.tracked() if (limits := self.endpoint.limits) else None,
            "event_endpoint": str(self.events.endpoint) if self.events.endpoint else None,
            "events_published": self.events.published,
            "events_dropped": self.events.dropped,
            "event_subscriptions": self.events.subscriptions,
            "control": dict(self.control.stats),
            "audit": self.audit.state(),
            "link_dropped": self.link.dropped,
            "loop_lag": {"last": round(self.loop_lag, 4), "max": round(self.loop_lag_max, 4),
                         "stalls": self.stalls},
            "storage": {str(i): s for i, s in sorted(self.storage.items())},
            "anomaly": {name: {k: v for k, v in f.items() if k in ("fired", "active")}
                        for name, f in self.anomaly.figures().items()},
            "metrics": {"listen": self.config.metrics.listen or None,
                        "serving": bool(self.monitor and self.monitor.server),
                        "error": self.monitor.error if self.monitor else None,
                        "scrapes": self.monitor.stats["scrapes"] if self.monitor else 0,
                        **self._listener_figures()},
            "extensions": extensions,
        }

    def plugin_records(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.plugins.records.values()]

    async def wait_workers_stopped(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.workers_stopped.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- the cluster ---------------------------------------------------------------------

    async def cluster_status(self) -> dict[str, Any]:
        """The cluster as etcd sees it, and this node's caches of it (per shard: the
        revision its watch has reached, whether it is open, the lag of the last changes)."""
        if self.cluster is None:
            raise WireError(ErrorCode.BAD_REQUEST, "this daemon is a single node, not in a "
                            "cluster ([cluster] etcd is empty; docs/cluster.md)")
        out = await self.cluster.status()
        if self.agents.directory is not None:
            out["directory"] = self.agents.directory.status()
        caches: list[dict[str, Any]] = []
        for w in self.watchers:
            c = (self.beats.get(w.index, {}).get("shard") or {}).get("cluster")
            if not isinstance(c, dict):
                caches.append({"shard": w.index, "state": w.state.value})
                continue
            caches.append({"shard": w.index, "state": w.state.value, **c})
        out["caches"] = caches
        return out

    # --- workers ---------------------------------------------------------------------------

    def worker_states(self) -> list[str]:
        return [w.state.value for w in self.watchers]

    def worker_rows(self) -> list[dict[str, Any]]:
        rows = []
        for w in self.watchers:
            beat = self.beats.get(w.index, {})
            rows.append({**w.info(), "shard_endpoint": self.agents.shard_endpoints[w.index],
                         **{k: beat.get(k) for k in ("shard_traffic", "shard_ops", "shard",
                                                     "storage")}})
        return rows

    async def restart_worker(self, index: int, progress: Progress) -> dict[str, Any]:
        return await self.watchers[index].restart(progress)

    # --- agents and managed programs -------------------------------------------------------

    def agent_rows(self) -> list[dict[str, Any]]:
        return self.agents.admin_list()

    def agent(self, agent_id: str) -> dict[str, Any]:
        return self.agents.admin_show(agent_id)

    def managed_rows(self) -> list[dict[str, Any]]:
        return self.managed.info()

    def managed_program(self, name: Any) -> ManagedProgram:
        return self.managed.program(name)

    # --- variables -------------------------------------------------------------------------

    async def var_request(self, op: str, body: dict[str, Any]) -> Any:
        return await self.variables.forward(op, body, ADMIN)

    async def var_list(self, body: dict[str, Any]) -> Any:
        return await self.variables.list_vars(body)

    async def to_shard(self, index: int, op: str, body: dict[str, Any]) -> Any:
        return await self.shard_calls.call(index, op, body, ADMIN)

    # --- sessions and protocols ------------------------------------------------------------

    def session_rows(self, state: str | None) -> list[dict[str, Any]]:
        return self.sessions.summaries(state)

    async def session(self, session: Any) -> dict[str, Any]:
        return await self.sessions.show(session)

    async def cancel_session(self, session: Any, by: str, reason: Any) -> Any:
        return await self.sessions.cancel_as(session, by, reason)

    async def decide_session(self, session: Any, decision: Any) -> Any:
        return await self.sessions.decide(session, decision)

    def protocols(self) -> Mapping[str, protocol.Protocol]:
        return self.sessions.protocols

    def protocol_plugin(self, name: str) -> str | None:
        return self.plugins.protocol_owner.get(name)
