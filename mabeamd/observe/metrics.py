"""The daemon's Prometheus metrics, built at scrape time from what the arbiter already knows.

Why a custom collector and not counters incremented on the hot paths: every figure here is
already counted once, where it happens (the agent endpoint's and control server's stats,
the session service's tallies, the watchers' counters, the workers' heartbeats), and
`mabeamctl status` reads the same numbers. A scrape turns that state into metric families
(prometheus_client does the exposition format); the request paths pay nothing extra.

Why workers' figures come over the link and not from prometheus_client's multiprocess
mode: a worker already sends a heartbeat every interval with its shard endpoint's traffic
and its shard's gauges; the arbiter keeps the latest, so a scrape never waits on a worker
(a stalled or restarting worker shows its last figures and its state), and nothing is
written to files per process (the multiprocess mode's mmap files would need a directory,
cleanup after kill -9, and a per-scrape merge of every file).

Naming follows Prometheus conventions: the `mabeamd_` prefix, base units (seconds, bytes),
`_total` for counters. Labels are bounded: worker/shard index, state names, counter kinds,
protocol names (installed plugins) -- never agent ids or variable names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mabeamd.observe.opstats import (
    BUCKETS,
    Histograms,
    OpStats,
    cumulative,
    raw_histogram,
)
from mabeamd.storage.wal import LATENCY_BUCKETS

Value = Callable[[dict[str, Any]], float | None]


def _field(key: str, section: str | None = None) -> Value:
    """A number from a worker row (or from its `section` map), None when not known."""
    def value(row: dict[str, Any]) -> float | None:
        d = row.get(section) if section else row
        v = d.get(key) if isinstance(d, dict) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return value


def _cluster(key: str) -> Value:
    """A number from a cluster shard's figures (cluster/shard.py gauges: "cluster"); None on
    a single node, so the family stays empty there."""
    def value(row: dict[str, Any]) -> float | None:
        c = (row.get("shard") or {}).get("cluster")
        v = c.get(key) if isinstance(c, dict) else None
        return float(v) if isinstance(v, (int, float)) else None
    return value


# Per worker (label "worker") and per shard (label "shard": shard i is worker i's), from
# the worker rows: (type, name without _total, help, label, the row's value or None).
PER_WORKER: list[tuple[str, str, str, str, Value]] = [
    ("gauge", "mabeamd_worker_up", "1 while the worker serves its shard", "worker",
     lambda row: 1.0 if row["state"] == "running" else 0.0),
    ("counter", "mabeamd_worker_restarts", "worker restarts", "worker", _field("restarts")),
    ("counter", "mabeamd_worker_crashes", "worker exits not asked for", "worker",
     _field("crashes")),
    ("counter", "mabeamd_worker_hung_kills", "workers killed for silence", "worker",
     _field("hung_kills")),
    ("counter", "mabeamd_worker_cpu_seconds", "CPU time of the worker's current process",
     "worker", _field("cpu_seconds")),
    ("gauge", "mabeamd_worker_resident_memory_bytes", "resident memory of the worker's "
     "process", "worker", _field("rss")),
    ("gauge", "mabeamd_shard_variables", "variables in the shard", "shard",
     _field("variables", "shard")),
    ("gauge", "mabeamd_shard_bytes", "bytes of the shard's variable records (the quota's "
     "measure)", "shard", _field("bytes", "shard")),
    ("gauge", "mabeamd_shard_segment_fill_ratio", "share of the shard's shared-memory "
     "segment in use", "shard", _field("segment_fill", "shard")),
    ("counter", "mabeamd_wal_records", "records ever appended to the shard's WAL (its last "
     "sequence number)", "shard", _field("wal_records", "shard")),
    ("counter", "mabeamd_wal_fsyncs", "WAL fsyncs", "shard", _field("wal_fsyncs", "shard")),
    ("counter", "mabeamd_wal_fsync_seconds", "time spent in WAL fsyncs", "shard",
     _field("wal_fsync_seconds", "shard")),
    ("counter", "mabeamd_snapshots", "snapshots written by the worker's current process",
     "shard", _field("snapshots", "shard")),
    ("gauge", "mabeamd_snapshot_last_duration_seconds", "how long the shard's last snapshot "
     "took", "shard", _field("snapshot_seconds", "shard")),
    ("gauge", "mabeamd_shard_storage_refusing", "1 while the shard's disk refuses writes",
     "shard", lambda row: 1.0 if row.get("storage") else 0.0),
    ("counter", "mabeamd_shard_endpoint_requests", "requests served on the shard's own "
     "endpoint", "shard", _field("requests", "shard_traffic")),
    ("counter", "mabeamd_shard_endpoint_errors", "error replies on the shard's own endpoint",
     "shard", _field("errors", "shard_traffic")),
    ("counter", "mabeamd_shard_endpoint_rate_limited", "requests refused rate_limited on "
     "the shard's own endpoint ([limits])", "shard", _field("rate_limited", "shard_traffic")),
    ("gauge", "mabeamd_shard_attached_agents", "agents whose session pushes of this shard "
     "leave from its own endpoint (session.attach)", "shard", _field("attached", "shard_traffic")),
    ("counter", "mabeamd_shard_pushes", "session invitations and notices sent from the "
     "shard's own endpoint, not through the arbiter", "shard", _field("pushed", "shard_traffic")),
    ("counter", "mabeamd_cluster_commits", "writes this node's shard committed to etcd "
     "(cluster mode)", "shard", _cluster("commits")),
    ("counter", "mabeamd_cluster_lost_transactions", "write transactions that lost their "
     "compare to another node's write and ran again (cluster mode)", "shard",
     _cluster("retries")),
    ("gauge", "mabeamd_cluster_watch_open", "1 while the shard's etcd watch is open (0: its "
     "cache misses the other nodes' writes; cluster mode)", "shard", _cluster("watch")),
    ("counter", "mabeamd_cluster_watch_events", "changes the shard's etcd watch delivered "
     "(cluster mode)", "shard", _cluster("watch_events")),
    ("gauge", "mabeamd_cluster_cache_revision", "the etcd revision the shard's cache has "
     "every change of its shard up to (cluster mode)", "shard", _cluster("revision")),
    ("gauge", "mabeamd_cluster_watch_lag_max_seconds", "largest of the last 256 delays from "
     "another node's write to this cache (writer's clock; cluster mode)", "shard",
     _cluster("lag_max")),
]


class MetricsSource(Protocol):
    """What the collector reads (the arbiter implements it)."""

    def status(self) -> dict[str, Any]:
        """The `mabeamctl status` body."""

    def worker_rows(self) -> list[dict[str, Any]]:
        """Per worker: its watcher's info(), with "shard_traffic" (the shard endpoint's
        counters) and "shard" (the shard's gauges: variables, bytes, WAL figures) from its
        latest heartbeat, either None when not known; "shard_ops" (OpStats.snapshot() of
        the shard endpoint)."""

    def request_stats(self) -> dict[str, OpStats]:
        """The arbiter's endpoints' OpStats by endpoint name ("agent", "control")."""

    def session_outcomes(self) -> dict[tuple[str, str], int]:
        """Sessions ended so far, by (protocol, final state)."""

    def session_durations(self) -> Histograms:
        """Sessions' start-to-end seconds by protocol."""

    def session_trades(self) -> dict[str, list[float]]:
        """protocol -> [revenue, clearing prices seen, their sum, the last (NaN: none)]
        over applied sessions."""

    def cluster_figures(self) -> dict[str, Any] | None:
        """Cluster mode: {"lease": Membership.lease(), "etcd": {endpoint: its latest status
        probe}, "directory": Directory.status() or None}; None on a single node."""


def _counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value or 0))


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value or 0))


