"""`var.batch`: many variable ops in one message, each answered on its own.

Why: a pipelined client pays per message, not per op -- a ZeroMQ send and receive, a parse,
a wake-up of the worker's loop and a reply -- and at 64 requests in flight that per-message
cost is most of what one variable op costs (docs/benchmarks.md). One frame carrying 64 ops
pays it once. Redis pipelines are the same idea.

Semantics: **each op independent, in order per variable** -- the ops on one name run in
the order given, exactly as if sent one after the other; ops of different shards run on
different workers, in parallel (so a read sees the writes to its own name earlier in the
batch, not necessarily those to names of another shard). Results come in request order. An
op that fails (refused, conflict, not found) fails alone: the ops before it stay applied,
the ops after it still run. On a shard endpoint, once an op on a name is answered with a
"not done here, ask the agent endpoint" code (`busy`, `not_registered`, `wrong_shard`),
every later op of the batch on that name is answered `busy` too, without running, so a
client that resends them through the agent endpoint keeps their order (SKIP_AFTER). A batch
is not a transaction: an all-or-nothing change of several variables is what a coordination session's
outcome is (it is applied as one WAL record, storage: Shard.apply_session). The writes of a
batch that reach the worker in one drain share its group commit, so none is acknowledged
before all of them are durable (per the fsync policy).

Each op is the body its single op takes, plus `"op"`; writes carry their `agent` (and, on
a shard endpoint, their `credential`), so one batch may hold writes of several agents of
one client. Every op goes through the same admission (agents/admission.py), the same rate
limits (each op counts as a request) and the same shard rule as on its own: the agent
endpoint splits a batch by shard and forwards each part to its worker; a shard endpoint
answers `wrong_shard` for the ops of names it does not own.

The reply is `{"results": [...]}`, one element per op in the request's order:
`{"status": "ok", "result": R}` with R what the single op answers, or
`{"status": "error", "error": {"code", "message", ...}}` with the body a single op's error
reply carries. Elements are packed once where they are made (a variable comes as its
segment record, wire.Packed) and joined into the reply without unpacking (join()).

Pure: runs in the arbiter (agents/varops.py) and in workers (worker/shard_endpoint.py,
worker/main.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, Packed, WireError, check_fields
from mabeamd.storage.variables import NAMED_OPS

MAX_OPS = 1000  # ops in one batch: bounds the work one message asks of a worker
BATCH_OPS = NAMED_OPS  # get, history, create, set, delete; var.list spans every shard

_OK = b"\x82\xa6status\xa2ok\xa6result"  # msgpack of {"status": "ok", "result": ...
_ERROR = b"\x82\xa6status\xa5error\xa5error"  # ... and {"status": "error", "error": ...


# Codes that mean "nothing was done, send it to the agent endpoint" (routes.direct_fallback).
SKIP_AFTER = frozenset({ErrorCode.BUSY, ErrorCode.NOT_REGISTERED, ErrorCode.WRONG_SHARD})


def held_back(name: Any) -> WireError:
    return WireError(ErrorCode.BUSY, f"not run here: an earlier op of this batch on {name!r} "
                     "was not served here; send both to the agent endpoint, in order")


def parse(body: Any) -> list[Any]:
    """The ops of a var.batch body, or WireError(bad_request) for the batch as a whole (then
    no op has run). Each op is checked only for being a map naming a batchable op; the rest
    of its checks are its own op's, answered in its element."""
    if not isinstance(body, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "a var.batch body is a map with \"ops\"")
    check_fields(body, "var.batch", {"ops"}, {"ops"})
    ops = body["ops"]
    if not isinstance(ops, list):
        raise WireError(ErrorCode.BAD_REQUEST, "ops must be a list of op maps")
    if not ops:
        raise WireError(ErrorCode.BAD_REQUEST, "ops is empty: a batch needs at least one op")
    if len(ops) > MAX_OPS:
        raise WireError(ErrorCode.BAD_REQUEST, f"a batch takes at most {MAX_OPS} ops, not "
                        f"{len(ops)}: split it", details={"limit": MAX_OPS})
    return ops


def split(op_body: Any) -> tuple[str, dict[str, Any]]:
    """(op, its fields without "op") of one element of `ops`; raises WireError, which is
    that element's answer."""
    if not isinstance(op_body, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "each op of a batch is a map with an \"op\"")
    fields = dict(op_body)
    op = fields.pop("op", None)
    if not isinstance(op, str) or op not in BATCH_OPS:  # a list "op" is unhashable
        raise WireError(ErrorCode.BAD_REQUEST, f"op {op!r} cannot be batched; a batch "
                        f"takes {', '.join(sorted(BATCH_OPS))}")
    return op, fields


def ok(result: Any) -> bytes:
    """One op's element for its result (a variable's segment record is embedded as is)."""
    return _OK + (result if type(result) is Packed else wire.pack(result))


def error(exc: WireError) -> bytes:
    return _ERROR + wire.pack(exc.body())


def join(elements: Sequence[bytes]) -> Packed:
    """The reply body {"results": [elements...]}, packed elements joined as they are."""
    n = len(elements)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return Packed(b"\x81\xa7results" + head + b"".join(elements))
