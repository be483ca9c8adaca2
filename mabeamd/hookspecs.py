"""Every hook mabeamd calls, in one place, grouped by when it runs.

Plugins implement hooks with ``@mabeamd.hookspecs.hookimpl`` and are found through the
``mabeamd.plugins`` entry-point group; built-in plugins are registered the same way.

Rules for every hook (see docs/plugins.md, which a test keeps in step with this module):

- Hooks run on an event loop (the arbiter's, or for session hooks the worker's that runs the
  session): they must return quickly and never block. Push slow work to a thread.
- All implementations run, newest-registered first, and their results are collected, unless a
  hook says "first result wins".
- A plugin whose hook raises is logged, disabled (unregistered) and listed as failed by
  ``mabeamctl plugins``; the daemon carries on. Hook wrappers are not supported.
- An implementation may accept any subset of a hook's arguments, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mabeamd.config import Config
    from mabeamd.paths import Paths
    from mabeamd.protocol import Protocol

PROJECT = "mabeamd"
ENTRY_POINT_GROUP = "mabeamd.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- Configuration -------------------------------------------------------------------------


@hookspec
def mabeamd_configure(config: Config) -> None:
    """Called with the configuration in force: once at start-up before any worker is spawned,
    and again after each successful reload (SIGHUP or ``mabeamctl reload``). Not called for a
    reload that was refused. All implementations run; return values are ignored."""


# --- Daemon lifecycle ----------------------------------------------------------------------


@hookspec
def mabeamd_startup(config: Config, paths: Paths) -> None:
    """Called once when the daemon is ready (every worker running or failed), just before it
    tells systemd READY=1. All implementations run; return values are ignored."""


@hookspec
def mabeamd_shutdown(reason: str) -> None:
    """Called once when a graceful stop begins, before workers are stopped. ``reason`` is
    ``"SIGTERM"``, ``"SIGINT"`` or ``"mabeamctl stop"``. All implementations run."""


# --- Workers -------------------------------------------------------------------------------


@hookspec
def mabeamd_worker_event(index: int, event: str, details: dict[str, Any]) -> None:
    """Called on each worker state change. ``event`` is one of ``spawned``, ``running``,
    ``exited``, ``hung``, ``spawn_failed``, ``failed`` (crash budget spent) and ``stopped``.
    ``details`` holds at least ``pid`` (or None) and ``generation``; ``exited`` adds
    ``status`` (e.g. ``"exit 1"``, ``"killed by SIGKILL"``) and ``planned``. All
    implementations run; return values are ignored."""


# --- Introspection -------------------------------------------------------------------------


@hookspec
def mabeamd_status() -> dict[str, Any] | None:
    """Called for each ``mabeamctl status``. Return a small msgpack-serialisable map to show
    under the plugin's name, or None to add nothing. All implementations run."""


# --- Coordination sessions -----------------------------------------------------------------


@hookspec
def mabeamd_protocols() -> list[Protocol] | None:
    """Called when plugins are loaded: in the arbiter (``mabeamctl protocols list``), in every
    worker (which runs the sessions) and in ``mabeamctl protocols eval``. Return the
    ``mabeamd.protocol.Protocol`` instances this plugin provides. All implementations run; a
    protocol name that an earlier plugin (by plugin name) already provides is refused and
    logged."""


@hookspec(firstresult=True)
def mabeamd_session_params(protocol: str, params: dict[str, Any], initiator: str,
                           ) -> str | None:
    """Called in the session's worker when a session starts, after the protocol's own
    ``check_params`` (``params`` has the defaults filled in). Return a reason to refuse the
    session (the initiator gets ``bad_request`` with it), or None to allow it. The first
    result wins: the first refusal stops the call."""


@hookspec(firstresult=True)
def mabeamd_session_outcome(session: dict[str, Any], outcome: dict[str, Any]) -> str | None:
    """Called in the session's worker after the protocol decided and its own checks passed,
    before anything is written. ``outcome`` holds ``result`` and ``writes`` (variable ->
    value). Return a reason to fail the session (nothing is applied), or None. The first
    result wins: the first refusal stops the call."""


@hookspec
def mabeamd_session_started(session: dict[str, Any]) -> None:
    """Called in the session's worker once a session is accepted and its variables locked,
    before participants are invited (metrics, audit). All implementations run."""


@hookspec
def mabeamd_session_ended(session: dict[str, Any]) -> None:
    """Called in the session's worker when a session ends in any state (``applied``,
    ``failed``, ``cancelled``, ``timed_out``), after its writes were applied and its locks
    released. ``session`` is the final record that ``sessions show`` prints. All
    implementations run."""


# --- Authorisation -------------------------------------------------------------------------


@hookspec(firstresult=True)
def mabeamd_authorize(actor: str, op: str, details: dict[str, Any]) -> str | None:
    """Called before an agent's state-changing request is served: ``op`` is
    ``var.create``, ``var.set``, ``var.delete``, ``session.start``, ``session.respond`` or
    ``session.cancel``; ``actor`` the agent id making it; ``details`` the request body. It
    runs in the arbiter, and for variable writes an agent sends to a shard endpoint in that
    shard's worker (each process loads the plugins: keep state a refusal depends on outside
    the process, or refuse the same way in each). Return a reason to refuse (the agent gets
    ``forbidden``), or None to allow. The first result wins: the first refusal stops the
    call."""
