"""Typed exceptions for the daemon's error codes (see docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from mabeamd.net.wire import ErrorCode


class MabeamError(Exception):
    """Base of everything the SDK raises. `code` is the daemon's error code, when it sent one;
    `details` the error body's other fields (e.g. `incident`, `errno`, `limit`)."""

    code = "client"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = {}
        if code is not None:
            self.code = code


class BadRequest(MabeamError):
    code = ErrorCode.BAD_REQUEST


class UnknownOp(MabeamError):
    code = ErrorCode.UNKNOWN_OP


class UnsupportedVersion(MabeamError):
    code = ErrorCode.UNSUPPORTED_VERSION


class NotRegistered(MabeamError):
    code = ErrorCode.NOT_REGISTERED


class Forbidden(MabeamError):
    code = ErrorCode.FORBIDDEN


class Busy(MabeamError):
    code = ErrorCode.BUSY


class NotFound(MabeamError):
    code = ErrorCode.NOT_FOUND


class Exists(MabeamError):
    code = ErrorCode.EXISTS


class Conflict(MabeamError):
    code = ErrorCode.CONFLICT


class VersionMismatch(MabeamError):
    code = ErrorCode.VERSION_MISMATCH


class TooLarge(MabeamError):
    code = ErrorCode.TOO_LARGE


class Internal(MabeamError):
    code = ErrorCode.INTERNAL


class ShuttingDown(MabeamError):
    code = ErrorCode.SHUTTING_DOWN


class Timeout(MabeamError):
    """No reply in time (client side), or the daemon's `timeout` code."""

    code = ErrorCode.TIMEOUT


class WrongShard(MabeamError):
    """The name belongs to another shard than the one asked: `shard` is its owner, `shards`
    the daemon's shard count (a client that hashed with a stale count re-routes)."""

    code = ErrorCode.WRONG_SHARD

    def __init__(self, message: str, code: str | None = None, shard: int | None = None,
                 shards: int | None = None) -> None:
        super().__init__(message, code)
        self.shard = shard
        self.shards = shards


class ConstraintViolation(MabeamError):
    """A value that breaks its variable's type or constraints: nothing was changed."""

    code = ErrorCode.CONSTRAINT_VIOLATION


class StorageError(MabeamError):
    """The shard's disk refused the write (full, quota, I/O error; `details["errno"]`):
    nothing was changed; writes are taken again once the disk takes them."""

    code = ErrorCode.STORAGE_ERROR


class QuotaExceeded(MabeamError):
    """A shard's variable count or bytes limit ([variables] max_*_per_shard)."""

    code = ErrorCode.QUOTA_EXCEEDED


class RateLimited(MabeamError):
    """A rate limit ([limits]) is spent: nothing was done. `retry_after` is how many
    seconds to wait before the request would be admitted (sooner only if the agent's other
    connections stay quiet meanwhile); `limit` names which bucket, e.g. "agent_requests".
    The SDK never retries these itself: whether to wait, drop or slow down is the caller's
    call."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, code: str | None = None, retry_after: float = 0.0,
                 limit: str | None = None) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after
        self.limit = limit


class Unavailable(MabeamError):
    """Cluster mode: etcd did not answer in time (quorum lost, unreachable). `applied` is
    False when nothing was changed, None when a write's outcome is unknown (etcd may still
    commit it): read the variable back with consistent=True before sending it again."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, code: str | None = None,
                 applied: bool | None = False) -> None:
        super().__init__(message, code)
        self.applied = applied


class ConnectionLost(MabeamError):
    """The client is closed or gave up reconnecting."""


_BY_CODE: dict[str, type[MabeamError]] = {
    cls.code: cls for cls in (BadRequest, UnknownOp, UnsupportedVersion, NotRegistered,
                              Forbidden, Busy, NotFound, Exists, Conflict, VersionMismatch,
                              TooLarge, Internal, ShuttingDown, Timeout, QuotaExceeded,
                              ConstraintViolation, StorageError)
}


def error_for(code: str, message: str, body: dict[str, Any] | None = None) -> MabeamError:
    """The exception for an error reply (`body`: the whole error body, for the fields some
    codes carry; all of them but code and message are in `details`); unknown codes give a
    plain MabeamError."""
    exc = _error_for(code, message, body)
    if isinstance(body, dict):
        exc.details = {k: v for k, v in body.items() if k not in ("code", "message")}
    return exc


def _error_for(code: str, message: str, body: dict[str, Any] | None) -> MabeamError:
    if code == ErrorCode.WRONG_SHARD:
        body = body or {}
        shard, shards = body.get("shard"), body.get("shards")
        return WrongShard(message, code, shard if isinstance(shard, int) else None,
                          shards if isinstance(shards, int) else None)
    if code == ErrorCode.UNAVAILABLE:
        applied = (body or {}).get("applied")
        return Unavailable(message, code, False if applied is False else None)
    if code == ErrorCode.RATE_LIMITED:
        body = body or {}
        after, limit = body.get("retry_after"), body.get("limit")
        if isinstance(after, bool) or not isinstance(after, (int, float)) or not after >= 0:
            after = 1.0  # a daemon that did not say: a second is a sane first pause
        return RateLimited(message, code, float(after),
                           limit if isinstance(limit, str) else None)
    return _BY_CODE.get(code, MabeamError)(message, code)


def result_of(header: dict[str, Any], body: Any) -> Any:
    """A reply's result, or its error raised as the matching exception."""
    if header.get("status") == "ok":
        return body
    if isinstance(body, dict):
        raise error_for(str(body.get("code")), str(body.get("message")), body)
    raise MabeamError(f"malformed reply {header!r}")
