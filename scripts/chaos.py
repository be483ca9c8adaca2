"""The chaos harness: real load on a real daemon while it is killed, then the invariants.

    scripts/chaos [--minutes N | --seconds N] [--fsync always|everysec|never] [--json FILE]

A daemon (mabeamd.testing.Daemon: a temp directory, real sockets) serves load from several
client processes -- creates, sets, compare-and-sets, deletes, and consensus sessions that
write two variables each, answered by voter agent processes -- while the harness, at random
moments, kill -9s a worker, kill -9s the arbiter and starts it again on the same state
directory, kill -9s a voter (and starts another), takes snapshots and restarts an idle
shard. Every acknowledged operation is journalled by the process that saw it acknowledged.
Afterwards it checks:

- every name holds exactly what its last acknowledged write left (each name has one writer,
  so that is one version and one value); a write whose answer was lost (the daemon died
  under it) may or may not have been applied, and the name is not written again after it;
- every session's two variables changed together or not at all, and a session acknowledged
  as applied changed both;
- no session is left running and no variable is left locked;
- after the final stop: no process, shared-memory segment or janitor left behind, the
  arbiter's descriptors back at their level after start, and `mabeamd --check-state`
  clean (no name in two shards).

Prints a table (and JSON with --json) and exits 1 on any violation. Roles `client` and
`voter` are this same file, run as subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FD_SLACK = 8  # descriptors an arbiter may hold beyond its first start's (e.g. a reload)

# --- the roles the harness starts -----------------------------------------------------------


def run_client(endpoint: str, prefix: str, journal: Path, stop: Path, seed: int) -> int:
    """Variable load on names `prefix/i`. Journal lines: {"n", "s": [version, value] or
    null} after an acknowledged write; {"n", "u": candidate} after a write whose answer was
    lost (then the name is retired: nothing is written to it again)."""
    from mabeamd.client import Client, MabeamError

    rng = random.Random(seed)
    known: dict[str, tuple[int, Any] | None] = {}  # name -> last acknowledged state
    next_name = 0
    live: list[str] = []
    count = 0
    with open(journal, "a", buffering=1) as out, Client(endpoint, timeout=5.0) as c:
        c.register(prefix)
        while not stop.exists():
            if len(live) < 8:
                live.append(f"{prefix}/{next_name}")
                next_name += 1
            if rng.random() < 0.2:  # a var.batch: one op on each of some names
                count = _batch(c, rng, rng.sample(live, rng.randint(1, len(live))),
                               prefix=prefix, known=known, live=live, count=count, out=out)
                continue
            name = rng.choice(live)
            count += 1
            value = f"{prefix}-{count}"
            state = known.get(name)
            op = _pick(rng, state)
            try:
                if op == "create":
                    result = c.create_var(prefix, name, value)
                elif op == "set":
                    result = c.set_var(prefix, name, value)
                elif op == "cas":
                    assert state is not None
                    result = c.set_var(prefix, name, value, expect_version=state[0])
                else:
                    result = c.delete_var(prefix, name)
            except MabeamError as exc:
                candidate: Any = None if op == "delete" else value
                out.write(json.dumps({"n": name, "u": candidate, "op": op,
                                      "err": exc.code}) + "\n")
                live.remove(name)
                time.sleep(0.05)
                continue
            if op == "delete":
                known[name] = None
                out.write(json.dumps({"n": name, "s": None}) + "\n")
            else:
                known[name] = (int(result["version"]), value)
                out.write(json.dumps({"n": name, "s": [result["version"], value]}) + "\n")
    return 0


def _pick(rng: random.Random, state: tuple[int, Any] | None) -> str:
    r = rng.random()
    return "create" if state is None else "set" if r < 0.6 else "cas" if r < 0.9 \
        else "delete"


def _batch(c: Any, rng: random.Random, names: list[str], *, prefix: str,
           known: dict[str, tuple[int, Any] | None], live: list[str], count: int,
           out: Any) -> int:
    """One batch of writes, journalled op by op as single writes are (each op of a batch
    stands alone): ok -> its state, an error in its element or the whole batch's -> the
    name is retired with the op's value as a candidate."""
    from mabeamd.client import MabeamError

    ops: list[dict[str, Any]] = []
    for name in names:
        count += 1
        state = known.get(name)
        kind = _pick(rng, state)
        op: dict[str, Any] = {"agent": prefix, "name": name, "kind": kind}
        if kind == "delete":
            op["op"] = "var.delete"
        else:
            op.update(op="var.create" if kind == "create" else "var.set",
                      value=f"{prefix}-{count}")
        if kind == "cas":
            assert state is not None
            op["expect_version"] = state[0]
        ops.append(op)
    try:
        results = c.batch([{k: v for k, v in op.items() if k != "kind"} for op in ops])
    except MabeamError as exc:
        results = [exc] * len(ops)
    for op, result in zip(ops, results, strict=True):
        name = op["name"]
        if isinstance(result, MabeamError):
            out.write(json.dumps({"n": name, "u": op.get("value"), "op": op["kind"],
                                  "err": result.code, "batch": True}) + "\n")
            live.remove(name)
        elif op["kind"] == "delete":
            known[name] = None
            out.write(json.dumps({"n": name, "s": None}) + "\n")
        else:
            known[name] = (int(result["version"]), op["value"])
            out.write(json.dumps({"n": name, "s": [result["version"], op["value"]]}) + "\n")
    return count


