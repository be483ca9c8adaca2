"""Configuration: loading a TOML file, command-line overrides, validation against the
schema (schema.py: every section and option, re-exported here for the daemon's modules).

A bad configuration raises ConfigError naming the file (or flag), the key and what was
expected; `mabeamd` turns it into exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mabeamd.addresses import parse_endpoint, parse_listen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from mabeamd.schema import (
    LOG_LEVELS,
    MANAGED_NAME,
    NODE_NAME,
    SECTIONS,
    AgentsSection,
    AnomalySection,
    AuditSection,
    ClusterSection,
    Config,
    ControlSection,
    DaemonSection,
    EventsSection,
    LimitsSection,
    ManagedSection,
    MetricsSection,
    PluginsSection,
    SecuritySection,
    SessionsSection,
    VariablesSection,
    WorkersSection,
    options,
)

# The schema's names are re-exported: the daemon's modules import them from here.
__all__ = [
    "CLUSTER_MAX_VALUE",
    "LOG_LEVELS",
    "MANAGED_NAME",
    "SECTIONS",
    "AgentsSection",
    "AnomalySection",
    "AuditSection",
    "ClusterSection",
    "Config",
    "ControlSection",
    "DaemonSection",
    "EventsSection",
    "LimitsSection",
    "ManagedSection",
    "MetricsSection",
    "PluginsSection",
    "SecuritySection",
    "SessionsSection",
    "VariablesSection",
    "WorkersSection",
    "options",
]

EX_CONFIG: Final = 78
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH: Final = 107


class ConfigError(Exception):
    """An invalid configuration; str() is the complete message for the operator."""


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
    _check_listeners(cfg, origin)
    _check_cluster(cfg, origin)
    listen = parse_listen(cfg.metrics.listen) if cfg.metrics.listen else None
    if cfg.console.enabled and listen is None:
        raise ConfigError(f"{origin}: [console] enabled: the console is served on the "
                          "[metrics] listener, which is off ([metrics] listen is empty): set "
                          "[metrics] listen, e.g. \"127.0.0.1:9750\"")
    if listen is not None and not listen[2] and not cfg.security.allow_insecure_remote:
        raise ConfigError(
            f"{origin}: [metrics] listen: {cfg.metrics.listen} is not on loopback, and the "
            "metrics and health endpoints are plain HTTP without authentication: listen on "
            "loopback (and scrape through a proxy), or set [security] allow_insecure_remote "
            "= true")
    for label, group in (("[control] group", cfg.control.group),
                         ("[variables] shm_group", cfg.variables.shm_group)):
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ConfigError(
                    f"{origin}: {label}: expected an existing group name, got "
                    f"{group!r}") from None


# The largest variable record a cluster stores: etcd refuses requests over 1.5 MiB by default
# (--max-request-bytes); the rest is room for the name, history and the transaction.
CLUSTER_MAX_VALUE: Final = 1 << 20


def etcd_address(text: str) -> tuple[str, int] | None:
    """(host, port) of an etcd client endpoint written HOST:PORT or http://HOST:PORT; None if
    it is neither (https:// is refused by the caller: TLS to etcd is not configurable yet)."""
    rest = text[len("http://"):] if text.startswith("http://") else text
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or "/" in host or not host.strip():
        return None
    return host, int(port)


def _check_cluster(cfg: Config, origin: str) -> None:
    c = cfg.cluster
    if not c.etcd:
        for key in ("node", "advertise"):
            if cfg.get("cluster", key):
                raise ConfigError(f"{origin}: [cluster] {key}: set without [cluster] etcd; "
                                  "give the etcd endpoints too, or leave [cluster] out for a "
                                  "single node")
        return
    for text in c.etcd:
        if text.startswith("https://"):
            raise ConfigError(f"{origin}: [cluster] etcd: {text}: TLS to etcd is not supported "
                              "yet; reach etcd over loopback or a private network")
        addr = etcd_address(text)
        if addr is None:
            raise ConfigError(f"{origin}: [cluster] etcd: expected HOST:PORT or "
                              f"http://HOST:PORT, got {text!r}")
        if not _is_loopback(addr[0]) and not cfg.security.allow_insecure_remote:
            raise ConfigError(f"{origin}: [cluster] etcd: {text} is not on loopback and the "
                              "etcd connection is plain (no TLS): use loopback, or set "
                              "[security] allow_insecure_remote = true for a network you trust")
    if len(set(c.etcd)) != len(c.etcd):
        raise ConfigError(f"{origin}: [cluster] etcd: an endpoint is listed twice")
    for key in ("node", "name"):
        value = cfg.get("cluster", key)
        if not NODE_NAME.fullmatch(value):
            raise ConfigError(f"{origin}: [cluster] {key}: expected 1-63 letters, digits, "
                              f"'_', '.' or '-' (starting with a letter or digit), got "
                              f"{value!r}" + (" (required with [cluster] etcd)"
                                              if not value else ""))
    advertise = c.advertise or cfg.agents.endpoints[0]
    if advertise.startswith("curve+") and not (cfg.security.server_key
                                               and cfg.security.authorized_keys):
        raise ConfigError(f"{origin}: [cluster] advertise: {advertise} is a CURVE endpoint: "
                          "node links then authenticate with each node's server key, so set "
                          "[security] server_key and authorized_keys (holding every node's "
                          "public key)")
    if advertise.startswith("curve+") and advertise not in cfg.agents.endpoints:
        raise ConfigError(f"{origin}: [cluster] advertise: {advertise} is CURVE but not one "
                          "of this node's [agents] endpoints; advertise one it serves")
    if cfg.variables.max_value > CLUSTER_MAX_VALUE:
        raise ConfigError(f"{origin}: [variables] max_value: a cluster keeps each variable in "
                          f"one etcd key, so at most {CLUSTER_MAX_VALUE}; got "
                          f"{cfg.variables.max_value}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_count(cfg: Config) -> int:
    """The workers (and shards) the daemon runs: `[workers] count`, or 0 = one per CPU it may
    run on. Shard endpoints' port range depends on it, so the config check uses it too."""
    if cfg.workers.count:
        return cfg.workers.count
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Listener:
    """One socket the daemon binds: a TCP (host, port) or an ipc path, and the option that
    asks for it, as an error message names it."""

    label: str
    transport: str  # tcp | ipc
    host: str = ""
    port: int = 0
    path: str = ""


def _family(host: str) -> int:
    """4 or 6 for an address (wildcards included), 0 for a host or interface name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def _same_address(a: str, b: str) -> bool:
    """Whether binding one port on hosts a and b conflicts. A wildcard takes the port on
    every address of its family (`::` on IPv4 too: dual-stack), and a name, whose addresses
    are not known here, is taken to conflict with a wildcard and with itself."""
    a, b = ("127.0.0.1" if h == "localhost" else h for h in (a, b))
    if a == b:
        return True
    for wild, other in ((a, b), (b, a)):
        if wild == "::" or (wild == "0.0.0.0" and _family(other) in (4, 0)):
            return True
    if _family(a) and _family(b):
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)  # ::1 and 0::1
    return False


def _endpoint_listeners(label: str, text: str, count: int = 0) -> list[Listener]:
    """The listeners of one endpoint option; `count` > 0 for the shard endpoint, which each
    of `count` workers binds at PORT+i (or PATH-i)."""
    ep = parse_endpoint(text)
    assert ep is not None  # checked by _check_value
    out = []
    for i in range(max(count, 1)):
        if ep.transport == "ipc":
            path = ep.address[len("ipc://"):] + (f"-{i}" if count else "")
            where = f" (worker {i} binds {path})" if count else ""
            out.append(Listener(f"{label} {text}{where}", "ipc", path=path))
        else:
            host, _, port = ep.address[len("tcp://"):].rpartition(":")
            where = f" (worker {i} binds port {int(port) + i})" if count else ""
            out.append(Listener(f"{label} {text}{where}", "tcp", host.strip("[]"),
                                int(port) + i))
    return out


def listeners(cfg: Config) -> list[Listener]:
    """Every TCP port and ipc path the daemon's options make it bind (the control socket and
    the worker link live in the runtime directory: paths.py checks those)."""
    out: list[Listener] = []
    for text in cfg.agents.endpoints:
        out += _endpoint_listeners("[agents] endpoints", text)
    if cfg.agents.shard_endpoint:
        out += _endpoint_listeners("[agents] shard_endpoint", cfg.agents.shard_endpoint,
                                   worker_count(cfg))
    if cfg.events.endpoint:
        out += _endpoint_listeners("[events] endpoint", cfg.events.endpoint)
    listen = parse_listen(cfg.metrics.listen) if cfg.metrics.listen else None
    if listen is not None:
        out.append(Listener(f"[metrics] listen {cfg.metrics.listen}", "tcp", listen[0],
                            listen[1]))
    return out


def clash(a: Listener, b: Listener) -> str | None:
    """What two listeners would both bind, or None when they can live side by side."""
    if a.transport != b.transport:
        return None
    if a.transport == "ipc":
        same = os.path.normpath(a.path) == os.path.normpath(b.path)
        return f"the ipc path {a.path}" if same else None
    if a.port == b.port and _same_address(a.host, b.host):
        return f"TCP port {a.port}"
    return None


def check_clashes(found: list[Listener], origin: str) -> None:
    """Raise ConfigError naming the first two listeners that would bind the same thing: the
    second bind would fail at run time (a worker then serves without its shard endpoint,
    the metrics go off), which --check-config should say instead."""
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            what = clash(a, b)
            if what is not None:
                hint = ""
                if "shard_endpoint" in a.label + b.label:
                    hint = (" (the shard endpoint takes one port per worker, from its own "
                            "upward; docs/operations.md, Ports)")
                raise ConfigError(
                    f"{origin}: {a.label} and {b.label} would both listen on {what}: give "
                    f"one of them another {'path' if a.transport == 'ipc' else 'port'}{hint}")


def _check_listeners(cfg: Config, origin: str) -> None:
    shard = cfg.agents.shard_endpoint
    ep = parse_endpoint(shard) if shard else None
    if ep is not None and ep.transport == "tcp":
        last = int(ep.address.rpartition(":")[2]) + worker_count(cfg) - 1
        if last > 65535:
            raise ConfigError(
                f"{origin}: [agents] shard_endpoint: {shard} with {worker_count(cfg)} workers "
                f"needs ports up to {last}, past 65535: choose a lower port")
    check_clashes(listeners(cfg), origin)


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
