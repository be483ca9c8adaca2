"""The wire codec: round trips, and every malformed input refused with a code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@given(rid=st.integers(0, 2**63) | st.text(max_size=64), op=st.text(min_size=1, max_size=64),
       body=st.dictionaries(st.text(max_size=8), values, max_size=5))
def test_request_round_trip(rid: int | str, op: str, body: dict[str, object]) -> None:
    frames = wire.encode({"id": rid, "op": op}, body)
    assert wire.parse_request(frames) == (rid, op, body)


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_frames_never_raise_anything_but_wire_error(frames: list[bytes]) -> None:
    try:
        wire.parse_request(frames)
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION,
                            ErrorCode.TOO_LARGE)


def test_size_limit() -> None:
    frames = wire.encode({"id": 1, "op": "x"}, {"blob": b"\0" * 2000})
    with pytest.raises(WireError) as exc:
        wire.parse_request(frames, max_size=1000)
    assert exc.value.code == ErrorCode.TOO_LARGE


def test_error_keeps_the_request_id_when_readable() -> None:
    with pytest.raises(WireError) as exc:
        wire.parse_request([wire.PROTOCOL, wire.pack({"id": 9, "op": ""}), wire.pack({})])
    assert exc.value.request_id == 9


def test_reply_shapes() -> None:
    h, b = wire.decode(wire.reply_error(3, ErrorCode.BUSY, "later"))
    assert h == {"id": 3, "status": "error"} and b == {"code": "busy", "message": "later"}
    h, b = wire.decode(wire.reply_progress("a", "half way", done=1))
    assert h == {"id": "a", "status": "progress"} and b == {"message": "half way", "done": 1}


def test_check_fields() -> None:
    wire.check_fields({"a": 1}, "op", {"a", "b"}, {"a"})
    with pytest.raises(WireError, match=r"op: unknown field\(s\) \['z'\]; it takes \['a'\]"):
        wire.check_fields({"z": 1}, "op", {"a"})
    with pytest.raises(WireError, match="it takes none"):
        wire.check_fields({"z": 1}, "op")
    with pytest.raises(WireError, match=r"missing field\(s\) \['a'\]"):
        wire.check_fields({}, "op", {"a"}, {"a"})


def test_an_unexpected_exception_becomes_an_incident(caplog: pytest.LogCaptureFixture) -> None:
    """The client gets `internal` with an incident id, not repr(exc) (which may show
    internals); the log has the same id with the traceback."""
    import logging

    log = logging.getLogger("mabeamd.test")
    try:
        raise KeyError("secret-internal-detail")
    except KeyError as exc:
        frames = wire.reply_incident(7, log, "test: request 7 failed", exc)
    header, body = wire.decode(frames)
    assert header == {"id": 7, "status": "error"}
    assert body["code"] == "internal" and len(body["incident"]) == 8
    assert body["incident"] in body["message"] and "secret" not in body["message"]
    [record] = [r for r in caplog.records if body["incident"] in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


@pytest.mark.parametrize("frames", [
    [b"XX9", wire.pack({"id": 7, "op": "ping"}), wire.pack({})],  # a wrong version tag
    [wire.pack({"id": 7, "op": "ping"}), wire.pack({})],  # two frames: no version tag
    [wire.PROTOCOL, wire.pack({"id": 7, "op": "ping"}), wire.pack({}) + b"\x01"],  # trailing
    [wire.PROTOCOL, wire.pack({"id": 7, "op": "ping"}) + b"\xc0", wire.pack({})],
    [wire.PROTOCOL, wire.pack({"id": 7, "op": "ping"}), b"\xa2\xff\xfe"],  # invalid UTF-8
    [wire.PROTOCOL, wire.pack({"id": 7, "op": "ping", "x": b"\xff".decode("latin-1")}),
     b"\x81\x01\x02"],  # an integer map key in the body
    [wire.PROTOCOL, wire.pack({"id": 7, "op": "ping"}), wire.pack({}), b"extra"],  # four
], ids=["version", "two-frames", "trailing-body", "trailing-header", "utf8", "int-key",
        "four-frames"])
def test_a_broken_request_with_a_readable_id_keeps_it(frames: list[bytes]) -> None:
    """Error replies used to carry a nil id for these, so the client waited for its own
    timeout; now the reply names the request it refuses."""
    with pytest.raises(WireError) as exc:
        wire.parse_request(frames)
    assert exc.value.request_id == 7
