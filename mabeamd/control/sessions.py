"""Coordination sessions, as an operator sees them (any session, any initiator), and the
protocols they run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress


@command("sessions.list", {"state"}, changes=False)
async def sessions_list(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Running and recently ended sessions, running first.

    Body: {"state"?: STATE}, only the sessions in that state
    Reply: [{"session", "protocol", "initiator", "state", "shard", "created_at", "reason"}]
    """
    state = body.get("state")
    if state is not None and not isinstance(state, str):
        raise WireError(ErrorCode.BAD_REQUEST, "state must be a session state")
    return host.session_rows(state)


@command("sessions.show", {"session"}, {"session"}, changes=False)
async def sessions_show(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """One session in full: participants, rounds, result.

    Body: {"session"}
    Reply: its record, as session.get
    Refused: not_found.
    """
    return await host.session(body["session"])


@command("sessions.cancel", {"session", "reason"}, {"session"})
async def sessions_cancel(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Cancel a running session, whoever started it.

    Nothing of its outcome is applied.

    Body: {"session", "reason"?: STR}, the reason recorded with it
    Reply: {"session", "cancelling": true}
    Refused: not_found, conflict (it has ended), bad_request (reason).
    """
    return await host.cancel_session(body["session"], "mabeamctl", body.get("reason"))


@command("sessions.decide", {"session", "decision"}, {"session", "decision"})
async def sessions_decide(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """The operator's decision for an escalated session.

    Body: {"session", "decision": ANY}, in the form its protocol asks for
    Reply: {"session", "accepted": true}
    Refused: conflict unless the session is escalated, bad_request if the protocol
    refuses the decision (the session keeps waiting).
    """
    return await host.decide_session(body["session"], body["decision"])


@command("protocols.list", changes=False)
async def protocols_list(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """The coordination protocols the daemon offers.

    Reply: [{"name", "summary", "default_deadline", "plugin"}]
    """
    return [{**p.describe(), "plugin": host.protocol_plugin(name)}
            for name, p in sorted(host.protocols().items())]