LEASE_STATES = ("starting", "ok", "uncertain", "lost")


def _cluster_families(c: dict[str, Any]) -> Iterator[Metric]:
    """The node's lease, each etcd endpoint's health and the directory (cluster mode).
    Endpoint labels are the configured [cluster] etcd list: bounded."""
    lease = c["lease"]
    state = GaugeMetricFamily("mabeamd_cluster_lease_state", "this node's etcd lease (1 for "
                              "the current state: ok, uncertain = keepalives failing, lost = "
                              "expired, a new one being taken)", labels=["state"])
    for s in LEASE_STATES:
        state.add_metric([s], 1.0 if lease["state"] == s else 0.0)
    yield state
    yield _gauge("mabeamd_cluster_lease_ttl_seconds", "the lease's TTL ([cluster] lease_ttl)",
                 lease["ttl"])
    if lease["since_keepalive"] is not None:
        yield _gauge("mabeamd_cluster_lease_keepalive_age_seconds", "seconds since etcd last "
                     "confirmed a keepalive (past the TTL: the node's membership and agents "
                     "are gone from the cluster)", lease["since_keepalive"])
    yield _counter("mabeamd_cluster_leases_granted", "leases this node took (more than 1: "
                   "it lost one and rejoined)", lease["granted"])
    up = GaugeMetricFamily("mabeamd_cluster_etcd_up", "1 when the endpoint answered its last "
                           "status probe", labels=["endpoint"])
    leader = GaugeMetricFamily("mabeamd_cluster_etcd_leader", "1 when the endpoint is the "
                               "Raft leader (its own answer)", labels=["endpoint"])
    size = GaugeMetricFamily("mabeamd_cluster_etcd_db_size_bytes", "the member's backend "
                             "size (compact and defragment before the quota)",
                             labels=["endpoint"])
    took = GaugeMetricFamily("mabeamd_cluster_etcd_probe_seconds", "how long the last "
                             "status probe took", labels=["endpoint"])
    for endpoint, h in sorted(c["etcd"].items()):
        up.add_metric([endpoint], 1.0 if h.get("healthy") else 0.0)
        if h.get("healthy"):
            leader.add_metric([endpoint], 1.0 if h.get("is_leader") else 0.0)
            size.add_metric([endpoint], float(h.get("db_size") or 0))
            took.add_metric([endpoint], float(h.get("ms") or 0) / 1000)
    yield from (up, leader, size, took)
    d = c.get("directory")
    if isinstance(d, dict):
        agents = GaugeMetricFamily("mabeamd_cluster_agents", "agents in the cluster's "
                                   "directory, on this node or on the others",
                                   labels=["where"])
        agents.add_metric(["here"], float(d.get("agents_here") or 0))
        agents.add_metric(["elsewhere"], float(d.get("agents_elsewhere") or 0))
        yield agents
        yield _gauge("mabeamd_cluster_node_links", "open links to other nodes",
                     len(d.get("links") or ()))
        for key in ("sent", "failed"):
            if isinstance(d.get(key), (int, float)):
                yield _counter(f"mabeamd_cluster_node_requests_{key}", f"requests to other "
                               f"nodes over their links ({key})", d[key])


class DaemonCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # no fixed set to describe without collecting (families vary by state)

    def collect(self) -> Iterator[Metric]:
        st = self.source.status()
        info = InfoMetricFamily("mabeamd_build", "the daemon's version")
        info.add_metric([], {"version": str(st["version"])})
        yield info
        yield _gauge("mabeamd_start_time_seconds", "when the daemon started, Unix time",
                     st["started_at"])
        ready = GaugeMetricFamily("mabeamd_state", "the daemon's state (1 for the current)",
                                  labels=["state"])
        for state in ("starting", "running", "stopping"):
            ready.add_metric([state], 1.0 if st["state"] == state else 0.0)
        yield ready
        rows = self.source.worker_rows()
        yield from self._workers(st, rows)
        yield from self._agents(st)
        yield from self._sessions(st)
        yield from self._traffic(st)
        yield from self._requests(rows)
        if (cluster := self.source.cluster_figures()) is not None:
            yield from _cluster_families(cluster)
        lag = st["loop_lag"]
        yield _gauge("mabeamd_loop_lag_seconds", "the arbiter's event loop lag, last tick",
                     lag["last"])
        yield _gauge("mabeamd_loop_lag_max_seconds", "the arbiter's largest loop lag so far",
                     lag["max"])
        yield _counter("mabeamd_loop_stalls", "ticks the arbiter's loop was over 0.5 s late",
                       lag["stalls"])
        fired = CounterMetricFamily("mabeamd_anomalies", "times a series left its band "
                                    "(observe/anomaly.py)", labels=["series"])
        active = GaugeMetricFamily("mabeamd_anomaly_active", "1 while a series is outside "
                                   "its band", labels=["series"])
        for series, f in sorted(st["anomaly"].items()):
            fired.add_metric([series], float(f["fired"]))
            active.add_metric([series], 1.0 if f["active"] else 0.0)
        yield fired
        yield active
        http = st["metrics"]
        yield _counter("mabeamd_http_requests", "requests to this listener (/metrics, health, "
                       "console)", http.get("requests", 0))
        yield _counter("mabeamd_http_refused", "connections to this listener answered 503: "
                       "every place was a request being answered", http.get("refused", 0))
        yield _counter("mabeamd_http_dropped_slow", "connections to this listener dropped for "
                       "a newer one while still sending their request head",
                       http.get("evicted", 0))
        if http.get("console"):
            yield _gauge("mabeamd_console_streams", "the web console's open live streams",
                         http.get("console_streams", 0))
            yield _counter("mabeamd_console_pages", "web console pages served",
                           http.get("console_pages", 0))
        audit = st["audit"]
        yield _counter("mabeamd_audit_records", "records written to the audit log",
                       audit["records"])
        yield _counter("mabeamd_audit_failures", "audit records that could not be written "
                       "(a disk error, or the writer's queue full)", audit["failures"])
        yield _gauge("mabeamd_audit_failing", "1 while the audit log cannot be written",
                     1 if audit["failing"] else 0)

    def _workers(self, st: dict[str, Any], rows: list[dict[str, Any]]) -> Iterator[Metric]:
        w = st["workers"]
        states = GaugeMetricFamily("mabeamd_workers", "workers by state", labels=["state"])
        for state, n in sorted(w.items()):
            if state != "total":
                states.add_metric([state], float(n))
        yield states
        for key, name, doc in (("wal_append_hist", "mabeamd_wal_append_duration_seconds",
                                "time to append one record to the shard's WAL (write(2))"),
                               ("wal_fsync_hist", "mabeamd_wal_fsync_duration_seconds",
                                "time of each fsync of the shard's WAL")):
            series: dict[tuple[str, ...], tuple[list[int], float]] = {}
            for row in rows:
                h = raw_histogram((row.get("shard") or {}).get(key), LATENCY_BUCKETS)
                if h is not None:
                    series[(str(row["index"]),)] = cumulative(h)
            yield _histogram(name, doc, ["shard"], LATENCY_BUCKETS, series)
        for kind, name, doc, label, value in PER_WORKER:
            fam = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(
                name, doc, labels=[label])
            for row in rows:
                v = value(row)
                if v is not None:
                    fam.add_metric([str(row["index"])], v)
            yield fam

    def _agents(self, st: dict[str, Any]) -> Iterator[Metric]:
        a = st["agents"]
        fam = GaugeMetricFamily("mabeamd_agents", "registered agents by health",
                                labels=["status"])
        for status in ("healthy", "unhealthy"):
            fam.add_metric([status], float(a.get(status, 0)))
        yield fam

    def _sessions(self, st: dict[str, Any]) -> Iterator[Metric]:
        s = st["sessions"]
        yield _gauge("mabeamd_sessions_running", "sessions running now", s["running"])
        yield _counter("mabeamd_sessions_started", "sessions started", s.get("started"))
        ended = CounterMetricFamily("mabeamd_sessions_ended", "sessions ended, by protocol "
                                    "and outcome", labels=["protocol", "outcome"])
        for (protocol, outcome), n in sorted(self.source.session_outcomes().items()):
            ended.add_metric([protocol, outcome], float(n))
        yield ended
        durations = self.source.session_durations()
        yield _histogram("mabeamd_session_duration_seconds", "sessions' time from start to "
                         "end, by protocol", ["protocol"], durations.buckets,
                         {(p,): h for p, h in durations.histograms().items()})
        revenue = CounterMetricFamily("mabeamd_auction_revenue", "payments made by applied "
                                      "sessions (money units of the protocol's params), by "
                                      "protocol", labels=["protocol"])
        prices = SummaryMetricFamily("mabeamd_clearing_price", "clearing prices of applied "
                                     "sessions, by protocol (sum / count: the mean)",
                                     labels=["protocol"])
        last = GaugeMetricFamily("mabeamd_clearing_price_last", "the latest clearing price, "
                                 "by protocol", labels=["protocol"])
        for protocol, (money, seen, total, latest) in sorted(
                self.source.session_trades().items()):
            revenue.add_metric([protocol], money)
            if seen:
                prices.add_metric([protocol], count_value=int(seen), sum_value=total)
                last.add_metric([protocol], latest)
        yield revenue
        yield prices
        yield last

    def _traffic(self, st: dict[str, Any]) -> Iterator[Metric]:
        agent = CounterMetricFamily("mabeamd_agent_endpoint_messages",
                                    "agent endpoint traffic by kind (requests, errors, "
                                    "busy, malformed, pushed, ...)", labels=["kind"])
        for kind, n in sorted(st["agent_traffic"].items()):
            agent.add_metric([kind], float(n))
        yield agent
        control = CounterMetricFamily("mabeamd_control_messages",
                                      "control socket traffic by kind", labels=["kind"])
        for kind, n in sorted(st["control"].items()):
            control.add_metric([kind], float(n))
        yield control
        yield _counter("mabeamd_events_published", "events published on the event endpoint",
                       st["events_published"])
        yield _counter("mabeamd_events_dropped", "events the event socket refused (a slow "
                       "subscriber's own overflow shows only as a gap in its seq)",
                       st["events_dropped"])
        yield _counter("mabeamd_link_dropped", "worker link messages dropped (a worker's "
                       "queue was full)", st["link_dropped"])

    def _requests(self, rows: list[dict[str, Any]]) -> Iterator[Metric]:
        """Requests by op and result code, and their latency: the arbiter's endpoints
        (label "endpoint") and each shard's own endpoint (label "shard", as of the worker's
        latest heartbeat; a restarted worker counts from zero, as a counter reset)."""
        by_endpoint = sorted(self.source.request_stats().items())
        by_shard = [(str(row["index"]), OpStats.from_snapshot(row.get("shard_ops")))
                    for row in rows if row.get("shard_ops")]
        for prefix, label, series in (("mabeamd", "endpoint", by_endpoint),
                                      ("mabeamd_shard", "shard", by_shard)):
            total = CounterMetricFamily(f"{prefix}_requests", "final replies by op and "
                                        "result code (ok or the error code)",
                                        labels=[label, "op", "code"])
            for name, stats in series:
                for (op, code), n in sorted(stats.codes().items()):
                    total.add_metric([name, op, code], float(n))
            yield total
            yield _histogram(f"{prefix}_request_duration_seconds", "time from a request's "
                             "arrival to its final reply, by op", [label, "op"], BUCKETS,
                             {(name, op): h for name, stats in series
                              for op, h in stats.histograms().items()})


def _histogram(name: str, doc: str, labels: list[str], bounds: tuple[float, ...],
               series: dict[tuple[str, ...], tuple[list[int], float]]) -> Metric:
    """A histogram family from (cumulative counts, the last +Inf; sum) per label values."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, (counts, total) in sorted(series.items()):
        buckets = [(floatToGoString(b), float(c))  # type: ignore[no-untyped-call]
                   for b, c in zip((*bounds, math.inf), counts, strict=True)]
        fam.add_metric(list(values), buckets, sum_value=total)
    return fam
