"""The control commands against a small fake host (no daemon, no sockets), and their
documentation: every op has a docstring and mabeamctl's help shows it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mabeamd.control.command import Command
from mabeamd.control.commands import COMMANDS, GROUPS, build_handlers
from mabeamd.control.host import ControlHost
from mabeamd.ctl.main import build_parser
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.protocol import Protocol
from mabeamd.storage import backup


class FakeProgram:
    def __init__(self, name: str, n: int) -> None:
        self.name = name
        self.procs = list(range(n))
        self.log: list[str] = []

    def start(self) -> None:
        self.log.append("start")

    async def stop(self) -> None:
        self.log.append("stop")

    async def scale(self, n: int) -> None:
        self.log.append(f"scale {n}")
        self.procs = list(range(n))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "numprocesses": len(self.procs)}


class Voting(Protocol):
    name = "vote"
    summary = "one round of votes"


class Auction(Protocol):
    name = "auction"
    summary = "sealed bids"
    default_deadline = 5.0


class FakeHost:
    """Records what the commands ask; the daemon's side of each answer is made up."""

    def __init__(self, workers: int = 3) -> None:
        self.worker_count = workers
        self.stopping = False
        self.restarted: list[int] = []
        self.programs = {"bots": FakeProgram("bots", 2)}
        self.stop_polls = 0
        self.states = ["stopping"] * workers
        self.backup_dir: Path | None = None

    def status(self) -> dict[str, Any]:
        return {"state": "running"}

    def plugin_records(self) -> list[dict[str, Any]]:
        return [{"name": "p"}]

    async def reload(self, source: str) -> dict[str, Any]:
        return {"ok": False, "error": f"bad config ({source})"}

    def request_stop(self, reason: str) -> None:
        self.stopping = True

    def refuse_if_stopping(self) -> None:
        if self.stopping:
            raise WireError(ErrorCode.SHUTTING_DOWN, "mabeamd is shutting down")

    async def wait_workers_stopped(self, timeout: float) -> bool:
        self.stop_polls += 1
        if self.stop_polls == 2:
            self.states[0] = "stopped"
        return self.stop_polls > 2

    def worker_states(self) -> list[str]:
        return self.states

    def worker_rows(self) -> list[dict[str, Any]]:
        return [{"index": i} for i in range(self.worker_count)]

    async def restart_worker(self, index: int, progress: Any) -> dict[str, Any]:
        await progress(f"worker {index}")
        self.restarted.append(index)
        return {"index": index}

    def agent_rows(self) -> list[dict[str, Any]]:
        return []

    def agent(self, agent_id: str) -> dict[str, Any]:
        raise WireError(ErrorCode.NOT_FOUND, f"no agent {agent_id!r}")

    def managed_rows(self) -> list[dict[str, Any]]:
        return [p.info() for p in self.programs.values()]

    def managed_program(self, name: Any) -> FakeProgram:
        if name not in self.programs:
            raise WireError(ErrorCode.NOT_FOUND, f"no managed program {name!r}")
        return self.programs[name]

    async def var_request(self, op: str, body: dict[str, Any]) -> Any:
        return {"op": op, **body}

    async def var_list(self, body: dict[str, Any]) -> Any:
        return {"variables": [], "body": body}

    async def to_shard(self, index: int, op: str, body: dict[str, Any]) -> Any:
        if op == "var.backup":  # what the shard's worker does with it
            return backup.write_shard(Path(body["dir"]), index, 10 + index, [])
        return {"shard": index, "op": op}

    def session_rows(self, state: str | None) -> list[dict[str, Any]]:
        return [{"state": state}]

    async def session(self, session: Any) -> dict[str, Any]:
        return {"session": session}

    async def cancel_session(self, session: Any, by: str, reason: Any) -> Any:
        return {"session": session, "by": by, "reason": reason}

    async def decide_session(self, session: Any, decision: Any) -> Any:
        return {"session": session, "decision": decision}

    def protocols(self) -> Mapping[str, Protocol]:
        return {"vote": Voting(), "auction": Auction()}

    def protocol_plugin(self, name: str) -> str | None:
        return {"auction": "mabeam_auctions"}.get(name)


