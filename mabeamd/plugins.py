"""The plugin host: finds plugins by entry point, registers them, and calls hooks so that one
broken plugin is disabled and reported instead of taking the daemon down."""

from __future__ import annotations

import importlib.metadata as md
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pluggy

from mabeamd import hookspecs
from mabeamd.protocol import Protocol

log = logging.getLogger(__name__)


@dataclass
class PluginRecord:
    name: str
    value: str  # the entry point's target, e.g. "pkg.module:obj"
    dist: str | None = None
    version: str | None = None
    state: str = "active"  # active | failed | disabled
    error: str | None = None
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class PluginHost:
    def __init__(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self.group = group
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.protocol_owner: dict[str, str] = {}

    # --- loading ---------------------------------------------------------------------------

    def discover(self) -> list[md.EntryPoint]:
        return sorted(md.entry_points(group=self.group), key=lambda ep: ep.name)

    def load(self, disabled: Iterable[str] = (),
             progress: Callable[[], None] = lambda: None) -> None:
        """(Re)load every plugin of the entry-point group; unregisters what was loaded before.
        `progress` is called before each plugin's import (a worker's sign of life: imports
        can take seconds on a loaded host, and start_timeout bounds its silence).

        Already imported modules are not re-imported: a changed plugin's code takes a restart.
        New plugins, removed plugins, the disabled list and plugins that failed before are all
        picked up again.
        """
        for name in list(self.records):
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
        self.records.clear()
        off = set(disabled)
        for ep in self.discover():
            dist, version = _dist_of(ep)
            rec = PluginRecord(ep.name, ep.value, dist, version)
            if ep.name in self.records:
                rec.state, rec.error = "failed", f"duplicate plugin name {ep.name!r}"
                log.error("plugin %s (%s): %s", ep.name, ep.value, rec.error)
                self.records[f"{ep.name}#{len(self.records)}"] = rec
                continue
            self.records[ep.name] = rec
            if ep.name in off:
                rec.state = "disabled"
                log.info("plugin %s disabled by configuration", ep.name)
                continue
            progress()
            try:
                self.register(ep.name, ep.load())
            except Exception as exc:
                self._fail(rec, f"failed to load: {exc!r}")
                log.debug("%s", traceback.format_exc())
            else:
                log.info("plugin %s loaded from %s", ep.name, ep.value)
        unknown = off - set(self.records)
        for name in sorted(unknown):
            log.warning("[plugins] disabled names %r, which no installed plugin has", name)

    def register(self, name: str, obj: object) -> None:
        """Register one plugin object (module or instance); raises if its hooks are invalid."""
        self.pm.register(obj, name=name)
        try:
            callers = self.pm.get_hookcallers(obj) or []
            hooks = [caller.name for caller in callers]
            unknown = [caller.name for caller in callers if not caller.has_spec()]
            if unknown:
                raise ValueError(f"implements unknown hooks: {', '.join(sorted(unknown))}")
            for caller in callers:
                for impl in caller.get_hookimpls():
                    if impl.plugin is obj and (impl.hookwrapper or impl.wrapper):
                        raise ValueError(f"hook wrappers are not supported ({caller.name})")
        except Exception:
            self.pm.unregister(obj)
            raise
        rec = self.records.setdefault(name, PluginRecord(name, repr(obj)))
        rec.hooks = sorted(hooks)

    def _fail(self, rec: PluginRecord, error: str) -> None:
        rec.state, rec.error = "failed", error
        if self.pm.has_plugin(rec.name):
            self.pm.unregister(name=rec.name)
        log.error("plugin %s disabled: %s", rec.name, error)

    # --- calling ---------------------------------------------------------------------------

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of `hook` (newest first, as pluggy orders them); return
        [(plugin name, result)] for non-None results, only the first for a hook whose spec
        says firstresult. A raising plugin is disabled; a call that does not give every
        argument the spec names is the daemon's bug, not the plugins': it raises
        pluggy.HookCallError (as pluggy's own hook call does) and disables nobody."""
        caller = getattr(self.pm.hook, hook)
        spec = caller.spec
        if spec is not None:
            missing = [a for a in spec.argnames if a not in kwargs]
            if missing:
                raise pluggy.HookCallError(f"hook {hook!r} called without argument(s) {missing}")
        firstresult = bool(spec and spec.opts.get("firstresult"))
        results: list[tuple[str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):
            name = self.pm.get_name(impl.plugin) or "?"
            args = [kwargs[a] for a in impl.argnames]  # a subset of the spec's: checked above
            try:
                result = impl.function(*args)
            except Exception as exc:
                rec = self.records.setdefault(name, PluginRecord(name, repr(impl.plugin)))
                self._fail(rec, f"{hook} raised {exc!r}")
                log.debug("%s", traceback.format_exc())
                continue
            if result is not None:
                results.append((name, result))
                if firstresult:
                    break
        return results

    def refusal(self, hook: str, **kwargs: Any) -> str | None:
        """For the firstresult hooks that return a reason to refuse: that reason, or None."""
        for name, reason in self.call(hook, **kwargs):
            return f"{reason} (plugin {name})"
        return None

    def authorize(self, actor: str, op: str, details: dict[str, Any]) -> str | None:
        """The mabeamd_authorize hook (a reason to refuse, or None), in the arbiter and in
        workers serving direct writes."""
        if not self.pm.hook.mabeamd_authorize.get_hookimpls():
            return None  # the common case, without building the call
        return self.refusal("mabeamd_authorize", actor=actor, op=op, details=details)

    def protocols(self) -> dict[str, Protocol]:
        """Every protocol the active plugins provide, by name. A name provided twice keeps
        the first (plugins in name order); something that is not a Protocol is refused."""
        found: dict[str, Protocol] = {}
        for plugin, provided in sorted(self.call("mabeamd_protocols")):
            for proto in provided if isinstance(provided, (list, tuple)) else [provided]:
                if not isinstance(proto, Protocol) or not proto.name:
                    log.error("plugin %s: %r is not a named mabeamd.protocol.Protocol; ignored",
                              plugin, proto)
                elif proto.name in found:
                    log.error("plugin %s: protocol %r is already provided; ignored", plugin,
                              proto.name)
                else:
                    found[proto.name] = proto
                    self.protocol_owner[proto.name] = plugin
        return found

    def summary(self) -> dict[str, int]:
        counts = {"active": 0, "failed": 0, "disabled": 0}
        for rec in self.records.values():
            counts[rec.state] = counts.get(rec.state, 0) + 1
        return counts
