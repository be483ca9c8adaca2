"""Configuration: the schema, loading a TOML file, command-line overrides, validation.

Every option is a field of one section dataclass below; the field's metadata says its kind,
its bounds and whether SIGHUP may change it. etc/mabeamd.toml lists every option with its
default, and a test keeps that file and this schema in step.

A bad configuration raises ConfigError naming the file (or flag), the key and what was
expected; `mabeamd` turns it into exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mabeamd.addresses import parse_endpoint, parse_listen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

EX_CONFIG: Final = 78
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH: Final = 107


class ConfigError(Exception):
    """An invalid configuration; str() is the complete message for the operator."""


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
}
MANAGED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def options() -> list[tuple[str, dataclasses.Field[Any]]]:
    """Every option as (section, field), in schema order."""
    return [(name, f) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _expected(meta: dict[str, Any]) -> str:
    kind = meta["kind"]
    if kind == "enum":
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    words = {"int": "an integer", "float": "a number", "str": "a string",
             "path": "a path string", "str_list": "a list of strings", "bool": "true or false",
             "str_map": "a table of string values",
             "endpoint": "a tcp://HOST:PORT or ipc://PATH endpoint (optionally curve+), or empty",
             "listen": "HOST:PORT (an IP address or localhost, a port 1-65535), or empty",
             "endpoint_list": "a list of tcp://HOST:PORT or ipc://PATH endpoints (optionally "
                              "curve+)"}
    text = words[kind]
    lo, hi = meta["min"], meta["max"]
    if lo is not None and hi is not None:
        text += f" from {lo:g} to {hi:g}"
    elif lo is not None:
        text += f" >= {lo:g}"
    return text


def _check_value(meta: dict[str, Any], value: Any) -> Any:
    """Return the value converted to the option's type, or raise ValueError('expected ...')."""
    kind = meta["kind"]
    ok = True
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif kind in ("str", "path"):
        ok = isinstance(value, str) and "\0" not in value
    elif kind == "enum":
        ok = isinstance(value, str) and value in meta["choices"]
    elif kind == "str_list":
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        if ok:
            value = list(value)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str_map":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and "\0" not in v for k, v in value.items())
        if ok:
            value = dict(value)
    elif kind == "endpoint":
        ok = isinstance(value, str) and (value == "" or parse_endpoint(value) is not None)
    elif kind == "listen":
        ok = isinstance(value, str) and (value == "" or parse_listen(value) is not None)
    elif kind == "endpoint_list":
        ok = (isinstance(value, list) and bool(value)
              and all(isinstance(v, str) and parse_endpoint(v) is not None for v in value)
              and len(set(value)) == len(value))
        if ok:
            value = list(value)
    if ok and kind in ("int", "float"):
        lo, hi = meta["min"], meta["max"]
        ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        raise ValueError(f"expected {_expected(meta)}, got {value!r}")
    return value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from exc
    try:
        parsed: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
        return parsed
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _unknown(origin: str, what: str, name: str, known: Iterable[str], quote: str) -> ConfigError:
    """'unknown key 'cont' in [workers] (known: ...); did you mean 'count'?'"""
    known = list(known)
    hint = difflib.get_close_matches(name, known, n=1)
    extra = f"; did you mean {quote.format(hint[0])}?" if hint else ""
    return ConfigError(f"{origin}: unknown {what} (known: {', '.join(known)}){extra}")


