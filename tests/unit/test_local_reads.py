"""The SDK's same-host reads when the segments cannot be opened: one warning per process,
no open attempt per read, a pause that doubles, a hello that ends it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mabeamd.client import local
from mabeamd.storage import shm
from mabeamd.storage.statedir import StateDirError, segment_group


class Refusing:
    """Stands in for shm.SegmentReader: every open is refused like a 0600 segment's."""

    opened = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Refusing.opened += 1
        raise PermissionError(13, "Permission denied", "/dev/shm/mabeamd-x-s0.ctl")


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> type[Refusing]:
    Refusing.opened = 0
    monkeypatch.setattr(local.shm, "SegmentReader", Refusing)
    monkeypatch.setattr(local, "_warned", set())
    monkeypatch.setattr(local, "SUPPORTED", True)
    return Refusing


def reads(prefix: str = "mabeamd-x") -> local.LocalReads:
    r = local.LocalReads()
    r.hello({"dir": "/dev/shm", "prefix": prefix}, 2)
    return r


def test_one_warning_per_process_and_no_open_per_read(
        refusing: type[Refusing], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "mabeamd.client")
    a, b = reads(), reads()
    for _ in range(100):
        assert a.get("x") is None and b.get("y") is None
    assert refusing.opened == 2  # one per client, then each pauses
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Permission denied" in warnings[0].getMessage()


def test_the_pause_doubles_and_a_hello_ends_it(refusing: type[Refusing],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(local.time, "monotonic", lambda: now[0])
    r = reads()
    r.get("x")
    for pause in (1.0, 2.0, 4.0):
        now[0] += pause - 0.01
        r.get("x")
        assert refusing.opened == {1.0: 1, 2.0: 2, 4.0: 3}[pause]  # still pausing
        now[0] += 0.02
        r.get("x")  # the pause is over: one more try, and the next pause is twice as long
    assert refusing.opened == 4
    r.hello({"dir": "/dev/shm", "prefix": "mabeamd-x"}, 2)
    r.get("x")
    assert refusing.opened == 5


def test_no_segments_on_this_host_is_quiet_and_fast(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local, "SUPPORTED", True)
    caplog.set_level(logging.DEBUG, "mabeamd.client")
    t0 = time.monotonic()
    with pytest.raises(shm.Unavailable, match="no control file"):
        shm.SegmentReader(tmp_path, "mabeamd-none", 0)  # was 10000 failed opens
    r = local.LocalReads()
    r.hello({"dir": str(tmp_path), "prefix": "mabeamd-none"}, 1)
    assert r.get("x") is None
    assert time.monotonic() - t0 < 0.5
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


def test_segment_group_needs_membership(monkeypatch: pytest.MonkeyPatch) -> None:
    import grp

    assert segment_group("") is None
    with pytest.raises(StateDirError, match="no group"):
        segment_group("no-such-group-xyz")
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getgroups", lambda: [])
    with pytest.raises(StateDirError, match=f"SupplementaryGroups={other.gr_name}"):
        segment_group(other.gr_name)
    assert segment_group(grp.getgrgid(os.getegid()).gr_name) == os.getegid()
