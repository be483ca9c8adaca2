"""The registry on its own: ownership rules, liveness, and discovery against a brute-force
model (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.agents.registry import HEALTHY, UNHEALTHY, Registry
from mabeamd.net.wire import WireError

A, B = (0, b"a"), (0, b"b")


def reg(r: Registry, agent: str, conn: Any = A, principal: str | None = None,
        now: float = 0.0, **body: Any) -> Any:
    return r.register(agent, conn, principal, body, now=now, wall=0.0)


def code(fn: Any) -> str:
    with pytest.raises(WireError) as exc:
        fn()
    return exc.value.code


def test_ownership_token_and_namespaces() -> None:
    r = Registry(10, owner_of=lambda i: "alice" if i.split("/")[0] == "alice" else None)
    rec, created = reg(r, "x")
    assert created
    assert code(lambda: reg(r, "x", B)) == "exists"
    assert code(lambda: reg(r, "x", B, token="nope")) == "exists"
    assert reg(r, "x", B, token=rec.token)[0].conn == B
    assert code(lambda: r.owned("x", A)) == "not_registered"
    assert code(lambda: reg(r, "alice/1")) == "forbidden"
    reg(r, "alice/1", A, "alice")
    assert reg(r, "alice/1", B, "alice")[1] is False  # same key: takeover without token
    assert code(lambda: reg(r, "bob", A, "alice", capabilities="x")) == "bad_request"


def test_preassigned_token_and_capacity() -> None:
    r = Registry(2)
    r.preassign("m/0", "secret", "m")
    rec, _ = reg(r, "m/0")
    assert (rec.token, rec.managed) == ("secret", "m")
    assert reg(r, "m/0", B, token="secret")[0].conn == B
    reg(r, "y")
    assert code(lambda: reg(r, "z")) == "busy"


def test_liveness_transitions() -> None:
    r = Registry(10)
    reg(r, "a", now=0.0)
    reg(r, "b", now=1.0)

    def sweep(now: float) -> tuple[list[str], list[str]]:
        unhealthy, gone = r.sweep(now, unhealthy_after=3.0, gone_after=2.0)
        return [x.id for x in unhealthy], [x.id for x in gone]

    assert sweep(3.5) == (["a"], [])
    assert r.agents["a"].status == UNHEALTHY
    assert r.touch("a", 4.0) is True and r.agents["a"].status == HEALTHY
    assert r.touch("a", 4.0) is False
    assert sweep(6.0) == (["b"], [])  # b silent 5 s: unhealthy, not yet gone
    assert sweep(6.5) == ([], ["b"])
    assert "b" not in r.agents
    assert sweep(9.5) == (["a"], ["a"])  # silent 5.5 s at once: both in one sweep
    assert len(r) == 0


ids = st.sampled_from([f"{p}{n}" for p in ("a", "ab", "b", "z/") for n in range(6)])
caps = st.lists(st.sampled_from(["x", "y", "z"]), max_size=3)
ops = st.lists(st.one_of(
    st.tuples(st.just("reg"), ids, caps, st.integers(0, 2)),
    st.tuples(st.just("bye"), ids),
    st.tuples(st.just("touch"), ids),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("wait"), st.floats(0, 4)),
), max_size=60)
queries = st.fixed_dictionaries({
    "capabilities": caps,
    "status": st.sampled_from([None, HEALTHY, UNHEALTHY]),
    "metadata": st.sampled_from([None, {"m": 0}, {"m": 1}]),
    "prefix": st.sampled_from(["", "a", "ab", "z/", "q"]),
    "limit": st.integers(1, 7),
})


@settings(max_examples=300, deadline=None)
@given(ops, queries)
def test_discovery_matches_brute_force(program: list[tuple[Any, ...]],
                                       q: dict[str, Any]) -> None:
    r = Registry(1000)
    now = 0.0  # monotonic, as in the daemon
    for op in program:
        if op[0] == "reg":
            reg(r, op[1], now=now, capabilities=op[2], metadata={"m": op[3]})
        elif op[0] == "bye":
            r.deregister(op[1])
        elif op[0] == "touch":
            r.touch(op[1], now)
        elif op[0] == "wait":
            now += op[1]
        else:
            r.sweep(now, 3.0, 4.0)
            for a in r.agents.values():  # the sweep's invariants, checked on every agent
                assert now - a.last_seen <= 7.0
                assert (a.status == UNHEALTHY) == (now - a.last_seen > 3.0)
    assert r._sorted == sorted(r.agents)  # the index is exact
    expected = sorted(
        a.id for a in r.agents.values()
        if set(q["capabilities"]) <= set(a.capabilities)
        and (q["status"] is None or a.status == q["status"])
        and (not q["metadata"] or all(a.metadata.get(k) == v for k, v in q["metadata"].items()))
        and a.id.startswith(q["prefix"]))
    got: list[str] = []
    after = ""
    while True:  # follow the pages to the end
        page, cursor = r.discover(after=after, **q)
        assert len(page) <= q["limit"]
        got += [a.id for a in page]
        if cursor is None:
            break
        assert cursor == page[-1].id
        after = cursor
    assert got == expected


def test_epochs_end_with_their_binding() -> None:
    """A credential names (id, epoch): an update on the same connection keeps the epoch; a
    takeover, a bye or going silent ends it (on_revoke) and a new binding gets a new one."""
    r = Registry(10)
    ended: list[tuple[str, int]] = []
    r.on_revoke = lambda agent, epoch: ended.append((agent, epoch))
    rec, _ = reg(r, "x")
    first = rec.epoch
    assert reg(r, "x", A)[0].epoch == first and not ended  # an update
    moved = reg(r, "x", B, token=rec.token)[0]
    assert ended == [("x", first)] and moved.epoch > first
    r.deregister("x")
    assert ended[-1] == ("x", moved.epoch)
    again = reg(r, "x")[0]
    assert again.epoch > moved.epoch
    reg(r, "y", now=0.0)
    r.sweep(100.0, unhealthy_after=1.0, gone_after=1.0)
    assert {a for a, _ in ended} == {"x", "y"}
