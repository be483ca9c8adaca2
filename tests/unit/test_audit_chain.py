"""The audit log's chain and canonical encoding, without a daemon: the real writer thread
writes a log; any single-field edit, removal or swap of lines is detected at its line."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.observe.audit import (
    GENESIS,
    AuditLog,
    AuditUnavailable,
    canonical,
    files,
    plain,
    record_hash,
    verify_chain,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12)


def write_log(directory: Path, n: int, max_bytes: int = 1 << 20, keep: int = 100) -> None:
    async def main() -> None:
        log = AuditLog(directory, max_bytes=max_bytes, keep=keep, on_failure="refuse")
        log.start()
        for i in range(n):
            fut = log.submit("control", {"op": "vars.set", "args": {"name": "x", "value": i},
                                         "ok": True}, wait=True)
            assert fut is not None
            await fut
        log.close()
    asyncio.run(main())


def all_lines(directory: Path) -> list[str]:
    return [line for p in files(directory) for line in p.read_text().splitlines()]


@given(json_values)
def test_canonical_text_survives_a_round_trip(value: Any) -> None:
    rec = {"v": plain(value)}
    assert canonical(json.loads(canonical(rec))) == canonical(rec)
    assert record_hash(json.loads(canonical(rec))) == record_hash(rec)


def test_plain_turns_msgpack_only_values_into_json() -> None:
    assert plain({b"k": (b"\x00\xff", 1)}) == {"k": [{"$bytes": "AP8="}, 1]}


def test_the_writer_links_records_and_rotation_keeps_the_chain(tmp_path: Path) -> None:
    write_log(tmp_path, 40, max_bytes=2048)
    assert len(files(tmp_path)) > 2
    n, problems = verify_chain(tmp_path)
    assert (n, problems) == (40, [])
    first = json.loads(all_lines(tmp_path)[0])
    assert first["seq"] == 1 and first["prev"] == GENESIS
    write_log(tmp_path, 5, max_bytes=2048)  # a restart reads the last record back
    assert verify_chain(tmp_path) == (45, [])


def test_a_torn_last_line_is_cut_at_start(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write('{"seq": 4, "ki')
    write_log(tmp_path, 1)
    assert verify_chain(tmp_path) == (4, [])


def test_an_unwritable_directory_fails_the_waiters(tmp_path: Path) -> None:
    target = tmp_path / "audit"
    target.write_text("a file where the directory should be")

    async def main() -> dict[str, Any]:
        log = AuditLog(target, max_bytes=1 << 20, keep=2, on_failure="refuse")
        log.start()
        fut = log.submit("control", {"op": "stop"}, wait=True)
        assert fut is not None
        try:
            await fut
        except AuditUnavailable:
            pass
        else:
            raise AssertionError("written into a file?")
        with contextlib.suppress(AuditUnavailable):
            await log.ensure()
        log.close()
        return {**log.stats, "refusing": log.refusing}
    out = asyncio.run(main())
    assert out["failures"] >= 2 and out["records"] == 0 and out["refusing"]


LOG_LINES = 8
_base = tempfile.mkdtemp(prefix="audit-chain-")
atexit.register(shutil.rmtree, _base, True)
write_log(Path(_base), LOG_LINES)
BASE = all_lines(Path(_base))


def check(lines: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit.jsonl").write_text("\n".join(lines) + "\n")
        return verify_chain(Path(d))[1]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, LOG_LINES - 1), st.sampled_from(["seq", "time", "kind", "op", "args",
                                                       "ok", "prev", "hash"]), json_values)
def test_any_single_field_edit_is_detected_at_its_line(i: int, key: str, value: Any) -> None:
    rec = json.loads(BASE[i])
    if rec.get(key) == value:
        return
    rec[key] = value
    lines = list(BASE)
    lines[i] = canonical(rec)
    problems = check(lines)
    assert problems and problems[0].startswith(f"audit.jsonl:{i + 1}:"), problems


@given(st.integers(0, LOG_LINES - 2))
def test_a_removed_or_swapped_line_is_detected(i: int) -> None:
    if i:  # without the very first record the chain is anchored one later (as rotated)
        removed = check(BASE[:i] + BASE[i + 1:])
        assert removed and removed[0].startswith(f"audit.jsonl:{i + 1}:"), removed
    swapped = list(BASE)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    problems = check(swapped)
    # At the first moved line; when it is the very first, at the next (line 1 anchors).
    assert problems and problems[0].startswith(f"audit.jsonl:{i + 1 if i else 2}:"), problems


def test_the_directory_is_0700_whatever_the_umask_at_that_moment(tmp_path: Path) -> None:
    """The arbiter narrows the process umask for an instant to bind its sockets (0177); a
    directory made by the writer thread just then came out 0600 and unusable."""
    import os
    import stat

    old = os.umask(0o177)
    try:
        write_log(tmp_path / "audit", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "audit").stat().st_mode) == 0o700
    assert len(all_lines(tmp_path / "audit")) == 1