def run_sessions(endpoint: str, prefix: str, journal: Path, stop: Path) -> int:
    """Consensus sessions, each over a fresh pair {prefix-N}/a, {prefix-N}/b created with
    "init": passed, both become the proposal. Journal: {"sess", "a", "b", "p", "applied":
    true (its writes were applied) | false (it ended, writing nothing) | null (the answer
    was lost)}."""
    from mabeamd.client import Client, MabeamError

    n = 0
    with open(journal, "a", buffering=1) as out, Client(endpoint, timeout=5.0) as c:
        c.register(prefix)
        while not stop.exists():
            n += 1
            a, b, proposal = f"{{{prefix}-{n}}}/a", f"{{{prefix}-{n}}}/b", f"p-{n}"
            try:
                c.create_var(prefix, a, "init")
                c.create_var(prefix, b, "init")
            except MabeamError:
                time.sleep(0.1)
                continue  # not journalled: the pair is not checked
            entry: dict[str, Any] = {"sess": n, "a": a, "b": b, "p": proposal}
            try:
                res = c.start_session(prefix, "consensus",
                                      query={"capabilities": ["chaos-voter"]},
                                      variables=[a, b], params={"proposal": proposal},
                                      deadline=2.0, wait=True)
                # "applied" with no writes: the proposal did not pass (a voter died
                # mid-session), so nothing was to be written.
                entry["applied"] = res.get("state") == "applied" and bool(res.get("writes"))
                entry["state"] = res.get("state") if entry["applied"] or res.get(
                    "state") != "applied" else "applied, nothing to write"
                entry["id"], entry["shard"] = res.get("session"), res.get("shard")
                entry["reason"] = res.get("reason")
                entry["writes"] = res.get("writes")
            except MabeamError as exc:
                entry["applied"], entry["state"] = None, exc.code
                time.sleep(0.1)
            out.write(json.dumps(entry) + "\n")
    return 0


def run_voter(endpoint: str, agent_id: str) -> int:
    from mabeamd.client import Agent, Invitation, invitation

    class Voter(Agent):
        capabilities = ["chaos-voter"]

        @invitation("consensus")
        async def proposal(self, inv: Invitation) -> dict[str, Any]:
            return {"accept": True}

    Voter(agent_id, endpoint).run()
    return 0


# --- the harness ----------------------------------------------------------------------------


