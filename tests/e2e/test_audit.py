"""The audit log against a real daemon: what is recorded, one line each; the chain and the
session verification catch tampering; every built-in protocol's live outcome re-runs
offline; rotation, restarts (SIGTERM and kill -9) and an unwritable log."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mabeamd.client import AsyncClient, Forbidden
from mabeamd.client.bodies import write_body
from mabeamd.ctl.client import CommandFailed
from mabeamd.ctl.sessions import local_protocols
from mabeamd.observe.audit import canonical, record_hash
from mabeamd.testing import Daemon, free_port
from tests.e2e.test_economics import Trader, accept_at, bid, bundles, stay_up_to
from tests.e2e.test_sessions import Scripted, accept, run, vote


def audit_dir(d: Daemon) -> Path:
    return d.state_dir / "audit"


def records(d: Daemon, kind: str | None = None) -> list[dict[str, Any]]:
    out = []
    for p in sorted(audit_dir(d).glob("audit.jsonl*"), key=_age, reverse=True):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return [r for r in out if kind is None or r["kind"] == kind]


def _age(p: Path) -> int:
    suffix = p.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def verify(d: Daemon, *args: str, directory: Path | None = None) -> Any:
    return d.ctl("audit", "verify", *(args or ("--all",)), "--dir",
                 str(directory or audit_dir(d)), timeout=120)


def propose(cost: int) -> Any:
    return lambda inv: {"propose": {"cost": cost}}


A1 = {"consensus": accept, "vote": vote("red"), "weighted_vote": vote("red"),
      ("contract_net", "cfp"): propose(1), ("contract_net", "award"): accept,
      "priority": lambda inv: {"request": 4}, "sealed_bid": bid(15),
      "english": stay_up_to(20), "dutch": accept_at(40),
      "combinatorial": bundles((["x", "y"], 10)),
      "call_market": lambda inv: {"side": "buy", "price": 10, "quantity": 2},
      "supply_demand": lambda inv: {"demand": [[10, 2]]},
      "fisher_market": lambda inv: {"budget": 4, "utilities": {"bread": 1, "milk": 2}},
      "exchange_market": lambda inv: {"endowment": {"bread": 2},
                                      "utilities": {"bread": 1, "milk": 2}},
      "ranked_vote": lambda inv: {"ranking": ["red", "blue"]},
      "approval_vote": lambda inv: {"approve": ["red"]}}
A2 = {"consensus": accept, "vote": vote("blue"), "weighted_vote": vote("blue"),
      ("contract_net", "cfp"): propose(5), ("contract_net", "award"): accept,
      "priority": lambda inv: {"request": 2}, "sealed_bid": bid(20),
      "english": stay_up_to(30), "dutch": accept_at(30),
      "combinatorial": bundles((["x"], 6), (["y"], 3)),
      "call_market": lambda inv: {"side": "buy", "price": 8, "quantity": 1},
      "supply_demand": lambda inv: {"demand": [[8, 1]]},
      "fisher_market": lambda inv: {"budget": 6, "utilities": {"bread": 3, "milk": 1}},
      "exchange_market": lambda inv: {"endowment": {"milk": 3},
                                      "utilities": {"bread": 3, "milk": 1}},
      "ranked_vote": lambda inv: {"ranking": ["blue"]},
      "approval_vote": lambda inv: {"approve": ["red", "blue"]}}
S1 = {"call_market": lambda inv: {"orders": [{"side": "sell", "price": 5, "quantity": 1},
                                             {"side": "sell", "price": 9, "quantity": 3}]},
      "supply_demand": lambda inv: {"supply": [[5, 1], [9, 3]]}}
ONE_ROUND = {"consensus": {"proposal": "new"}, "vote": {"options": ["red", "blue"]},
             "weighted_vote": {"options": ["red", "blue"]},
             "contract_net": {"task": "t", "score": {"cost": 1}},
             "sealed_bid": {"item": "lot"},
             "english": {"start": 0, "increment": 5, "round_timeout": 2},
             "dutch": {"start": 50, "decrement": 5, "tick": 1},
             "combinatorial": {"items": ["x", "y"]}, "call_market": {},
             "supply_demand": {}, "fisher_market": {"goods": {"bread": 1, "milk": 1}},
             "exchange_market": {"goods": ["bread", "milk"], "utility": "cobb_douglas"},
             "ranked_vote": {"options": ["red", "blue"], "method": "borda",
                             "tie_break": "option_order"},
             "approval_vote": {"options": ["red", "blue"]}}
MARKETS = {"call_market", "supply_demand"}


def live_sessions(daemon: Daemon) -> None:
    """One applied session of every built-in protocol (priority escalated to an operator
    who decides through mabeamctl; the continuous double auction with streaming traders)."""
    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        for proto, params in ONE_ROUND.items():
            await c.create_var("boss", f"v.{proto}", None)
            who = ["a1", "a2", "s1"] if proto in MARKETS else ["a1", "a2"]
            out = await c.start_session("boss", proto, participants=who, params=params,
                                        variables=[f"v.{proto}"], deadline=20)
            assert out["state"] == "applied", out
        await c.create_var("boss", "v.priority", None)
        started = await c.start_session("boss", "priority", participants=["a1", "a2"],
                                        variables=["v.priority"], deadline=20, wait=False,
                                        params={"capacity": 4, "strategy": "escalation"})
        sid = started["session"]
        while (await c.get_session(sid))["state"] != "escalated":
            await asyncio.sleep(0.05)
        done = await asyncio.get_running_loop().run_in_executor(None, lambda: daemon.ctl(
            "--socket", str(daemon.socket), "sessions", "decide", sid,
            '{"allocations": {"a1": 3, "a2": 1}}'))
        assert done.returncode == 0, done.stderr
        while (await c.get_session(sid))["state"] != "applied":
            await asyncio.sleep(0.05)

    run(daemon, {"a1": A1, "a2": A2, "s1": S1}, scenario)
    maker = Trader("maker", daemon.agent_endpoint, [
        {"order": {"side": "sell", "quantity": 5, "price": 10}},
        {"order": {"side": "sell", "quantity": 5, "price": 11}},
        {"sleep": 0.5}, {"cancel_own": 1}])
    taker = Trader("taker", daemon.agent_endpoint, [
        {"sleep": 0.2}, {"order": {"side": "buy", "quantity": 7}}])

    async def market() -> None:
        tasks = [asyncio.create_task(a.run_async()) for a in (maker, taker)]
        try:
            async with AsyncClient(daemon.agent_endpoint, timeout=10) as c:
                await c.register("boss2")
                await c.wait_for(2, capabilities=["p"], prefix="")
                await c.create_var("boss2", "v.cda", None)
                end = await c.start_session(
                    "boss2", "continuous_double_auction", participants=["maker", "taker"],
                    variables=["v.cda"], params={"duration": 1.0}, deadline=5)
                assert end["state"] == "applied" and end["result"]["trade_count"] == 2, end
        finally:
            maker.stop()
            taker.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(market())


def test_every_builtin_protocol_verifies_and_tampering_is_caught(daemon: Daemon,
                                                                 tmp_path: Path) -> None:
    live_sessions(daemon)
    sessions = records(daemon, "session")
    builtin = set(local_protocols()["protocols"])
    assert {r["protocol"] for r in sessions} == builtin  # every protocol plugins/ registers
    assert len(sessions) == len(builtin) and all(r["state"] == "applied" for r in sessions)
    for r in sessions:  # versions of what was written, and what the mechanism was given
        assert set(r["versions"]) == set(r["writes"]) and r["transcript"], r
    sealed = next(r for r in sessions if r["protocol"] == "sealed_bid")
    assert [x["value"] for x in sealed["inputs"]["responses"]] == [{"bid": 15}, {"bid": 20}]
    out = verify(daemon)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": session ") == len(builtin)
    one = verify(daemon, sealed["session"])
    assert one.returncode == 0 and "decide(inputs) agrees" in one.stdout, one.stdout

    def tampered(name: str, change: Any) -> tuple[str, str]:
        d = tmp_path / name
        shutil.copytree(audit_dir(daemon), d)
        f = d / "audit.jsonl"
        lines = f.read_text().splitlines()
        f.write_text("\n".join(change(lines)) + "\n")
        res = verify(daemon, directory=d)
        assert res.returncode == 1, res.stdout
        return res.stdout, res.stderr

    n = [r["seq"] for r in records(daemon)].index(sealed["seq"])

    def edit(lines: list[str]) -> list[str]:
        rec = json.loads(lines[n])
        rec["result"]["price"] = 1.0
        lines[n] = canonical(rec)
        return lines
    text, _ = tampered("edit", edit)
    assert f"audit.jsonl:{n + 1}: seq {sealed['seq']}: its hash does not match" in text

    def forge(lines: list[str]) -> list[str]:
        """A forger who rewrites the chain from the edit on: the chain holds, the
        mechanism does not."""
        prev = json.loads(lines[n - 1])["hash"]
        for i in range(n, len(lines)):
            rec = json.loads(lines[i])
            if i == n:
                rec["result"]["price"] = 1.0
            rec["prev"] = prev
            rec["hash"] = prev = record_hash(rec)
            lines[i] = canonical(rec)
        return lines
    text, _ = tampered("forge", forge)
    assert "hash does not match" not in text and "prev does not" not in text
    assert f"audit.jsonl:{n + 1}: session {sealed['session']} (sealed_bid): replayed " \
           "result differs" in text
    text, _ = tampered("delete", lambda ls: ls[:n] + ls[n + 1:])
    assert f"audit.jsonl:{n + 1}: seq {sealed['seq'] + 1}: prev does not link" in text
    text, _ = tampered("reorder", lambda ls: [*ls[:n], ls[n + 1], ls[n], *ls[n + 2:]])
    assert f"audit.jsonl:{n + 1}: seq {sealed['seq'] + 1}: prev does not link" in text


def test_a_control_change_a_forbidden_write_and_a_session_one_line_each(
        daemon: Daemon) -> None:
    before = len(records(daemon))
    daemon.call("vars.create", {"name": "cfg/limit", "value": 1})
    daemon.call("vars.get", {"name": "cfg/limit"})  # reads are not recorded
    recs = records(daemon)
    assert len(recs) == before + 1
    c = recs[-1]
    assert (c["kind"], c["op"], c["args"]["name"], c["ok"], c["result"]["version"]) == \
        ("control", "vars.create", "cfg/limit", True, 1)
    with pytest.raises(CommandFailed):
        daemon.call("vars.set", {"name": "cfg/limit", "value": 2, "expect_version": 7})
    bad = records(daemon)[-1]
    assert not bad["ok"] and bad["error"]["code"] == "version_mismatch"

    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        await c.create_var("boss", "mine", 1, access="owner_only")
        async with AsyncClient(daemon.agent_endpoint, timeout=10) as other:
            await other.register("mallory")
            await other.get_var("mine", local=False)  # the shard route is up (no fallback)
            await asyncio.sleep(0.3)
            with pytest.raises(Forbidden):  # on the shard endpoint (the SDK's default)
                await other.set_var("mallory", "mine", 2)
            with pytest.raises(Forbidden):  # through the agent endpoint and the arbiter
                await other.request("var.set", write_body("mallory", "mine", None, value=2))
        await c.create_var("boss", "plan", None)
        await c.start_session("boss", "consensus", participants=["a1"], variables=["plan"],
                              params={"proposal": "go"}, deadline=5)
    mark = len(records(daemon))
    run(daemon, {"a1": {"consensus": accept}}, scenario)
    daemon.wait_until(lambda: len(records(daemon, "session")) == 1, what="session record")
    new = records(daemon)[mark:]
    assert [r["kind"] for r in new] == ["forbidden", "forbidden", "session"], new
    assert {r["via"] for r in new[:2]} == {"shard_endpoint", "agent_endpoint"}, new
    assert all((r["agent"], r["op"], r["name"]) == ("mallory", "var.set", "mine")
               for r in new[:2])
    s = new[2]
    assert (s["protocol"], s["state"], s["writes"], s["versions"]) == \
        ("consensus", "applied", {"plan": "go"}, {"plan": 2})
    assert verify(daemon).returncode == 0
    listed = daemon.ctl("audit", "--dir", str(audit_dir(daemon)), "--kind", "forbidden")
    assert listed.returncode == 0 and listed.stdout.count("mallory var.set mine") == 2
    as_json = daemon.ctl("audit", "--dir", str(audit_dir(daemon)), "--json", "--since", "1h")
    assert [json.loads(line)["seq"] for line in as_json.stdout.splitlines()] == \
        [r["seq"] for r in records(daemon)]
    future = daemon.ctl("audit", "--dir", str(audit_dir(daemon)), "--since",
                        "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and future.stdout == ""


def test_rotation_and_restarts_keep_the_chain(make_daemon: Any) -> None:
    d = make_daemon("[audit]\nmax_bytes = 4096\nkeep = 1000\n").start()
    for i in range(60):
        d.call("vars.create" if i == 0 else "vars.set", {"name": "r", "value": "x" * 100})
    assert len(list(audit_dir(d).glob("audit.jsonl.*"))) >= 2
    assert verify(d).returncode == 0
    assert d.stop() == 0  # SIGTERM
    d.start()
    d.call("vars.set", {"name": "r", "value": 1})
    seqs = [r["seq"] for r in records(d)]
    assert seqs == list(range(1, len(seqs) + 1))
    # kill -9 while changes are being made: every acknowledged one is in the log.
    acked: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        try:
            with d.client(timeout=5) as c:
                for i in range(100000):
                    if stop.is_set():
                        return
                    c.call("vars.set", {"name": "r", "value": i})
                    acked.append(i)
        except Exception:
            return
    t = threading.Thread(target=hammer)
    t.start()
    d.wait_until(lambda: len(acked) > 20, timeout=20, what="changes")
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    stop.set()
    t.join(10)
    logged = {r["args"]["value"] for r in records(d, "control")
              if r["op"] == "vars.set" and isinstance(r["args"]["value"], int)}
    assert set(acked) <= logged
    d.wait_until(lambda: not d.shm_segments(), timeout=10, what="the janitor")
    d.start()
    d.call("vars.set", {"name": "r", "value": "after"})
    out = verify(d)
    assert out.returncode == 0, out.stdout


def _break_audit_dir(d: Daemon) -> None:
    """Root ignores modes: a file where the directory was refuses every append."""
    shutil.rmtree(audit_dir(d))
    audit_dir(d).write_text("not a directory\n")


def test_refuse_mode_refuses_changes_while_the_log_cannot_be_written(make_daemon: Any,
                                                                     ) -> None:
    d = make_daemon('[audit]\non_failure = "refuse"\n').start()
    d.call("vars.create", {"name": "k", "value": 1})
    _break_audit_dir(d)
    res = d.ctl("--socket", str(d.socket), "vars", "set", "k", "2")
    assert res.returncode == 1 and "audit log unavailable" in res.stderr, res.stderr
    assert "storage_error" in res.stderr
    assert d.call("vars.get", {"name": "k"})["value"] == 1  # nothing changed
    assert d.call("status")["audit"]["failing"]

    async def start(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        with pytest.raises(Exception, match="audit log unavailable"):
            await c.start_session("boss", "consensus", participants=["a1"],
                                  params={"proposal": 1}, deadline=2)
    run(d, {"a1": {"consensus": accept}}, start)
    audit_dir(d).unlink()  # fixed: the next change goes through and is recorded
    d.call("vars.set", {"name": "k", "value": 3})
    assert records(d)[-1]["args"] == {"name": "k", "value": 3}
    assert d.call("status")["audit"]["failing"] is None
    assert "cannot write the audit log" in d.log()


def test_continue_mode_carries_on_and_counts(make_daemon: Any) -> None:
    port = free_port()
    d = make_daemon(f'[audit]\non_failure = "continue"\n[metrics]\nlisten = '
                    f'"127.0.0.1:{port}"\n').start()
    d.call("vars.create", {"name": "k", "value": 1})
    _break_audit_dir(d)
    for v in (2, 3):
        d.call("vars.set", {"name": "k", "value": v})
    assert d.call("vars.get", {"name": "k"})["value"] == 3
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    text = metrics.decode()
    assert "mabeamd_audit_failures_total 2.0" in text, text
    assert "mabeamd_audit_records_total 1.0" in text and "mabeamd_audit_failing 1.0" in text
    assert d.log().count("cannot write the audit log") == 1  # rate-limited


def test_audit_cli_exit_codes(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.ctl("audit", "--dir", str(tmp_path)).returncode == 66
    daemon.call("vars.create", {"name": "z", "value": 0})
    d = str(audit_dir(daemon))
    assert daemon.ctl("audit", "verify", "--dir", d).returncode == 2
    assert daemon.ctl("audit", "verify", "s-nope", "--dir", d).returncode == 2
    assert daemon.ctl("audit", "--dir", d, "--since", "yesterday").returncode == 2
    shown = daemon.ctl("audit", "--dir", d)
    assert shown.returncode == 0 and 'control vars.create {"name": "z", "value": 0} ok' \
        in shown.stdout



JOURNAL = Path("/run/systemd/journal/socket")


@pytest.mark.skipif(os.geteuid() != 0 or JOURNAL.exists() or JOURNAL.parent.exists(),
                    reason="needs root and no journald of the machine's own at its socket")
def test_records_also_reach_journald_under_their_own_identifier(make_daemon: Any) -> None:
    """Run as systemd would (stderr is the journal stream): each record also goes to
    journald's native socket as SYSLOG_IDENTIFIER=mabeamd-audit. The socket here is the
    test's own, at journald's path (no journald on this machine)."""
    import socket
    import time

    made = [p for p in (JOURNAL.parent.parent, JOURNAL.parent) if not p.exists()]
    JOURNAL.parent.mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(JOURNAL))
    sock.settimeout(0.5)
    try:
        d = make_daemon(workers=1)
        d.dir.mkdir(parents=True, exist_ok=True)
        d.log_path.touch()  # the daemon's stderr: the stream systemd would name
        st = d.log_path.stat()
        d.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        d.start()
        d.call("vars.create", {"name": "j/x", "value": 1})
        seen: list[bytes] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
                b"SYSLOG_IDENTIFIER=mabeamd-audit" in m and b'"vars.create"' in m for m in seen):
            try:
                seen.append(sock.recv(1 << 20))
            except TimeoutError:
                continue
        audit = [m for m in seen if b"SYSLOG_IDENTIFIER=mabeamd-audit" in m]
        assert any(b'"vars.create"' in m for m in audit), seen[-5:]
        # the daemon's own log lines keep their identifier
        assert any(b"SYSLOG_IDENTIFIER=mabeamd\n" in m for m in seen)
        on_disk = [r for r in records(d, "control") if r.get("op") == "vars.create"]
        assert len(on_disk) == 1
    finally:
        sock.close()
        JOURNAL.unlink(missing_ok=True)
        for p in reversed(made):  # only what this test made
            p.rmdir()