def call(host: FakeHost, op: str, body: dict[str, Any] | None = None,
         ) -> tuple[Any, list[str]]:
    """Run one op as the server would; the reply and the progress lines."""
    checked: ControlHost = host
    lines: list[str] = []

    async def progress(message: str) -> None:
        lines.append(message)

    handler = build_handlers(checked)[op]
    return asyncio.run(handler(body or {}, progress)), lines


def refusal(host: FakeHost, op: str, body: dict[str, Any] | None = None) -> WireError:
    with pytest.raises(WireError) as info:
        call(host, op, body)
    return info.value


def test_workers_restart_checks_the_index_before_anything_else() -> None:
    host = FakeHost(workers=3)
    for bad in (True, "1", 1.0, None):
        err = refusal(host, "workers.restart", {"index": bad})
        assert (err.code, err.message) == (ErrorCode.BAD_REQUEST,
                                           'index must be a worker number or "all"')
    err = refusal(host, "workers.restart", {"index": 3})
    assert (err.code, err.message) == (ErrorCode.NOT_FOUND, "no worker 3; workers are 0..2")
    assert refusal(host, "workers.restart", {}).message == \
        "workers.restart: missing field(s) ['index']"
    assert host.restarted == []
    host.stopping = True
    assert refusal(host, "workers.restart", {"index": -1}).code == ErrorCode.NOT_FOUND
    assert refusal(host, "workers.restart", {"index": 0}).code == ErrorCode.SHUTTING_DOWN


def test_workers_restart_all_goes_one_at_a_time_in_order() -> None:
    host = FakeHost(workers=3)
    out, lines = call(host, "workers.restart", {"index": "all"})
    assert out == {"restarted": [{"index": 0}, {"index": 1}, {"index": 2}]}
    assert lines == ["worker 0", "worker 1", "worker 2"]
    out, _ = call(host, "workers.restart", {"index": 1})
    assert out == {"restarted": [{"index": 1}]}


def test_managed_scale_checks_the_count() -> None:
    host = FakeHost()
    for bad in (True, -1, 1001, "3", 2.0):
        err = refusal(host, "managed.scale", {"name": "bots", "count": bad})
        assert (err.code, err.message) == (ErrorCode.BAD_REQUEST, "count must be 0..1000")
    assert refusal(host, "managed.scale", {"name": "nope", "count": 1}).code == \
        ErrorCode.NOT_FOUND
    assert host.programs["bots"].log == []
    out, lines = call(host, "managed.scale", {"name": "bots", "count": 5})
    assert out == {"name": "bots", "numprocesses": 5}
    assert lines == ["scaling bots from 2 to 5"]
    out, _ = call(host, "managed.scale", {"name": "bots", "count": 0})
    assert out["numprocesses"] == 0


def test_managed_restart_stops_then_starts() -> None:
    host = FakeHost()
    out, lines = call(host, "managed.restart", {"name": "bots"})
    assert out == {"name": "bots", "numprocesses": 2}
    assert host.programs["bots"].log == ["stop", "start"]
    assert lines == ["stopping bots"]


def test_protocols_list_is_sorted_and_names_the_plugin() -> None:
    out, _ = call(FakeHost(), "protocols.list")
    assert out == [{"name": "auction", "summary": "sealed bids", "default_deadline": 5.0,
                    "plugin": "mabeam_auctions"},
                   {"name": "vote", "summary": "one round of votes",
                    "default_deadline": Voting.default_deadline, "plugin": None}]


