"""worker/attach.py: who gets pushes from the worker, and when an attachment ends. A real
ROUTER (ROUTER_MANDATORY, as the shard endpoint's) and real DEALERs over inproc."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from mabeamd.net import wire
from mabeamd.net.zmqutil import agent_router
from mabeamd.worker.attach import Attachments, credential_epoch


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    ctx = zmq.Context()
    router = agent_router(ctx, 1 << 20)
    router.bind("inproc://attach")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 2000)
    dealer.connect("inproc://attach")
    dealer.send(b"hi")  # the router learns the dealer's routing id
    rid, _ = router.recv_multipart()
    assert rid
    yield router, dealer
    dealer.close(0)
    router.close(0)
    ctx.term()


def routing_id(router: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> bytes:
    dealer.send(b"again")
    rid, _ = router.recv_multipart()
    return bytes(rid)


BODY = {"agents": ["a", "b"], "op": "session.invite",
        "body": {"session": "s1", "round": 1, "kind": "bid"}}


def test_pushes_reach_attached_agents_and_the_rest_is_returned(sockets: Any) -> None:
    router, dealer = sockets
    att = Attachments()
    att.attach("a", routing_id(router, dealer), 3)
    assert att.push(router, 1, BODY) == ["b"]
    frames = dealer.recv_multipart()
    header, body = wire.decode(frames)
    assert header["push"] == "session.invite" and isinstance(header["id"], int)
    assert body == {"session": "s1", "round": 1, "kind": "bid", "to": "a", "shard": 1}
    notice = {**BODY, "op": "session.notice"}
    assert att.push(router, 1, notice) == ["b"]
    _, body = wire.decode(dealer.recv_multipart())
    assert "shard" not in body  # only an invitation names the worker that takes answers


def test_a_revocation_ends_only_attachments_made_with_an_older_credential(sockets: Any,
                                                                         ) -> None:
    router, dealer = sockets
    att = Attachments()
    rid = routing_id(router, dealer)
    att.attach("a", rid, 5)
    att.revoke({"a": 4})  # an earlier registration's credential: not this attachment's
    assert len(att) == 1
    att.revoke({"a": 5, "zed": 9})
    assert len(att) == 0
    assert att.push(router, 0, BODY) == ["a", "b"]


def test_a_gone_connection_ends_the_attachment(sockets: Any) -> None:
    router, _ = sockets
    att = Attachments()
    att.attach("a", b"\x00no-such-peer", 1)
    assert att.push(router, 0, BODY) == ["a", "b"]
    assert len(att) == 0 and att.stats["gone"] == 1


def test_credential_epoch() -> None:
    assert credential_epoch("17.00ff") == 17
