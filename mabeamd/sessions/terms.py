"""A session.start's protocol and deadline, settled the same way in both processes.

The arbiter settles them before it forwards a start (an unknown protocol or a bad deadline
is refused without bothering a worker; `wait` needs the deadline); the worker settles them
again from the spec it is given, because it runs the protocol from its own plugins (loaded
at its start: an arbiter reloaded since may know protocols it does not). Both call this,
so the two cannot disagree on a default or a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.protocol import Protocol


def protocol_named(protocols: Mapping[str, Protocol], name: Any) -> Protocol:
    """The installed protocol `name`, or bad_request listing the installed ones."""
    proto = protocols.get(name) if isinstance(name, str) else None
    if proto is None:
        raise WireError(ErrorCode.BAD_REQUEST, f"unknown protocol {name!r}; installed: "
                        f"{', '.join(sorted(protocols)) or 'none'}")
    return proto


def deadline_of(proto: Protocol, deadline: Any, max_deadline: float) -> float:
    """The session's deadline in seconds: the one asked for (in (0, max_deadline]), else the
    protocol's default, never past max_deadline ([sessions] max_deadline)."""
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(
            deadline, (int, float)) or not 0 < deadline <= max_deadline):
        raise WireError(ErrorCode.BAD_REQUEST, "deadline must be seconds in (0, "
                        f"{max_deadline:g}] ([sessions] max_deadline)")
    return float(min(deadline or proto.default_deadline, max_deadline))
