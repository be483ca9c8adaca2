"""SDK parts without a daemon: client/bodies.py Pushes (a push goes to the queue of the
agent it is addressed to when that agent reads its own, else to the connection's; every
queue is bounded) and client/errors.py (a class per error code)."""

from __future__ import annotations

from mabeamd.client.bodies import Push, Pushes


def test_pushes_reach_their_agent_and_the_rest_the_connection() -> None:
    q = Pushes(2)
    a = q.of("a")
    q.put(Push("session.invite", 1, {"to": "a"}))
    q.put(Push("session.invite", 2, {"to": "b"}))  # b reads no queue of its own
    q.put(Push("agent.taken_over", 3, {"agent": "a"}))  # no "to": the connection's
    q.put(Push("message", 4, {"to": ["a"]}))  # not an agent id: the connection's
    assert [a.get_nowait().id] == [1] and a.empty()
    assert [q.all.get_nowait().id for _ in range(2)] == [2, 3]
    assert q.dropped == 1  # the connection's queue held 2
    assert q.of("a") is a
    q.release("a")
    q.put(Push("session.invite", 5, {"to": "a"}))
    assert q.all.get_nowait().id == 5 and a.empty()


def test_every_error_code_has_its_exception_class_and_keeps_the_body() -> None:
    """client/errors.py: one class per daemon error code (constraint_violation and
    storage_error came back as plain MabeamError), and the error body's other fields in
    `details`."""
    from mabeamd.client import MabeamError, error_for
    from mabeamd.net.wire import ErrorCode

    for name, code in vars(ErrorCode).items():
        if not name.isupper():
            continue
        exc = error_for(code, "m", {"code": code, "message": "m", "errno": "ENOSPC"})
        assert type(exc) is not MabeamError and exc.code == code, code
        assert exc.details == {"errno": "ENOSPC"}
