"""The protocol plugin example of docs/plugins.md, installed from the page itself and run in
a real session: the documentation cannot drift from what works."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mabeamd.client import Agent, AsyncClient, Invitation, invitation
from mabeamd.testing import ROOT, Daemon, short_tmpdir
from tests.e2e.test_plugins import install

DOC = (ROOT / "docs" / "plugins.md").read_text()


def example_code() -> str:
    section = DOC.split("## Writing a protocol", 1)[1]
    block = re.search(r"```python\n(# mabeam_first_claim\.py.*?)```", section, re.S)
    assert block, "docs/plugins.md lost its protocol example"
    return block.group(1)


class Claimer(Agent):
    capabilities = ["claimer"]

    def __init__(self, agent_id: str, endpoint: str, delay: float) -> None:
        super().__init__(agent_id, endpoint)
        self.delay = delay

    @invitation("first_claim")
    async def claim(self, inv: Invitation) -> Any:
        await asyncio.sleep(self.delay)
        return {"claim": True}


def test_the_documented_protocol_plugin_runs(make_daemon: Callable[..., Daemon]) -> None:
    site: Path = short_tmpdir()
    install(site, "mabeam-first-claim", {"first_claim": "mabeam_first_claim"},
            {"mabeam_first_claim": example_code()})
    d = make_daemon(env={"PYTHONPATH": str(site)}).start()

    async def main() -> dict[str, Any]:
        agents = [Claimer("slow", d.agent_endpoint, 0.3), Claimer("quick", d.agent_endpoint, 0)]
        tasks = [asyncio.create_task(a.run_async()) for a in agents]
        try:
            async with AsyncClient(d.agent_endpoint) as c:
                await c.register("boss")
                await c.wait_for(2, capabilities=["claimer"])
                await c.create_var("boss", "{gpu}.owner", None)
                out = await c.start_session("boss", "first_claim",
                                            query={"capabilities": ["claimer"]},
                                            variables=["{gpu}.owner"],
                                            params={"resource": "gpu0"}, deadline=5)
                out["var"] = await c.get_var("{gpu}.owner", local=False)
                return out
        finally:
            for a in agents:
                a.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    out = asyncio.run(main())
    assert out["state"] == "applied", out
    assert out["result"] == {"winner": "quick", "claimants": ["quick", "slow"]}
    assert out["var"]["value"] == "quick"
    protos = {p["name"]: p for p in d.call("protocols.list")}
    assert protos["first_claim"]["plugin"] == "first_claim"


class Voter(Agent):
    capabilities = ["shared-voter"]

    def __init__(self, agent_id: str, client: AsyncClient, choice: str) -> None:
        super().__init__(agent_id, client=client)
        self.choice = choice
        self.seen: list[str] = []

    @invitation("vote")
    async def ballot(self, inv: Invitation) -> Any:
        self.seen.append(inv.to)
        return {"vote": self.choice}


def test_agents_sharing_one_client_each_answer_their_own_invitations(
        make_daemon: Callable[..., Daemon]) -> None:
    """Agent(client=...) lets many agents share a connection. Each Agent's loop took the
    next push of the client, whoever it was for: an invitation to v1 could be answered by
    v2's handler, as v2 (refused: v2 had answered), and v1 never voted. Each Agent now
    reads the pushes addressed to it."""
    d = make_daemon().start()

    async def main() -> tuple[dict[str, Any], list[Voter]]:
        async with AsyncClient(d.agent_endpoint) as shared:
            voters = [Voter(f"v{i}", shared, "red" if i < 5 else "blue") for i in range(8)]
            # Started last to first: their loops then wait in the other order than the
            # pushes (sorted by agent id) come, as a real mix of agents would.
            tasks = [asyncio.create_task(v.run_async()) for v in reversed(voters)]
            try:
                async with AsyncClient(d.agent_endpoint) as c:
                    await c.register("boss")
                    await c.wait_for(8, capabilities=["shared-voter"])
                    await c.create_var("boss", "colour", None)
                    outs = [await c.start_session(
                        "boss", "vote", query={"capabilities": ["shared-voter"]},
                        variables=["colour"], params={"options": ["red", "blue"]},
                        deadline=10) for _ in range(3)]
                    return outs[-1], voters
            finally:
                for v in voters:
                    v.stop()
                await asyncio.gather(*tasks, return_exceptions=True)

    out, voters = asyncio.run(main())
    assert out["state"] == "applied" and out["result"]["votes"] == 8, out["result"]
    assert out["result"]["decision"] == "red"
    assert all(v.seen == [v.id] * 3 for v in voters), [(v.id, v.seen) for v in voters]
