"""docs/protocol.md: its byte-level examples are what the codec produces, its error-code
table is the code's, and its op table lists exactly the ops the control socket serves."""

from __future__ import annotations

import re

from mabeamd.control.commands import COMMANDS
from mabeamd.net import wire
from mabeamd.testing import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()


def hexline(frame: bytes) -> str:
    return frame.hex(" ")


def test_byte_examples_match_the_codec() -> None:
    req = wire.encode({"id": 1, "op": "ping"}, {})
    assert f"frame 0:  {hexline(req[0])} " in DOC
    assert f"frame 1:  {hexline(req[1])} " in DOC
    assert f"frame 2:  {hexline(req[2])} " in DOC
    assert hexline(wire.pack({"id": 1, "status": "ok"})) in DOC
    assert hexline(wire.pack({"id": 2, "op": "nope"})) in DOC


def test_error_code_table_matches_the_code() -> None:
    codes = {v for k, v in vars(wire.ErrorCode).items() if k.isupper()}
    table = DOC.split("## Error codes", 1)[1].split("##", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert documented == codes


def test_agent_op_table_matches_the_service() -> None:
    from mabeamd.agents.agentops import AgentService
    from mabeamd.agents.endpoint import AgentEndpoint

    class Stub(AgentEndpoint):
        def __init__(self) -> None:
            self.handlers = {}

    stub = Stub()
    service = AgentService(stub, None, None, None)  # type: ignore[arg-type]
    table = DOC.split("### Agent ops", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, re.M))
    # The node ops between the nodes of a cluster come with the directory and the remote
    # sessions (cluster mode only): attached here as the arbiter attaches them.
    assert documented - set(stub.handlers) == {"node.deliver", "node.push", "node.respond",
                                                    "node.get_session", "node.cancel_session"}
    from mabeamd.sessions.remote import RemoteSessions

    class Directory:
        node = "n"
        on_change = on_remote_gone = None

    class Sessions:
        endpoint = stub

        def id_prefix(self, head: str) -> None:
            pass

    service.attach_directory(Directory())  # type: ignore[arg-type]
    RemoteSessions(Sessions(), Directory(), lambda i, a: None)  # type: ignore[arg-type]
    assert documented == set(stub.handlers)


def test_variable_op_table_matches_the_service() -> None:
    from mabeamd.agents.endpoint import AgentEndpoint
    from mabeamd.agents.varops import VariableService
    from mabeamd.net.shardcall import ShardCalls

    class Stub(AgentEndpoint):
        def __init__(self) -> None:
            self.handlers = {}

    stub = Stub()
    calls = ShardCalls(1, None, None, None)  # type: ignore[arg-type]
    VariableService(calls, None, None).install(stub)  # type: ignore[arg-type]
    table = DOC.split("### Variable ops", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, re.M))
    assert documented == set(stub.handlers)


def test_session_op_table_matches_the_service() -> None:
    from mabeamd.agents.endpoint import AgentEndpoint
    from mabeamd.sessions.service import SessionService

    class Stub(AgentEndpoint):
        def __init__(self) -> None:
            self.handlers = {}

    class NoPlugins:
        def protocols(self) -> dict[str, object]:
            return {}

    stub = Stub()
    SessionService(None, None, None, None, NoPlugins(),  # type: ignore[arg-type]
                   settings=None).install(stub)  # type: ignore[arg-type]
    table = DOC.split("### Session ops", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, re.M))
    assert documented == set(stub.handlers)


def test_hello_example_bytes() -> None:
    frames = wire.encode({"id": 7, "op": "hello"}, {"agent": "a1", "capabilities": ["plan"]})
    for frame in frames:
        assert hexline(frame) in DOC
    assert hexline(wire.pack({"push": "message", "id": 1})) in DOC


def test_control_op_table_matches_the_handlers() -> None:
    table = DOC.split("## Control ops", 1)[1].split("##", 1)[0]
    documented: set[str] = set()
    for cell in re.findall(r"^\| ((?:`[\w.]+`(?:, )?)+) \|", table, re.M):
        documented |= set(re.findall(r"`([\w.]+)`", cell))
    assert documented == set(COMMANDS)


def test_push_table_lists_every_push_the_daemon_sends() -> None:
    """Every push op named in the daemon's source (endpoint.push(conn, id, "OP", ...) or a
    worker's {"op": "session.…"} push) is in the page's push table, and nothing else."""
    sent: set[str] = set()
    for path in (ROOT / "mabeamd").rglob("*.py"):
        src = path.read_text()
        sent |= set(re.findall(r'\.push\([^,]+,\s*[^,]+,\s*"([a-z_.]+)"', src))
        sent |= set(re.findall(r'out\("push", \{[^}]*?"op": "([a-z_.]+)"', src))
    table = DOC.split("### Pushes", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", table, re.M))
    assert sent and documented == sent


def test_every_shard_endpoint_op_and_the_wrong_shard_rule_are_documented() -> None:
    from mabeamd.storage.variables import NAMED_OPS

    section = DOC.split("### Shard endpoints", 1)[1].split("### Session ops", 1)[0]
    for op in NAMED_OPS:
        assert f"`{op}`" in section, op
    assert "wrong_shard" in section and '"shard"' in section and '"shards"' in section
