"""agents/batch.py: the hand-packed reply elements and their join are exactly what msgpack
would pack for the same structure (property test, msgpack as the independent packer), at
every array-header size; parse() refuses malformed batches whole."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.agents import batch
from mabeamd.client.errors import MabeamError, NotFound
from mabeamd.client.pipeline import element
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, Packed, WireError

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=False) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
CODES = st.sampled_from([v for k, v in vars(ErrorCode).items() if k.isupper()])


@st.composite
def outcomes(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """(element as batch packs it, the structure it must unpack to)."""
    if draw(st.booleans()):
        result = draw(VALUES)
        if draw(st.booleans()):  # a variable's segment record comes pre-packed
            return batch.ok(Packed(wire.pack(result))), {"status": "ok", "result": result}
        return batch.ok(result), {"status": "ok", "result": result}
    exc = WireError(draw(CODES), draw(st.text(max_size=20)),
                    details=draw(st.dictionaries(st.sampled_from(["limit", "shard", "x"]),
                                                 st.integers(0, 9), max_size=2)))
    return batch.error(exc), {"status": "error", "error": exc.body()}


@settings(max_examples=300, deadline=None)
@given(st.lists(outcomes(), max_size=40))
def test_join_is_what_msgpack_packs(elements: list[tuple[bytes, dict[str, Any]]]) -> None:
    joined = batch.join([e for e, _ in elements])
    want = {"results": [s for _, s in elements]}
    assert msgpack.unpackb(bytes(joined), raw=False, strict_map_key=False) == want


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536, 65537])
def test_every_array_header_size(n: int) -> None:
    one = batch.ok(n)
    got = msgpack.unpackb(bytes(batch.join([one] * n)), raw=False)
    assert got == {"results": [{"status": "ok", "result": n}] * n}


def test_elements_become_results_and_exceptions_in_the_sdk() -> None:
    ok, err = (wire.unpack(bytes(batch.join([batch.ok({"v": 1}), batch.error(
        WireError(ErrorCode.NOT_FOUND, "no variable 'x'"))])))["results"])
    assert element(ok) == {"v": 1}
    got = element(err)
    assert isinstance(got, NotFound) and "no variable 'x'" in str(got)
    assert isinstance(element("junk"), MabeamError) and element("junk").code == "internal"


@pytest.mark.parametrize("body", [
    None, [], {}, {"ops": None}, {"ops": {}}, {"ops": []}, {"ops": [1], "x": 2},
    {"ops": [{}] * (batch.MAX_OPS + 1)},
])
def test_a_malformed_batch_is_refused_whole(body: Any) -> None:
    with pytest.raises(WireError) as info:
        batch.parse(body)
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("op", [None, 3, {}, {"op": "var.list"}, {"op": "var.batch"},
                                {"op": "session.start"}, {"name": "x"}, {"op": [1]},
                                {"op": {"a": 1}}])
def test_an_op_that_cannot_be_batched_fails_alone(op: Any) -> None:
    with pytest.raises(WireError) as info:
        batch.split(op)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert batch.split({"op": "var.get", "name": "x"}) == ("var.get", {"name": "x"})
    assert len(batch.parse({"ops": [op] * batch.MAX_OPS})) == batch.MAX_OPS
