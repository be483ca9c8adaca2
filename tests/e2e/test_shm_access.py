"""Who can read the shard segments: mode 0640 whatever the umask, the group configurable,
and an SDK that cannot read them says so once and reads over the wire (a real daemon, and a
client process running as `nobody`)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mabeamd.storage import shm
from mabeamd.testing import Daemon, free_port, free_ports

pytestmark = pytest.mark.skipif(not shm.supported(), reason="seqlock reads need x86-64")

NOBODY = pwd.getpwnam("nobody") if "nobody" in {p.pw_name for p in pwd.getpwall()} else None
NOGROUP = next((g for g in ("nogroup", "nobody") if g in {x.gr_name for x in grp.getgrall()}),
               None)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The daemon inherits the test's umask: as under the unit's UMask=0077."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def segment_files(d: Daemon) -> list[Path]:
    files = d.shm_segments()
    assert any(f.name.endswith(".ctl") for f in files) and any("-g" in f.name for f in files)
    return files


def assert_readable_by(d: Daemon, gid: int) -> None:
    for f in segment_files(d):
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640, (f, oct(st.st_mode))
        assert st.st_gid == gid, (f, st.st_gid)


def test_segments_are_0640_for_the_daemons_group_under_umask_077(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    with umask(0o077):
        d.start()
    assert_readable_by(d, os.getegid())


@pytest.mark.skipif(NOGROUP is None or os.geteuid() != 0,
                    reason="needs root and a nogroup group to give the segments to")
def test_shm_group_owns_every_generation(make_daemon: Callable[..., Daemon]) -> None:
    assert NOGROUP is not None
    gid = grp.getgrnam(NOGROUP).gr_gid
    d = make_daemon(f'[variables]\nshm_group = "{NOGROUP}"\n')
    with umask(0o077):
        d.start()
        assert_readable_by(d, gid)
        # A restarted worker builds a new generation: it gets the same mode and group.
        before = {f.name for f in d.shm_segments()}
        os.kill(d.workers()[0]["pid"], signal.SIGKILL)
        d.wait_until(lambda: {f.name for f in d.shm_segments()} != before
                     and all(w["state"] == "running" for w in d.workers()),
                     what="worker 0 restarted with a new generation")
    assert_readable_by(d, gid)


# The client, run as another user: writes one variable, reads it back 200 times, and
# reports what the SDK logged and how often it tried to map a segment. It starts as root and
# drops to the uid and gid it is given once everything is imported (the interpreter's own
# files may not be readable by that user).
CLIENT = r"""
import json, logging, os, sys
from mabeamd.client import Client
from mabeamd.storage import shm

os.setgroups([])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[2]))
assert os.geteuid() != 0

opened = []
real = shm.SegmentReader.__init__
def counting(self, *a, **k):
    opened.append(1)
    real(self, *a, **k)
shm.SegmentReader.__init__ = counting

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger("mabeamd.client").addHandler(Keep())
logging.getLogger("mabeamd.client").setLevel(logging.DEBUG)

with Client(sys.argv[1], timeout=10) as c:
    c.register("reader-1", [])
    c.create_var("reader-1", "plan/x", 1)
    c.set_var("reader-1", "plan/x", 7)
    values = [c.get_var("plan/x")["value"] for _ in range(200)]
    local = bool(c.aio._local._readers)
print(json.dumps({"values": sorted(set(values)), "opened": len(opened), "local": local,
                  "warnings": [m for lvl, m in records if lvl == "WARNING"]}))
"""


def run_as_nobody(endpoint: str, group: int) -> dict[str, object]:
    assert NOBODY is not None
    r = subprocess.run([sys.executable, "-c", CLIENT, endpoint, str(NOBODY.pw_uid), str(group)],
                       capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def tcp_daemon(make_daemon: Callable[..., Daemon], extra: str = "") -> str:
    """Reachable by another user: tcp on loopback, not the test's private ipc directory."""
    port, base = free_port(), free_ports(2)
    d = make_daemon(f'[agents]\nendpoints = ["tcp://127.0.0.1:{port}"]\n'
                    f'shard_endpoint = "tcp://127.0.0.1:{base}"\n[events]\nendpoint = ""\n'
                    + extra)
    with umask(0o077):
        d.start()
    return f"tcp://127.0.0.1:{port}"


needs_nobody = pytest.mark.skipif(NOBODY is None or NOGROUP is None or os.geteuid() != 0,
                                  reason="needs root to run a client as nobody")


@needs_nobody
def test_a_client_that_cannot_read_the_segments_warns_once_and_uses_the_wire(
        make_daemon: Callable[..., Daemon]) -> None:
    assert NOGROUP is not None
    endpoint = tcp_daemon(make_daemon)  # segments root's group, 0640: not for nobody
    out = run_as_nobody(endpoint, grp.getgrnam(NOGROUP).gr_gid)
    assert out["values"] == [7]  # every read answered, over the wire
    assert out["local"] is False
    warnings = out["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, warnings
    assert "cannot read the daemon's shared-memory segments" in warnings[0]
    assert "Permission denied" in warnings[0] and "shm_group" in warnings[0]
    # Not an open attempt per read: one, then a pause (200 reads take well under a second).
    assert out["opened"] == 1, out


@needs_nobody
def test_a_client_in_shm_group_reads_locally(make_daemon: Callable[..., Daemon]) -> None:
    assert NOGROUP is not None
    endpoint = tcp_daemon(make_daemon, f'[variables]\nshm_group = "{NOGROUP}"\n')
    out = run_as_nobody(endpoint, grp.getgrnam(NOGROUP).gr_gid)
    assert out["values"] == [7]
    assert out["local"] is True and out["warnings"] == [], out
