"""The wire codec shared by every mabeamd socket (control, worker link, and later agents).

A message is three ZeroMQ frames after any routing envelope:

    [PROTOCOL, msgpack(header), msgpack(body)]

The header is a map with at least ``id`` (an int or a short string chosen by the requester)
and ``op`` for requests, or ``id`` and ``status`` for replies. Replies echo the request id;
``status`` is ``ok``, ``error`` (body ``{"code", "message"}``) or ``progress`` (body
``{"message"}``; more frames for the same id follow). The msgpack options are fixed here and
nowhere else, so every socket decodes the same way.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgpack

H = TypeVar("H")

PROTOCOL: Final = b"MB1"
MAX_ID_LEN: Final = 64
MAX_OP_LEN: Final = 64
DEFAULT_MAX_MESSAGE: Final = 1 << 20


class ErrorCode:
    """Stable, machine-readable error codes. Never rename one: clients switch on them."""

    BAD_REQUEST: Final = "bad_request"
    UNKNOWN_OP: Final = "unknown_op"
    UNSUPPORTED_VERSION: Final = "unsupported_version"
    NOT_REGISTERED: Final = "not_registered"
    FORBIDDEN: Final = "forbidden"
    BUSY: Final = "busy"
    NOT_FOUND: Final = "not_found"
    EXISTS: Final = "exists"
    CONFLICT: Final = "conflict"
    VERSION_MISMATCH: Final = "version_mismatch"
    TOO_LARGE: Final = "too_large"
    INTERNAL: Final = "internal"
    SHUTTING_DOWN: Final = "shutting_down"
    TIMEOUT: Final = "timeout"
    CONSTRAINT_VIOLATION: Final = "constraint_violation"
    WRONG_SHARD: Final = "wrong_shard"  # with "shard" (the owner) and "shards" (the count)
    QUOTA_EXCEEDED: Final = "quota_exceeded"  # a shard's variable count or bytes limit
    STORAGE_ERROR: Final = "storage_error"  # the shard's disk refused (full...): with "errno"
    RATE_LIMITED: Final = "rate_limited"  # [limits]: with "retry_after" (seconds) and "limit"
    # Cluster mode: etcd did not answer in time (no quorum, unreachable). With "applied":
    # false (nothing changed) or "unknown" (a write etcd may still commit: read it back).
    UNAVAILABLE: Final = "unavailable"


class WireError(Exception):
    """A request that cannot be served; carries the code sent back to the peer, and
    `details`: fields the error body carries beside code and message (e.g. wrong_shard's
    shard and shards)."""

    def __init__(self, code: str, message: str, request_id: int | str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details

    def body(self) -> dict[str, Any]:
        """The error reply's body: details, then code and message (which details cannot
        override). The one error shape: wire replies and worker link results both carry it."""
        return {**(self.details or {}), "code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, body: Any) -> WireError:
        """The inverse of body(), for an error relayed from another process."""
        if not isinstance(body, dict):
            return cls(ErrorCode.INTERNAL, "malformed error from a worker")
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
        return cls(str(body.get("code")), str(body.get("message")), details=details or None)


def incident(log: logging.Logger, what: str, exc: BaseException) -> WireError:
    """An unexpected exception while serving a request (a bug): logged with its traceback
    under a fresh incident id, and the `internal` error the client gets, which names that id
    (so an operator finds the traceback) but not the exception's text (it may show
    internals)."""
    iid = secrets.token_hex(4)
    log.error("%s (incident %s)", what, iid, exc_info=exc)
    return WireError(ErrorCode.INTERNAL, f"internal error, incident {iid}: the daemon's log "
                     "has the details", details={"incident": iid})


def reply_incident(rid: int | str | None, log: logging.Logger, what: str,
                   exc: BaseException) -> list[bytes]:
    """The error reply for an unexpected exception (see incident)."""
    err = incident(log, what, exc)
    return reply_error(rid, err.code, err.message, err.details)


class Packed(bytes):
    """A body already packed with pack() (e.g. a variable's record, which the worker holds
    packed): encode() sends it as is instead of packing it again."""

    __slots__ = ()


_packers = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack with bin types, through one reused Packer per thread. msgpack.packb builds a
    Packer per call, whose 256 KiB buffer is above the fixed mmap threshold the daemon sets
    (malloc.py): every call was an mmap, its page faults and an munmap, ~12 us instead of
    ~0.5 us, and a third of the one-hop write throughput (docs/benchmarks.md). A Packer
    resets its buffer after each pack, also when packing raises."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)  # type: ignore[no-any-return]


def unpack(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE) -> Any:
    """Decode one msgpack object, refusing oversize input and trailing bytes."""
    if len(data) > max_size:
        raise WireError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes exceeds {max_size}")
    try:
        # msgpack >= 1.0 bounds every container length by the input length, so a tiny
        # frame cannot announce a huge array; strict_map_key refuses non-str/bytes keys.
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData as exc:
        raise WireError(ErrorCode.BAD_REQUEST, "trailing bytes after msgpack object") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise WireError(ErrorCode.BAD_REQUEST, f"invalid msgpack: {exc}") from exc


def encode(header: dict[str, Any], body: Any) -> list[bytes]:
    return [PROTOCOL, pack(header), body if type(body) is Packed else pack(body)]


def decode(frames: list[bytes], max_size: int = DEFAULT_MAX_MESSAGE) -> tuple[dict[str, Any], Any]:
    """Decode the three protocol frames (envelope already stripped)."""
    if len(frames) != 3:
        raise WireError(ErrorCode.BAD_REQUEST, f"expected 3 frames, got {len(frames)}")
    if frames[0] != PROTOCOL:
        raise WireError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol frame {frames[0][:16]!r} is not {PROTOCOL!r}",
        )
    header = unpack(frames[1], max_size)
    if not isinstance(header, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "header must be a map")
    body = unpack(frames[2], max_size)
    return header, body


def request_id(header: dict[str, Any]) -> int | str | None:
    """The request id if it is well formed, else None (the reply can then not be matched)."""
    rid = header.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and -(2**63) <= rid < 2**64:
        return rid
    if isinstance(rid, str) and len(rid) <= MAX_ID_LEN:
        return rid
    return None


def salvage_id(frames: list[bytes], max_size: int = DEFAULT_MAX_MESSAGE) -> int | str | None:
    """The request id of a message that does not decode, when one of its first two frames
    starts with a map holding a well-formed id (read leniently: only that map, nothing
    after it)."""
    for frame in frames[1:2] + frames[:1]:
        is_map = bool(frame) and (frame[0] & 0xF0 == 0x80 or frame[0] in (0xDE, 0xDF))
        if not is_map or len(frame) > max_size:
            continue
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max_size,
                                    unicode_errors="replace")
        unpacker.feed(frame)
        try:
            header = unpacker.unpack()
        except Exception:  # anything at all: this is best effort on a broken message
            continue
        if isinstance(header, dict):
            rid = request_id(header)
            if rid is not None:
                return rid
    return None


def parse_request(frames: list[bytes], max_size: int = DEFAULT_MAX_MESSAGE) -> tuple[
    int | str, str, dict[str, Any]
]:
    """Decode and validate a request: returns (id, op, body).

    Raises WireError; when the id itself could be read, the error's ``request_id`` holds it so
    the caller can still address the error reply -- also when the frames are otherwise
    broken (a wrong version tag, two frames instead of three, a body with trailing bytes,
    invalid UTF-8 or a non-string key): a client waiting for that id hears at once.
    """
    try:
        header, body = decode(frames, max_size)
    except WireError as exc:
        if exc.request_id is None:
            exc.request_id = salvage_id(frames, max_size)
        raise
    rid = request_id(header)
    if rid is None:
        raise WireError(ErrorCode.BAD_REQUEST,
                        "header.id must be an int or a string of <= 64 chars")
    op = header.get("op")
    if not isinstance(op, str) or not op or len(op) > MAX_OP_LEN:
        raise WireError(ErrorCode.BAD_REQUEST, "header.op must be a non-empty string", rid)
    if not isinstance(body, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "body must be a map", rid)
    return rid, op, body


def handler_for(handlers: Mapping[str, H], op: str) -> H:
    """The handler of `op`, or `unknown_op` naming the ops there are."""
    handler = handlers.get(op)
    if handler is None:
        raise WireError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; known: "
                        f"{', '.join(sorted(handlers))}")
    return handler


def check_fields(body: dict[str, Any], op: str, allowed: set[str] | frozenset[str] = frozenset(),
                 required: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse a body with fields outside `allowed` or missing any of `required`."""
    extra = set(body) - allowed
    if extra:
        raise WireError(ErrorCode.BAD_REQUEST, f"{op}: unknown field(s) {sorted(extra)}"
                        + (f"; it takes {sorted(allowed)}" if allowed else "; it takes none"))
    missing = required - set(body)
    if missing:
        raise WireError(ErrorCode.BAD_REQUEST, f"{op}: missing field(s) {sorted(missing)}")


def reply_ok(rid: int | str, body: Any) -> list[bytes]:
    return encode({"id": rid, "status": "ok"}, body)


def reply_error(rid: int | str | None, code: str, message: str,
                details: dict[str, Any] | None = None) -> list[bytes]:
    return refusal(rid, WireError(code, message, details=details))


def refusal(rid: int | str | None, exc: WireError) -> list[bytes]:
    """The error reply for a WireError (its body(): the one error shape)."""
    return encode({"id": rid if rid is not None else exc.request_id, "status": "error"},
                  exc.body())


def reply_progress(rid: int | str, message: str, **extra: Any) -> list[bytes]:
    return encode({"id": rid, "status": "progress"}, {"message": message, **extra})
