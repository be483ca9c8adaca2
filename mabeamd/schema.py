"""The configuration schema: every section and option, with its default, kind, bounds, help
and whether SIGHUP may change it (config.py loads and validates files against it).

Every option is a field of one section dataclass below; the field's metadata says its kind,
its bounds and whether a reload may change it. etc/mabeamd.toml lists every option with its
default, and a test keeps that file and this schema in step.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Final

LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def _opt(
    default: Any,
    kind: str,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    reload: bool = False,
) -> Any:
    meta = {"kind": kind, "help": help, "min": min, "max": max, "choices": choices,
            "reload": reload}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DaemonSection:
    runtime_dir: str = _opt(
        "", "path", "sockets and the instance lock; empty = $RUNTIME_DIRECTORY, /run/mabeamd as "
        "root, else $XDG_RUNTIME_DIR/mabeamd (or /tmp/mabeamd-UID)")
    state_dir: str = _opt(
        "", "path", "durable state; empty = $STATE_DIRECTORY, /var/lib/mabeamd as root, else "
        "$XDG_STATE_HOME/mabeamd (or ~/.local/state/mabeamd)")
    log_level: str = _opt("info", "enum", "log threshold", choices=LOG_LEVELS, reload=True)
    shutdown_timeout: float = _opt(
        30.0, "float", "seconds a graceful stop may take before workers are killed outright",
        min=0.1, max=3600, reload=True)


@dataclass(frozen=True)
class ControlSection:
    socket: str = _opt("", "path", "control socket path; empty = RUNTIME_DIR/control.sock")
    group: str = _opt(
        "", "str", "group allowed to use the control socket (mode 0660); empty = owner only "
        "(mode 0600)", reload=True)
    max_message: int = _opt(
        1 << 20, "int", "largest control request accepted, in bytes", min=1024, max=1 << 30)


@dataclass(frozen=True)
class WorkersSection:
    count: int = _opt(0, "int", "worker processes; 0 = one per CPU", min=0, max=1024)
    heartbeat_interval: float = _opt(
        0.5, "float", "seconds between worker heartbeats", min=0.01, max=60, reload=True)
    heartbeat_timeout: float = _opt(
        3.0, "float", "a running worker silent this long is hung: killed and restarted",
        min=0.05, max=600, reload=True)
    start_timeout: float = _opt(
        10.0, "float",
        "a starting worker silent this long (no hello, no loading progress) is killed",
        min=0.1, max=600, reload=True)
    stop_timeout: float = _opt(
        5.0, "float", "seconds between SIGTERM and SIGKILL when stopping a worker",
        min=0.0, max=600, reload=True)
    backoff_initial: float = _opt(
        0.1, "float", "delay before the first restart after a crash", min=0.0, max=600,
        reload=True)
    backoff_max: float = _opt(
        10.0, "float", "the restart delay never exceeds this", min=0.0, max=3600, reload=True)
    backoff_factor: float = _opt(
        2.0, "float", "each further restart in the window multiplies the delay by this",
        min=1.0, max=100, reload=True)
    backoff_jitter: float = _opt(
        0.2, "float", "random spread of each delay, as a fraction (0.2 = +/-20%)", min=0.0,
        max=1.0, reload=True)
    max_restarts: int = _opt(
        5, "int", "crash budget: more failures than this within restart_window -> FAILED",
        min=0, max=100000, reload=True)
    restart_window: float = _opt(
        60.0, "float", "seconds over which max_restarts is counted", min=0.1, max=86400,
        reload=True)
    wrapper: list[str] = _opt(
        [], "str_list", "command prefixed to each worker's argv, e.g. [\"nice\", \"-n\", \"5\"]; "
        "it must exec the worker, not fork it", reload=True)


@dataclass(frozen=True)
class PluginsSection:
    disabled: list[str] = _opt(
        [], "str_list", "entry-point names of plugins not to load", reload=True)


@dataclass(frozen=True)
class AgentsSection:
    endpoints: list[str] = _opt(
        ["tcp://127.0.0.1:7700"], "endpoint_list", "agent endpoints (tcp:// or ipc://); prefix "
        "curve+ for CURVE encryption and authentication, required on non-loopback tcp")
    heartbeat_interval: float = _opt(
        5.0, "float", "seconds between agent heartbeats (told to agents at hello)", min=0.05,
        max=3600, reload=True)
    missed_beats: int = _opt(
        3, "int", "an agent silent for this many intervals is unhealthy", min=1, max=1000,
        reload=True)
    gone_after: float = _opt(
        30.0, "float", "an unhealthy agent silent this many more seconds is gone (deregistered)",
        min=0.0, max=86400, reload=True)
    max_in_flight: int = _opt(
        64, "int", "requests one connection may have in progress; more are answered busy",
        min=1, max=100000, reload=True)
    max_agents: int = _opt(
        100000, "int", "registered agents in all; more registrations are answered busy", min=1,
        max=10_000_000, reload=True)
    max_message: int = _opt(
        2 << 20, "int", "largest agent request frame answered, in bytes (a larger one gets "
        "too_large; past twice this, ZeroMQ cuts the connection); at least "
        "variables.max_value + 65536", min=1024, max=1 << 30)
    shard_endpoint: str = _opt(
        "tcp://127.0.0.1:7710", "endpoint", "where workers serve variable requests directly, "
        "one hop instead of two: tcp://HOST:PORT (worker i binds PORT+i) or ipc://PATH "
        "(worker i binds PATH-i); no curve+ (CURVE clients use the agent endpoints); "
        "empty = every request goes through the agent endpoints")


@dataclass(frozen=True)
class EventsSection:
    endpoint: str = _opt(
        "tcp://127.0.0.1:7701", "endpoint", "XPUB endpoint publishing agent.*, worker.* ... "
        "events; empty = no event endpoint; curve+ as for agent endpoints")
    hwm: int = _opt(10000, "int", "events queued per subscriber before it misses some",
                    min=1, max=10_000_000)


@dataclass(frozen=True)
class SecuritySection:
    server_key: str = _opt(
        "", "path", "the daemon's CURVE secret key file (`mabeamctl keys generate` format); "
        "needed by curve+ endpoints")
    authorized_keys: str = _opt(
        "", "path", "directory of client public key files NAME.key; key NAME may register "
        "agent ids NAME and NAME/*", reload=True)
    allow_insecure_remote: bool = _opt(
        False, "bool", "allow plain (non-CURVE) tcp endpoints on non-loopback addresses")


@dataclass(frozen=True)
class VariablesSection:
    fsync: str = _opt("everysec", "enum", "WAL fsync policy: always (no acknowledged write is "
                      "ever lost), everysec (at most ~1 s on power loss), never",
                      choices=("always", "everysec", "never"))
    history: int = _opt(16, "int", "earlier versions kept per variable", min=0, max=10000)
    max_value: int = _opt(1 << 20, "int", "largest variable value, packed bytes", min=16,
                          max=256 << 20)
    snapshot_every: int = _opt(10000, "int", "WAL records between snapshots of a shard",
                               min=1, max=1_000_000_000)
    max_variables_per_shard: int = _opt(2_000_000, "int", "most variables one shard holds; "
                                        "creates beyond are refused (quota_exceeded)", min=1,
                                        max=1 << 40)
    max_bytes_per_shard: int = _opt(2 << 30, "int", "most bytes of variable records one "
                                    "shard holds (each as var.get returns it, packed); "
                                    "writes beyond are refused (quota_exceeded)", min=1 << 16,
                                    max=1 << 50)
    shm_dir: str = _opt("/dev/shm", "path", "where shard segments live (tmpfs)")
    min_free_shm: int = _opt(64 << 20, "int", "refuse to start with less free space in "
                             "shm_dir, bytes", min=0, max=1 << 50)
    shm_group: str = _opt("", "str", "group that may read the shard segments (mode 0640, "
                          "owned by this group; the daemon's user must be a member); empty = "
                          "the daemon's own group")


@dataclass(frozen=True)
class ManagedSection:
    """One [managed.NAME] program the daemon launches and keeps running."""

    cmd: str = _opt("", "str", "program to run (required)")
    args: list[str] = _opt([], "str_list", "its arguments")
    numprocesses: int = _opt(1, "int", "how many copies to run", min=0, max=1000)
    env: dict[str, str] = _opt({}, "str_map", "extra environment variables")
    cwd: str = _opt("", "path", "working directory; empty = the daemon's")
    restart: str = _opt("on-failure", "enum", "when to restart it",
                        choices=("always", "on-failure", "never"))
    stop_timeout: float = _opt(5.0, "float", "SIGTERM to SIGKILL grace", min=0.0, max=600)
    backoff_initial: float = _opt(0.5, "float", "first restart delay", min=0.0, max=600)
    backoff_max: float = _opt(30.0, "float", "restart delay cap", min=0.0, max=3600)
    backoff_factor: float = _opt(2.0, "float", "delay growth per failure", min=1.0, max=100)
    backoff_jitter: float = _opt(0.2, "float", "random spread of each delay", min=0.0, max=1.0)
    max_restarts: int = _opt(10, "int", "failures within restart_window before it is FAILED",
                             min=0, max=100000)
    restart_window: float = _opt(60.0, "float", "seconds over which max_restarts is counted",
                                 min=0.1, max=86400)


@dataclass(frozen=True)
class SessionsSection:
    max_participants: int = _opt(10000, "int", "most agents one session may invite", min=1,
                                 max=1_000_000, reload=True)
    max_deadline: float = _opt(3600.0, "float", "longest deadline a session may ask for, "
                               "seconds", min=0.1, max=7 * 86400, reload=True)
    max_active: int = _opt(10000, "int", "sessions running at once, daemon-wide; more are "
                           "refused with busy", min=1, max=10_000_000, reload=True)
    keep_finished: int = _opt(1000, "int", "ended sessions kept for sessions show / "
                              "session.get", min=0, max=10_000_000, reload=True)


@dataclass(frozen=True)
class LimitsSection:
    """Token buckets (net/ratelimit.py) on the agent endpoint and on each shard endpoint,
    counted by each endpoint on its own. Every rate is 0 (off) by default."""

    connection_requests: float = _opt(0.0, "float", "requests per second one connection may "
                                      "send; 0 = no limit", min=0, max=1e9, reload=True)
    connection_requests_burst: int = _opt(1000, "int", "requests a connection may send at "
                                          "once above its rate", min=1, max=1 << 40,
                                          reload=True)
    connection_bytes: float = _opt(0.0, "float", "request bytes per second one connection "
                                   "may send; 0 = no limit", min=0, max=1e15, reload=True)
    connection_bytes_burst: int = _opt(16 << 20, "int", "bytes a connection may send at once "
                                       "above its rate; at least agents.max_message",
                                       min=1, max=1 << 50, reload=True)
    agent_requests: float = _opt(0.0, "float", "requests per second one agent id may send, "
                                 "over all its connections; 0 = no limit", min=0, max=1e9,
                                 reload=True)
    agent_requests_burst: int = _opt(1000, "int", "requests an agent may send at once above "
                                     "its rate", min=1, max=1 << 40, reload=True)
    agent_bytes: float = _opt(0.0, "float", "request bytes per second one agent id may send; "
                              "0 = no limit", min=0, max=1e15, reload=True)
    agent_bytes_burst: int = _opt(16 << 20, "int", "bytes an agent may send at once above "
                                  "its rate; at least agents.max_message", min=1,
                                  max=1 << 50, reload=True)
    max_tracked: int = _opt(100000, "int", "buckets kept per kind and endpoint; new "
                            "connections or agents beyond share one bucket", min=1,
                            max=10_000_000, reload=True)


@dataclass(frozen=True)
class MetricsSection:
    listen: str = _opt("127.0.0.1:9750", "listen", "HTTP listener for /metrics (Prometheus), "
                       "/healthz and /readyz: HOST:PORT; empty = off")


@dataclass(frozen=True)
class ConsoleSection:
    enabled: bool = _opt(False, "bool", "serve the read-only web console under /console on "
                         "the [metrics] listener (docs/console.md)")
    show_answers: bool = _opt(False, "bool", "show what participants answered (bids, votes, "
                              "orders) on the pages of ended sessions; off: who answered "
                              "when, not what")
    keep_sessions: int = _opt(200, "int", "ended sessions whose messages the console keeps "
                              "for their sequence diagrams (and market sessions whose trades "
                              "it keeps)", min=1, max=100_000)


@dataclass(frozen=True)
class AnomalySection:
    enabled: bool = _opt(True, "bool", "watch request, error and session-failure rates, p95 "
                         "latency and worker restarts for anomalies (anomaly.* events, "
                         "metrics, a log line)", reload=True)
    interval: float = _opt(5.0, "float", "seconds between samples of each series", min=0.05,
                           max=3600, reload=True)
    alpha: float = _opt(0.1, "float", "weight of the newest sample in the rolling mean and "
                        "variance (EWMA)", min=0.001, max=1.0, reload=True)
    sigmas: float = _opt(4.0, "float", "half-width of a series' band in standard deviations",
                         min=0.5, max=100, reload=True)
    warmup: int = _opt(12, "int", "samples a series learns from before it can fire", min=1,
                       max=1_000_000, reload=True)
    relative: float = _opt(0.5, "float", "a sample must also be this share of the mean away "
                           "from it (ordinary jitter of a busy daemon does not fire)", min=0.0,
                           max=100, reload=True)


@dataclass(frozen=True)
class AuditSection:
    enabled: bool = _opt(True, "bool", "keep the audit log (STATE_DIR/audit/audit.jsonl)")
    max_bytes: int = _opt(64 << 20, "int", "rotate the audit file past this size", min=4096,
                          max=1 << 40)
    keep: int = _opt(10, "int", "rotated audit files kept", min=1, max=100000)
    on_failure: str = _opt("refuse", "enum", "when the audit log cannot be written: refuse "
                           "control changes and session starts, or continue", reload=True,
                           choices=("refuse", "continue"))


NODE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class ClusterSection:
    etcd: list[str] = _opt(
        [], "str_list", "etcd v3 client endpoints, HOST:PORT or http://HOST:PORT (every member, "
        "so that the loss of one does not stop the node); empty = a single node, no cluster "
        "(the embedded default)")
    node: str = _opt("", "str", "this node's name in the cluster: letters, digits, _ . -, "
                     "unique among the live nodes; required with etcd")
    name: str = _opt("mabeamd", "str", "the cluster's name: every key it keeps in etcd starts "
                     "with /mabeamd/NAME/, so several clusters can share one etcd")
    advertise: str = _opt(
        "", "endpoint", "where the other nodes reach this one (tcp://HOST:PORT, kept in its "
        "membership key); empty = its first agent endpoint")
    lease_ttl: int = _opt(
        10, "int", "seconds of the node's etcd lease: a node that dies is gone from the "
        "cluster (membership, agents, locks) this long after its last keepalive", min=2,
        max=3600)
    request_timeout: float = _opt(
        5.0, "float", "seconds an etcd request may take before the client gets unavailable",
        min=0.1, max=600)


@dataclass(frozen=True)
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    control: ControlSection = field(default_factory=ControlSection)
    workers: WorkersSection = field(default_factory=WorkersSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    agents: AgentsSection = field(default_factory=AgentsSection)
    events: EventsSection = field(default_factory=EventsSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    variables: VariablesSection = field(default_factory=VariablesSection)
    sessions: SessionsSection = field(default_factory=SessionsSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    anomaly: AnomalySection = field(default_factory=AnomalySection)
    audit: AuditSection = field(default_factory=AuditSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    managed: dict[str, ManagedSection] = field(default_factory=dict)
    # Where the values came from; not an option.
    source: str = field(default="<defaults>", compare=False)

    def get(self, section: str, key: str) -> Any:
        return getattr(getattr(self, section), key)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        d["managed"] = {k: dataclasses.asdict(v) for k, v in self.managed.items()}
        return d


SECTIONS: Final[dict[str, type]] = {
    "daemon": DaemonSection,
    "control": ControlSection,
    "workers": WorkersSection,
    "plugins": PluginsSection,
    "agents": AgentsSection,
    "events": EventsSection,
    "security": SecuritySection,
    "variables": VariablesSection,
    "sessions": SessionsSection,
    "limits": LimitsSection,
    "metrics": MetricsSection,
    "console": ConsoleSection,
    "anomaly": AnomalySection,
    "audit": AuditSection,
    "cluster": ClusterSection,
}
MANAGED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def options() -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every option as (section, field), in schema order."""
    return [(name, f) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
