"""A throwaway etcd cluster on loopback, for tests, `scripts/cluster` and `scripts/bench`.

Real etcd processes (Debian's etcd-server: `etcd` on PATH, or $MABEAM_ETCD), each with its
own data directory and two loopback ports, started together as one new cluster. Members can
be killed (SIGKILL), paused (SIGSTOP: a member that is there but does not answer, the way a
partitioned one looks to its clients) and started again on the same data directory. Never
for production: no TLS, no auth, no tuning.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ETCD_ENV = "MABEAM_ETCD"


def etcd_binary() -> str | None:
    """The etcd to run: $MABEAM_ETCD (if it is an executable), else `etcd` on PATH
    (/usr/bin/etcd from etcd-server); None if neither."""
    given = os.environ.get(ETCD_ENV)
    if given:
        return given if os.access(given, os.X_OK) and os.path.isfile(given) else None
    return shutil.which("etcd")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class LocalEtcd:
    """`size` members under `root`. start(), then .endpoints; stop() ends them all."""

    root: Path
    size: int = 3
    token: str = "mabeamd-local"
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        self.members = [Member(f"etcd{i}", ports[2 * i], ports[2 * i + 1],
                               self.root / f"etcd{i}", self.root / f"etcd{i}.log")
                        for i in range(self.size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _argv(self, m: Member, binary: str) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        state = "existing" if (m.data_dir / "member").exists() else "new"
        return [binary, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"http://{m.endpoint}",
                "--advertise-client-urls", f"http://{m.endpoint}",
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                # Loopback: shorter Raft timers than the WAN defaults (100 ms / 1000 ms)
                # would make a loaded 2-core machine flap leaders; keep the defaults.
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                # Every write rewrites a variable's whole value and etcd keeps each revision
                # until compacted: keep the last 10,000 (docs/cluster.md, Operations).
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
                "--log-level", "warn", "--logger", "zap"]

    def start_member(self, i: int) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not found: install Debian's etcd-server (or set "
                               f"${ETCD_ENV} to an etcd binary)")
        m = self.members[i]
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(m.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        # setpriv (util-linux) sets PR_SET_PDEATHSIG before exec: the member is killed when
        # the process that started it goes, however it goes (a test run killed mid-way must
        # not leave etcd members behind). No preexec_fn: the tests run threads.
        wrap = [setpriv, "--pdeathsig", "KILL"] if (setpriv := shutil.which("setpriv")) else []
        m.proc = subprocess.Popen([*wrap, *self._argv(m, binary)], stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self, timeout: float = 60.0) -> LocalEtcd:
        for i in range(self.size):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def healthy(self, i: int) -> bool:
        """The member answers and its cluster has a leader (etcd's /health)."""
        try:
            with urllib.request.urlopen(f"http://{self.members[i].endpoint}/health",
                                        timeout=2) as r:
                return b'"health":"true"' in r.read()
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 60.0, members: list[int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        want = list(range(self.size)) if members is None else members
        while not all(self.healthy(i) for i in want):
            for i in want:
                p = self.members[i].proc
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"etcd member {i} exited ({p.returncode}): "
                                       f"{self.members[i].log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members {want} not healthy after {timeout:g} s")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        p = self.members[i].proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def pause(self, i: int) -> None:
        p = self.members[i].proc
        if p is not None:
            os.kill(p.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        p = self.members[i].proc
        if p is not None:
            os.kill(p.pid, signal.SIGCONT)

    def leader(self) -> int | None:
        """The index of the current leader, by asking each member (None if none answers)."""
        import json

        for i, m in enumerate(self.members):
            try:
                req = urllib.request.Request(f"http://{m.endpoint}/v3/maintenance/status",
                                             data=b"{}", method="POST")
                with urllib.request.urlopen(req, timeout=2) as r:
                    st = json.loads(r.read())
                if st.get("leader") == st.get("header", {}).get("member_id"):
                    return i
            except (OSError, urllib.error.URLError, ValueError):
                continue
        return None

    def stop(self) -> None:
        for i, m in enumerate(self.members):
            with contextlib.suppress(ProcessLookupError):
                self.resume(i)
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