def _parse_table(origin: str, label: str, cls: type, content: Any, base: Path) -> dict[str, Any]:
    """Validate one TOML table against a section dataclass; returns the converted values."""
    if not isinstance(content, dict):
        raise ConfigError(f"{origin}: {label} must be a table, got {content!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, given in content.items():
        if key not in fields:
            raise _unknown(origin, f"key '{key}' in {label}", key, fields, "'{}'")
        try:
            value = _check_value(dict(fields[key].metadata), given)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {label} {key}: {exc}") from None
        if fields[key].metadata["kind"] == "path" and value:
            value = str((base / value).resolve()) if not os.path.isabs(value) else value
        out[key] = value
    return out


def _parse_managed(origin: str, content: Any, base: Path) -> dict[str, ManagedSection]:
    if not isinstance(content, dict):
        raise ConfigError(f"{origin}: [managed] must hold [managed.NAME] tables")
    programs = {}
    for name, table in content.items():
        label = f"[managed.{name}]"
        if not MANAGED_NAME.match(name):
            raise ConfigError(f"{origin}: {label}: expected a name of letters, digits, '_', "
                              "'.', '-' (at most 64, starting with a letter or digit)")
        values = _parse_table(origin, label, ManagedSection, table, base)
        if not values.get("cmd"):
            raise ConfigError(f"{origin}: {label} cmd: expected the program to run, got none")
        programs[name] = ManagedSection(**values)
    return programs


def load(
    path: str | os.PathLike[str] | None,
    overrides: dict[tuple[str, str], tuple[Any, str]] | None = None,
) -> Config:
    """Load and validate a configuration.

    path: a TOML file, or None for the built-in defaults.
    overrides: {(section, key): (value, label)}; label names the source in errors
    (e.g. "--workers"). Overrides win over the file.
    Relative paths in the file are taken relative to the file's directory; relative paths
    from overrides relative to the current directory.
    """
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    base = Path.cwd()
    if path is not None:
        p = Path(path).absolute()
        origin = str(p)
        raw = _read_file(p)
        base = p.parent

    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    managed: dict[str, ManagedSection] = {}
    for section, content in raw.items():
        if section == "managed":
            managed = _parse_managed(origin, content, base)
            continue
        if section not in SECTIONS:
            raise _unknown(origin, f"section [{section}]", section, [*SECTIONS, "managed"],
                           "[{}]")
        values[section] = _parse_table(origin, f"[{section}]", SECTIONS[section], content, base)

    for (section, key), (given, label) in (overrides or {}).items():
        f = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[key]
        try:
            value = _check_value(dict(f.metadata), given)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        if f.metadata["kind"] == "path" and value:
            value = str(Path(value).absolute())
        values[section][key] = value

    cfg = Config(
        **{name: cls(**values[name]) for name, cls in SECTIONS.items()},
        managed=managed,
        source=origin,
    )
    _check_cross(cfg, origin)
    return cfg


VALUE_ROOM = 65536  # bytes of a request besides its value: name, fields, credential


def _check_cross(cfg: Config, origin: str) -> None:
    w = cfg.workers
    if w.heartbeat_timeout <= w.heartbeat_interval:
        raise ConfigError(
            f"{origin}: [workers] heartbeat_timeout: expected more than heartbeat_interval "
            f"({w.heartbeat_interval:g}), got {w.heartbeat_timeout:g}")
    if w.backoff_max < w.backoff_initial:
        raise ConfigError(
            f"{origin}: [workers] backoff_max: expected at least backoff_initial "
            f"({w.backoff_initial:g}), got {w.backoff_max:g}")
    if cfg.agents.max_message < cfg.variables.max_value + VALUE_ROOM:
        raise ConfigError(
            f"{origin}: [agents] max_message: expected at least [variables] max_value + "
            f"{VALUE_ROOM} ({cfg.variables.max_value + VALUE_ROOM}), so that a value of "
            f"max_value bytes fits in a request with its name and fields; got "
            f"{cfg.agents.max_message}")
    for kind in ("connection", "agent"):
        burst = cfg.get("limits", f"{kind}_bytes_burst")
        if cfg.get("limits", f"{kind}_bytes") and burst < cfg.agents.max_message:
            raise ConfigError(
                f"{origin}: [limits] {kind}_bytes_burst: expected at least [agents] "
                f"max_message ({cfg.agents.max_message}), or a request of that size could "
                f"never be admitted; got {burst}")
    endpoints = [("[agents] endpoints", e) for e in cfg.agents.endpoints]
    if cfg.events.endpoint:
        endpoints.append(("[events] endpoint", cfg.events.endpoint))
    if cfg.agents.shard_endpoint:
        if cfg.agents.shard_endpoint.startswith("curve+"):
            raise ConfigError(
                f"{origin}: [agents] shard_endpoint: CURVE is not served on shard endpoints; "
                f"give a plain endpoint (loopback or ipc) or leave it empty, and let CURVE "
                f"clients use the curve+ agent endpoints")
        endpoints.append(("[agents] shard_endpoint", cfg.agents.shard_endpoint))
    for label, text in endpoints:
        ep = parse_endpoint(text)
        assert ep is not None  # checked by _check_value
        if not ep.loopback and not cfg.security.allow_insecure_remote \
                and label == "[agents] shard_endpoint":
            raise ConfigError(
                f"{origin}: {label}: {text} is not on loopback, and shard endpoints are plain "
                "(no CURVE): bind it on loopback or ipc, leave it empty, or set [security] "
                "allow_insecure_remote = true")
        if not ep.curve and not ep.loopback and not cfg.security.allow_insecure_remote:
            raise ConfigError(
                f"{origin}: {label}: {text} is not on loopback, so it needs CURVE: write "
                f"curve+{text} (and set [security] server_key), or set [security] "
                "allow_insecure_remote = true")
        if ep.curve and not cfg.security.server_key:
            raise ConfigError(f"{origin}: [security] server_key: expected a secret key file "
                              f"for the CURVE endpoint {text} (mabeamctl keys generate)")
        if ep.curve and not cfg.security.authorized_keys:
            raise ConfigError(f"{origin}: [security] authorized_keys: expected a directory of "
                              f"client public keys for the CURVE endpoint {text}")
    listen = parse_listen(cfg.metrics.listen) if cfg.metrics.listen else None
    if listen is not None and not listen[2] and not cfg.security.allow_insecure_remote:
        raise ConfigError(
            f"{origin}: [metrics] listen: {cfg.metrics.listen} is not on loopback, and the "
            "metrics and health endpoints are plain HTTP without authentication: listen on "
            "loopback (and scrape through a proxy), or set [security] allow_insecure_remote "
            "= true")
    if cfg.control.group:
        try:
            grp.getgrnam(cfg.control.group)
        except KeyError:
            raise ConfigError(
                f"{origin}: [control] group: expected an existing group name, got "
                f"{cfg.control.group!r}") from None


def reload_diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Compare two configs: (changed reloadable keys, changed keys that need a restart)."""
    changed: list[str] = []
    restart: list[str] = []
    for section, f in options():
        if old.get(section, f.name) != new.get(section, f.name):
            (changed if f.metadata["reload"] else restart).append(f"{section}.{f.name}")
    for name in sorted(set(old.managed) | set(new.managed)):
        if old.managed.get(name) != new.managed.get(name):
            changed.append(f"managed.{name}")
    return changed, restart


def merge_for_reload(old: Config, new: Config) -> Config:
    """The config in force after a reload: new values, except restart-only keys stay old.
    Managed programs always take the new definitions (the supervisor applies the change)."""
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        kept = {
            f.name: (new if f.metadata["reload"] else old).get(name, f.name)
            for f in dataclasses.fields(cls)
        }
        sections[name] = cls(**kept)
    return Config(**sections, managed=dict(new.managed), source=new.source)