class Chaos:
    def __init__(self, seconds: float, fsync: str, clients: int, voters: int, seed: int,
                 ) -> None:
        from mabeamd.testing import Daemon

        self.seconds, self.fsync, self.rng = seconds, fsync, random.Random(seed)
        self.daemon = Daemon(f'[variables]\nfsync = "{fsync}"\nsnapshot_every = 500\n',
                             workers=2, max_restarts=1000)
        self.work = self.daemon.dir / "chaos"
        self.work.mkdir()
        self.stop_file = self.work / "stop"
        self.clients = clients
        self.procs: list[subprocess.Popen[bytes]] = []
        self.voters: dict[int, subprocess.Popen[bytes]] = {}
        self.voter_count = voters
        self.voter_gen = 0
        self.actions: dict[str, int] = {}
        self.recovery: dict[str, list[float]] = {"arbiter": [], "worker": []}
        self.violations: list[str] = []
        self.base_fds = 0

    def _spawn(self, *role: str) -> subprocess.Popen[bytes]:
        log = open(self.work / "roles.log", "ab")  # noqa: SIM115 (the child owns it)
        return subprocess.Popen([sys.executable, __file__, "--role", *role,
                                 "--endpoint", self.daemon.agent_endpoint],
                                stdout=log, stderr=log, cwd=ROOT)

    def _voter(self, k: int) -> None:
        self.voter_gen += 1
        self.voters[k] = self._spawn("voter", f"voter-{k}-{self.voter_gen}")

    def _count(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1

    def _wait_running(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        seen: Any = None
        while time.monotonic() - t0 < timeout:
            try:
                seen = [(w["index"], w["state"]) for w in self.daemon.workers()]
                if all(state == "running" for _, state in seen):
                    return time.monotonic() - t0
            except Exception as exc:  # the control socket is not up yet
                seen = exc
            time.sleep(0.02)
        raise RuntimeError(f"workers not all running after {timeout:g}s: {seen!r}")

    # --- chaos actions ---

    def kill_worker(self) -> None:
        ws = [w for w in self.daemon.workers() if w["state"] == "running" and w["pid"]]
        if not ws:
            return
        w = self.rng.choice(ws)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        self.daemon.wait_until(lambda: any(x["index"] == w["index"] and x["pid"] != w["pid"]
                                           and x["state"] == "running"
                                           for x in self.daemon.workers()),
                               timeout=60, what=f"worker {w['index']} to come back")
        self.recovery["worker"].append(time.monotonic() - t0)
        self._count("kill -9 worker")

    def kill_arbiter(self) -> None:
        self.daemon.signal(signal.SIGKILL)
        self.daemon.wait()
        t0 = time.monotonic()
        self.daemon.start(timeout=60)
        self._wait_running()
        self.recovery["arbiter"].append(time.monotonic() - t0)
        self._count("kill -9 arbiter")

    def kill_voter(self) -> None:
        k = self.rng.randrange(self.voter_count)
        with contextlib.suppress(ProcessLookupError):
            self.voters[k].kill()
        self.voters[k].wait()
        self._voter(k)
        self._count("kill -9 voter")

    def snapshot(self) -> None:
        self.daemon.call("vars.snapshot", timeout=30)
        self._count("snapshot")

    def restart_shard(self) -> None:
        index = self.rng.randrange(len(self.daemon.workers()))
        self.daemon.call("workers.restart", {"index": index}, timeout=60)
        self._count("restart shard")

    # --- the run ---

    def run(self) -> dict[str, Any]:
        import psutil

        d = self.daemon
        d.start()
        self.base_fds = psutil.Process(d.pid).num_fds()
        for k in range(self.voter_count):
            self._voter(k)
        for k in range(self.clients):
            self.procs.append(self._spawn("client", "--prefix", f"c{k}", "--journal",
                                          str(self.work / f"c{k}.jsonl"), "--stop",
                                          str(self.stop_file), "--seed", str(k)))
        self.procs.append(self._spawn("sessions", "--prefix", "sess", "--journal",
                                      str(self.work / "sessions.jsonl"), "--stop",
                                      str(self.stop_file)))
        actions = [(self.kill_worker, 4), (self.kill_arbiter, 1), (self.kill_voter, 2),
                   (self.snapshot, 2), (self.restart_shard, 1)]
        started = time.monotonic()
        while time.monotonic() - started < self.seconds:
            time.sleep(self.rng.uniform(0.5, 2.0))
            action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            try:
                action()
            except Exception as exc:  # a step the daemon refused (e.g. busy restarting)
                self._count(f"{action.__name__} refused")
                print(f"chaos: {action.__name__}: {exc!r}"[:300], file=sys.stderr)
        self.stop_file.touch()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                self.violations.append(f"load process {p.pid} did not stop")
        self._wait_running()
        return self.check()

    # --- the invariants ---

    def _all_vars(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        after = None
        while True:
            body: dict[str, Any] = {"prefix": "", "limit": 1000}
            if after is not None:
                body["after"] = after
            page = self.daemon.call("vars.list", body, timeout=30)
            for v in page["vars"]:
                if v["name"] in out:
                    self.violations.append(f"{v['name']!r} listed twice")
                out[v["name"]] = v
            after = page.get("next")
            if not after:
                return out

    def check(self) -> dict[str, Any]:
        final = self._all_vars()
        acked = uncertain = 0
        for k in range(self.clients):
            facts: dict[str, dict[str, Any]] = {}
            for line in (self.work / f"c{k}.jsonl").read_text().splitlines():
                f = json.loads(line)
                if "u" in f:
                    uncertain += 1
                    facts.setdefault(f["n"], {})["u"] = f
                else:
                    acked += 1
                    facts.setdefault(f["n"], {})["s"] = f["s"]
            for name, fact in facts.items():
                got = final.get(name)
                state = fact.get("s")
                want = None if state is None else (state[0], state[1])
                have = None if got is None else (got["version"], got["value"])
                if have == want:
                    continue
                u = fact.get("u")
                if u is not None and ((u["u"] is None and have is None) or (have is not None
                                      and have[1] == u["u"])):
                    continue  # the write whose answer was lost was applied
                self.violations.append(f"{name}: acknowledged {want}, found {have}"
                                       + (f" (lost answer: {u['op']} {u['u']!r})" if u else ""))
        sessions: dict[str, int] = {}
        late = 0
        for line in (self.work / "sessions.jsonl").read_text().splitlines():
            e = json.loads(line)
            sessions[str(e["state"])] = sessions.get(str(e["state"]), 0) + 1
            a, b = final.get(e["a"]), final.get(e["b"])
            if a is None or b is None:
                self.violations.append(f"session {e['sess']}: variable missing")
                continue
            pair = (a["value"], b["value"])
            if pair not in (("init", "init"), (e["p"], e["p"])):
                self.violations.append(f"session {e['sess']}: half applied {pair}")
            elif e["applied"] is True and pair != (e["p"], e["p"]):
                self.violations.append(f"session {e['sess']}: acknowledged applied, not "
                                       f"in its variables {pair}")
            elif e["applied"] is False and pair != ("init", "init"):
                if e.get("reason") == "worker_restarted" and \
                        a["modified_by"] == b["modified_by"] == f"session:{e['id']}":
                    # Documented (docs/protocol.md): the worker died between its WAL
                    # commit and its report; the variables say which session wrote them.
                    late += 1
                else:
                    self.violations.append(f"session {e['sess']}: ended {e['state']} but "
                                           f"applied {pair}")
            # No lock outlives its session: a plain write goes through.
            try:
                self.daemon.call("vars.set", {"name": e["a"], "value": a["value"]})
            except Exception as exc:
                self.violations.append(f"session {e['sess']}: {e['a']} still locked? {exc}")
        running = [s for s in self.daemon.call("sessions.list") if s.get("state") not in
                   ("applied", "failed", "cancelled", "timed_out")]
        if running:
            self.violations.append(f"sessions still running after the load: {running[:3]}")
        leaks = self.stop_and_check_leaks()
        return {"seconds": self.seconds, "fsync": self.fsync, "clients": self.clients,
                "voters": self.voter_count, "acknowledged writes": acked,
                "writes with a lost answer": uncertain, "variables at the end": len(final),
                "sessions": sessions,
                "sessions reported failed (worker_restarted) but applied": late,
                "actions": self.actions,
                "recovery seconds": {k: _summary(v) for k, v in self.recovery.items()},
                "leaks": leaks, "violations": self.violations}

    def stop_and_check_leaks(self) -> dict[str, Any]:
        import psutil

        d = self.daemon
        for k, p in self.voters.items():
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
            if p.poll() is None:
                p.kill()
                self.violations.append(f"voter {k} ignored SIGTERM")
        # Every client is gone: the arbiter's descriptors go back to where they were at the
        # first start, before any client (a connection holds one while it lasts).
        arbiter = psutil.Process(d.pid)
        settle = time.monotonic() + 15
        while arbiter.num_fds() > self.base_fds + FD_SLACK and time.monotonic() < settle:
            time.sleep(0.1)
        fds_then = arbiter.num_fds()
        if fds_then > self.base_fds + FD_SLACK:
            self.violations.append(f"the arbiter holds {fds_then} descriptors with no client "
                                   f"left, {self.base_fds} at its first start")
        kids = d.descendants()
        prefix = json.loads((d.state_dir / "meta.json").read_text())["instance"]
        janitors = [p for p in psutil.process_iter(["cmdline"])
                    if f"mabeamd-{prefix}" in (p.info["cmdline"] or [])]
        code = d.stop(timeout=60)
        if code != 0:
            self.violations.append(f"the daemon's final stop exited {code}")
        gone_by = time.monotonic() + 20
        left = [p for p in kids + janitors if _alive(p, gone_by)]
        if left:
            self.violations.append(f"processes left after stop: {[p.pid for p in left]}")
        segments = d.shm_segments()
        if segments:
            self.violations.append(f"segments left after stop: {segments[:3]}")
        check = subprocess.run([sys.executable, "-m", "mabeamd", "--config",
                                str(d.config_path), "--state-dir", str(d.state_dir),
                                "--check-state", "--json"], capture_output=True, text=True,
                               check=False, timeout=300)
        if check.returncode != 0:
            self.violations.append(f"--check-state: {check.stdout[-500:]} {check.stderr}")
        return {"arbiter fds at start / at the end": f"{self.base_fds} / {fds_then}",
                "processes left": len(left), "segments left": len(segments),
                "check-state": "clean" if check.returncode == 0 else "PROBLEMS"}

    def cleanup(self, keep: bool = False) -> None:
        """Kill whatever is left; remove the daemon's directory unless `keep`."""
        self.stop_file.touch()
        for p in [*self.procs, *self.voters.values()]:
            if p.poll() is None:
                p.kill()
        if keep:
            log = self.daemon.log_path.read_bytes() if self.daemon.log_path.exists() else b""
            self.daemon.cleanup()  # kills the processes, removes the directory...
            self.daemon.dir.mkdir(parents=True, exist_ok=True)
            self.daemon.log_path.write_bytes(log)  # ...but the log stays
        else:
            self.daemon.cleanup()


def _alive(p: Any, until: float) -> bool:
    import psutil

    while time.monotonic() < until:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.05)
    return True


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)
    return {"count": len(s), "median": round(s[len(s) // 2], 3), "max": round(s[-1], 3)}


def render(report: dict[str, Any]) -> str:
    rows = [("duration", f"{report['seconds']:g} s, fsync {report['fsync']}, "
             f"{report['clients']} clients, {report['voters']} voters"),
            ("acknowledged writes", report["acknowledged writes"]),
            ("writes with a lost answer", report["writes with a lost answer"]),
            ("variables at the end", report["variables at the end"]),
            ("sessions", ", ".join(f"{k} {v}" for k, v in sorted(report["sessions"].items()))),
            ("  failed as worker_restarted, yet applied",
             report["sessions reported failed (worker_restarted) but applied"]),
            ("chaos", ", ".join(f"{k} {v}" for k, v in sorted(report["actions"].items())))]
    for k, v in report["recovery seconds"].items():
        if v:
            rows.append((f"recovery after {k} kill", f"median {v['median']} s, max {v['max']}"
                         f" s ({v['count']})"))
    rows += [(k, v) for k, v in report["leaks"].items()]
    rows.append(("violations", len(report["violations"])))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"  VIOLATION: {v}" for v in report["violations"][:50]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float)
    p.add_argument("--seconds", type=float)
    p.add_argument("--fsync", choices=("always", "everysec", "never"), default="always")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--voters", type=int, default=3)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--role", choices=("client", "sessions", "voter"), help=argparse.SUPPRESS)
    p.add_argument("role_arg", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--journal", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "client":
        return run_client(args.endpoint, args.prefix, args.journal, args.stop, args.seed or 0)
    if args.role == "sessions":
        return run_sessions(args.endpoint, args.prefix, args.journal, args.stop)
    if args.role == "voter":
        return run_voter(args.endpoint, args.role_arg)
    seconds = args.seconds if args.seconds is not None else (args.minutes or 1.0) * 60
    if seconds <= 0 or args.clients < 1 or args.voters < 1:
        p.error("--seconds/--minutes, --clients and --voters must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    chaos = Chaos(seconds, args.fsync, args.clients, args.voters, seed)
    print(f"chaos: {seconds:g} s, fsync {args.fsync}, seed {seed}, daemon in "
          f"{chaos.daemon.dir}", file=sys.stderr)
    try:
        report = chaos.run()
    except Exception as exc:
        from mabeamd import testing

        testing._made.remove(chaos.daemon.dir)  # keep the evidence
        print(f"chaos: the run itself failed: {exc!r}; the daemon's directory is kept: "
              f"{chaos.daemon.dir}\n{chaos.daemon.log()[-3000:]}", file=sys.stderr)
        chaos.cleanup(keep=True)
        return 1
    report["seed"] = seed
    if report["violations"]:  # keep the evidence (testing removes its temp dirs at exit)
        from mabeamd import testing

        testing._made.remove(chaos.daemon.dir)
        print(f"chaos: violations: the daemon's directory is kept: {chaos.daemon.dir}",
              file=sys.stderr)
    else:
        chaos.cleanup()
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
