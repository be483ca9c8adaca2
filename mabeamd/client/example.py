"""A runnable example agent: echoes every message back to its sender.

    python -m mabeamd.client.example --agent echo-1 [--endpoint tcp://127.0.0.1:7700]

Send it something from another agent (topic "echo") and it answers with topic "echoed".
As a managed agent, put it in the daemon's config; the id and endpoint come from the
environment:

    [managed.echo]
    cmd = "/path/to/venv/bin/python"
    args = ["-m", "mabeamd.client.example"]
"""

from __future__ import annotations

import argparse
import logging

from mabeamd.client.agent import Agent, Message, topic


class EchoAgent(Agent):
    capabilities = ["echo"]
    metadata = {"example": True}

    async def on_start(self) -> None:
        logging.info("%s registered; waiting for messages", self.id)

    @topic("echo")
    async def echo(self, msg: Message) -> None:
        await self.send(msg.sender, msg.body, topic="echoed")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m mabeamd.client.example")
    p.add_argument("--agent", help="agent id (default: $MABEAM_AGENT_ID)")
    p.add_argument("--endpoint", help="daemon endpoint (default: $MABEAM_ENDPOINT or "
                                      "tcp://127.0.0.1:7700)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    EchoAgent(args.agent, args.endpoint).run()


if __name__ == "__main__":
    main()
