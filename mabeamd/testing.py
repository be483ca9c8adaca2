"""Run a real mabeamd in a temp directory and talk to it the way operators do.

Used by the test suite, by scripts/bench, and by plugin authors who want to test a plugin
against a real daemon. Readiness comes from a real sd_notify datagram socket passed as
NOTIFY_SOCKET, so callers wait for exactly what systemd would wait for, with no sleeps.
`both_ways` checks a protocol's typed mechanism against its JSON adapter, in-process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from mabeamd.ctl.client import ControlClient
from mabeamd.protocol import OneRound, Participant, ProtocolError, Response, round_inputs

# The source checkout (for etc/, docs/, systemd/); meaningful when installed editable.
ROOT = Path(__file__).resolve().parent.parent

# Agent and event endpoints live in the daemon's own temp dir, so daemons never compete for
# TCP ports (tests that need tcp pass their own [agents] section).
ENDPOINTS = """
[agents]
endpoints = ["ipc://{run}/agents.sock"]
shard_endpoint = "ipc://{run}/shard"
heartbeat_interval = 0.2
gone_after = 0.5
[events]
endpoint = "ipc://{run}/events.sock"
"""

FAST_WORKERS = """
[workers]
count = {workers}
heartbeat_interval = 0.1
heartbeat_timeout = 1.0
start_timeout = 5.0
stop_timeout = 2.0
backoff_initial = 0.05
backoff_max = 0.5
max_restarts = {max_restarts}
restart_window = 30.0
"""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """The first of n consecutive loopback TCP ports that nothing listens on right now (for
    shard endpoints: worker i binds PORT+i)."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports on loopback")


def run_ctl(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run mabeamctl as a user would (a fresh process)."""
    return subprocess.run([sys.executable, "-m", "mabeamd.ctl.main", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=timeout, check=False, input=stdin)


_made: list[Path] = []


@atexit.register
def _remove_tmpdirs() -> None:
    """Every short_tmpdir goes when the process that made it exits (test runs and bench
    runs made hundreds and left them in /tmp). A forked child inherits the list but not
    the right to remove them."""
    if os.getpid() != _PARENT:
        return
    for d in _made:
        shutil.rmtree(d, ignore_errors=True)


def short_tmpdir() -> Path:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    _made.append(d)
    return d


_PARENT = os.getpid()


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def _drain(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        fields["_t"] = repr(time.monotonic())
        self.messages.append(fields)

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float = 10.0,
                 start: int = 0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching notify message; got {self.messages[start:]}")
            self._drain(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, config: str = "", *, workers: int = 2, max_restarts: int = 5,
                 raw_config: bool = False, env: dict[str, str] | None = None,
                 args: list[str] | None = None, endpoints: bool = True) -> None:
        self.dir = short_tmpdir()
        self.run_dir = self.dir / "run"
        self.state_dir = self.dir / "state"
        self.config_path = self.dir / "mabeamd.toml"
        if not raw_config:
            config = FAST_WORKERS.format(workers=workers, max_restarts=max_restarts) + config
        if endpoints and "[agents]" not in config:
            config = ENDPOINTS + config
        if not raw_config and "[metrics]" not in config:
            # Off unless a test asks: daemons side by side would compete for its port.
            config += "\n[metrics]\nlisten = \"\"\n"
        # "{run}" in a config stands for this daemon's runtime directory.
        config = config.replace("{run}", str(self.run_dir))
        self.config_path.write_text(config)
        self.agent_endpoint = f"ipc://{self.run_dir}/agents.sock"
        self.event_endpoint = f"ipc://{self.run_dir}/events.sock"
        self.socket = self.run_dir / "control.sock"
        self.log_path = self.dir / "daemon.log"
        self.extra_env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifyListener | None = None
        self._notify_mark = 0

    # --- process ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mabeamd", "--config", str(self.config_path),
                "--runtime-dir", str(self.run_dir), "--state-dir", str(self.state_dir),
                *self.args]

    def start(self, wait_ready: bool = True, timeout: float = 15.0) -> Daemon:
        if self.notify is None:  # kept across restarts: messages accumulate
            self.notify = NotifyListener(self.dir / "notify.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.extra_env}
        env.pop("MABEAM_SOCKET", None)
        self._notify_mark = len(self.notify.messages)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log,
                                         cwd=self.dir)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> dict[str, str]:
        assert self.notify is not None
        try:
            return self.notify.wait_for(lambda m: m.get("READY") == "1", timeout,
                                        start=self._notify_mark)
        except TimeoutError:
            raise AssertionError(f"daemon not ready in {timeout}s; log:\n{self.log()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        """Kill whatever is left (a failing test must not leak processes into the next)."""
        if self.proc is not None and self.proc.poll() is None:
            kids = self.descendants()
            self.proc.kill()
            self.proc.wait(10)
            for k in kids:
                with contextlib.suppress(psutil.Error):
                    k.kill()
        if self.notify is not None:
            self.notify.close()
        for f in self.shm_segments():  # a daemon killed with -9 could not remove them
            f.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def shm_segments(self) -> list[Path]:
        """This daemon's shared-memory segment files (named after its state directory)."""
        try:
            instance = json.loads((self.state_dir / "meta.json").read_text())["instance"]
        except (OSError, ValueError, KeyError):
            return []
        return sorted(Path("/dev/shm").glob(f"mabeamd-{instance}-*"))

    # --- admin -----------------------------------------------------------------------------

    def client(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout=timeout)

    def call(self, op: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self.client(timeout) as c:
            return c.call(op, body)

    def workers(self) -> list[dict[str, Any]]:
        ws: list[dict[str, Any]] = self.call("workers")["workers"]
        return ws

    def ctl(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run_ctl(*args, env=env, timeout=timeout)

    def wait_until(self, pred: Callable[[], bool], timeout: float = 10.0,
                   what: str = "condition") -> float:
        """Poll `pred` (test-side only) until true; returns the seconds it took."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n"
                                     f"{self.log()}")
            time.sleep(0.01)
        return time.monotonic() - t0


def both_ways(proto: OneRound, params: dict[str, Any], participants: list[Participant],
              responses: list[Response], replaced: Iterable[Response] = (),
              ) -> tuple[Any, Any]:
    """One round decided both ways: `decide_typed` on what a session holds (`params` through
    check_params; `responses` one per participant, each accepted by check_response, in
    arrival order) and `decide` on the inputs map `mabeamctl protocols eval` reads for the
    same round -- the engine's participant maps, and among the responses, in seq order,
    `replaced`: answers the round did not keep (replaced by a resubmission, or refused after
    a first answer that stands). Returns (typed, json), each the outcome or ("error",
    message): a protocol's two paths must agree."""
    def outcome(decide: Callable[[], dict[str, Any]]) -> Any:
        try:
            return decide()
        except ProtocolError as exc:
            return ("error", str(exc))

    checked = proto.check_params(dict(params))
    every = sorted([*responses, *replaced], key=lambda r: r.seq)
    inputs = round_inputs(params, [p.to_dict() for p in participants], every)
    return (outcome(lambda: proto.decide_typed(checked, participants, responses)),
            outcome(lambda: proto.decide(inputs)))
