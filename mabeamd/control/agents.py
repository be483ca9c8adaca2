"""The registered agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress


@command("agents.list", changes=False)
async def agents_list(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """Every registered agent, healthy or not, in id order.

    Reply: {"agents": [AGENT]}, each as `discover` shows it.
    """
    return {"agents": host.agent_rows()}


@command("agents.show", {"agent"}, {"agent"}, changes=False)
async def agents_show(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """One agent, with the connection it is bound to.

    Body: {"agent": ID}
    Reply: the agent plus "connection": {"endpoint", "routing_id"}
    Refused: not_found.
    """
    return host.agent(str(body.get("agent")))