def test_backup_refuses_a_relative_or_used_directory(tmp_path: Path) -> None:
    host = FakeHost()
    for bad in ("relative/dir", 7, ""):
        err = refusal(host, "backup", {"dir": bad})
        assert (err.code, err.message) == (ErrorCode.BAD_REQUEST, "dir must be an absolute path")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    err = refusal(host, "backup", {"dir": str(tmp_path / "used")})
    assert err.code == ErrorCode.BAD_REQUEST and err.message.startswith("backup: ")
    host.stopping = True
    assert refusal(host, "backup", {"dir": str(tmp_path / "new")}).code == \
        ErrorCode.SHUTTING_DOWN
    assert not (tmp_path / "new").exists()


def test_backup_copies_every_shard_and_writes_the_manifest(tmp_path: Path) -> None:
    out, lines = call(FakeHost(workers=2), "backup", {"dir": str(tmp_path / "b")})
    assert lines == ["backup of shard 0", "backup of shard 1"]
    assert [f["seq"] for f in out["shards"]] == [10, 11]
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert manifest["shards"] == 2 and [f["shard"] for f in manifest["files"]] == [0, 1]
    assert backup.verify(Path(out["dir"]))


def test_stop_reports_the_workers_left_until_they_exited() -> None:
    host = FakeHost(workers=2)
    out, lines = call(host, "stop")
    assert host.stopping and out["stopped"] is True
    assert lines[1:] == ["waiting for 2 worker(s) to exit", "waiting for 1 worker(s) to exit"]
    assert lines[0].endswith(": 2 workers")


def test_fields_are_checked_as_declared() -> None:
    host = FakeHost()
    assert call(host, "ping", {"anything": 1})[0]["pong"] is True  # ping takes any body
    assert refusal(host, "version", {"x": 1}).message == \
        "version: unknown field(s) ['x']; it takes none"
    assert refusal(host, "vars.set", {"name": "a"}).message == \
        "vars.set: missing field(s) ['value']"
    assert call(host, "vars.list", {"odd": 1})[0]["body"] == {"odd": 1}  # checked further in
    assert call(host, "vars.get", {"name": "a"})[0] == {"op": "var.get", "name": "a"}
    assert refusal(host, "sessions.list", {"state": 3}).message == \
        "state must be a session state"
    assert call(host, "sessions.cancel", {"session": "s1"})[0] == \
        {"session": "s1", "by": "mabeamctl", "reason": None}
    err = refusal(host, "reload")
    assert err.message == "reload refused: bad config (mabeamctl reload)"


def test_every_op_is_documented_and_defined_once() -> None:
    defined = [v for g in GROUPS for v in vars(g).values() if isinstance(v, Command)]
    assert len(defined) == len(COMMANDS)
    for op, c in COMMANDS.items():
        assert c.op == op
        assert c.summary and c.summary.endswith(".") and c.summary[0].isupper(), op
        # an op's line in `mabeamctl --help` and `mabeamctl GROUP --help` fits 80 columns
        assert len(c.summary) <= 54, op


def test_mabeamctl_help_lists_every_op() -> None:
    text = build_parser().format_help()
    for op, c in COMMANDS.items():
        assert f"  {op} " in text and c.summary in text, op


def subcommand_help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("argv, ops", [
    (("status",), ("status",)),
    (("workers",), ("workers", "workers.restart")),
    (("agents",), ("agents.list", "agents.show", "managed.list", "managed.scale")),
    (("vars", "set"), ("vars.set",)),
    (("vars", "snapshot"), ("vars.snapshot",)),
    (("sessions", "decide"), ("sessions.decide",)),
    (("protocols", "list"), ("protocols.list",)),
    (("backup",), ("backup",)),
    (("stop",), ("stop",)),
])
def test_subcommand_help_shows_the_whole_text_of_its_ops(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], ops: tuple[str, ...]) -> None:
    text = subcommand_help(capsys, *argv)
    for op in ops:
        assert f"op {op}:" in text
        for line in COMMANDS[op].doc.splitlines():
            assert line.strip() in text, (op, line)
