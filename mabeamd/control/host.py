"""What the control commands need from the daemon, and nothing more.

The arbiter implements `ControlHost` (daemon/controlside.py); the commands see only these
methods and views, never the services behind them, so a command can be driven by a small
fake host in a unit test and the arbiter can rearrange its insides without touching them.
Like `WatcherHost` (daemon/watcher.py) for the worker watchers.

Refusals (`WireError`) raised by the daemon behind a method reach the admin as they are:
`managed_program` answers `not_found` for an unknown name, the session methods
`not_found`/`conflict`, the variable methods `busy` while a shard's worker restarts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mabeamd import protocol
    from mabeamd.control.server import Progress


class ManagedProgram(Protocol):
    """One managed agent program, as `managed.*` drive it."""

    @property
    def name(self) -> str: ...

    @property
    def procs(self) -> Sized: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def scale(self, n: int) -> None: ...

    def info(self) -> dict[str, Any]: ...


class ControlHost(Protocol):
    """The daemon as its control commands see it."""

    # --- the daemon ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]: ...

    def plugin_records(self) -> list[dict[str, Any]]: ...

    async def reload(self, source: str) -> dict[str, Any]:
        """{"ok": True, ...} once applied, or {"ok": False, "error": ...} if refused."""
        ...

    def request_stop(self, reason: str) -> None: ...

    def refuse_if_stopping(self) -> None:
        """Raise `shutting_down` once a stop was requested."""
        ...

    async def wait_workers_stopped(self, timeout: float) -> bool:
        """True once every worker has exited; False if `timeout` seconds passed first."""
        ...

    # --- the cluster (cluster mode) -----------------------------------------------------

    async def cluster_status(self) -> dict[str, Any]:
        """The cluster's nodes, etcd members and health, this node's lease and caches;
        raises bad_request on a single node."""
        ...

    # --- workers (and their shards: shard i lives on worker i) ------------------------------

    @property
    def worker_count(self) -> int: ...

    def worker_states(self) -> list[str]: ...

    def worker_rows(self) -> list[dict[str, Any]]:
        """Per worker: its watcher's view, its shard endpoint, traffic and storage state."""
        ...

    async def restart_worker(self, index: int, progress: Progress) -> dict[str, Any]: ...

    # --- agents and managed programs -------------------------------------------------------

    def agent_rows(self) -> list[dict[str, Any]]: ...

    def agent(self, agent_id: str) -> dict[str, Any]: ...

    def managed_rows(self) -> list[dict[str, Any]]: ...

    def managed_program(self, name: Any) -> ManagedProgram: ...

    # --- variables, as @admin (the control socket is root-equivalent) ---------------------

    async def var_request(self, op: str, body: dict[str, Any]) -> Any:
        """A var.* request on a named variable, sent to the shard that holds it."""
        ...

    async def var_list(self, body: dict[str, Any]) -> Any:
        """A var.list page merged across the shards (the body is checked there)."""
        ...

    async def to_shard(self, index: int, op: str, body: dict[str, Any]) -> Any: ...

    # --- sessions and protocols ------------------------------------------------------------

    def session_rows(self, state: str | None) -> list[dict[str, Any]]: ...

    async def session(self, session: Any) -> dict[str, Any]: ...

    async def cancel_session(self, session: Any, by: str, reason: Any) -> Any: ...

    async def decide_session(self, session: Any, decision: Any) -> Any: ...

    def protocols(self) -> Mapping[str, protocol.Protocol]: ...

    def protocol_plugin(self, name: str) -> str | None: ...
