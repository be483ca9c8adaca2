"""The control server: a ROUTER on ipc for mabeamctl and other admin tools.

Transport only: it decodes requests, runs each in its own task (no global command lock: a
slow `workers restart` never holds up `status`), streams progress frames for long
operations, and sends exactly one final reply per request. What each op does lives in
the command modules (commands.py lists them). Replies that cannot be delivered (peer
gone, peer not reading) are counted, never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.net.zmqutil import bind_private, router
from mabeamd.observe.audit import AuditLog, AuditUnavailable
from mabeamd.observe.opstats import OK, OpStats

log = logging.getLogger(__name__)
CONTROL_RCVHWM = 16  # messages queued per connection (see ControlServer)

Progress = Callable[[str], Awaitable[None]]
Handler = Callable[[dict[str, Any], Progress], Awaitable[Any]]
# Result fields an audit record keeps of a change's reply (a variable's new version, ...):
# enough to say what it did, not a copy of every value.
AUDITED_RESULT = ("name", "version", "ok", "changed", "restart_required", "index", "state",
                  "dir", "session", "accepted")


class ControlServer:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        path: Path,
        handlers: Mapping[str, Handler],
        max_message: int,
        *,
        audit: AuditLog | None = None,
        changes: frozenset[str] = frozenset(),
    ) -> None:
        self.audit = audit
        self.changes = changes
        self.path = path
        self.handlers = handlers
        self.max_message = max_message
        # A short receive queue: libzmq queues up to this many messages of up to
        # max_message bytes per connection, so it is what bounds the memory a client
        # flooding the admin socket can make the daemon hold (1000 x 1 MiB once took it
        # past 1 GiB). mabeamctl sends one request at a time; a flood waits in its sender.
        self.sock = router(ctx, sndhwm=1000, rcvhwm=CONTROL_RCVHWM, linger=1000)
        # Oversized requests cut the connection inside libzmq, before we allocate them.
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message + 4096)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"requests": 0, "errors": 0, "undeliverable": 0, "malformed": 0}
        self.ops = OpStats(handlers)  # by op and code, with latency (metrics)

    def bind(self, group: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bind_private(self.sock, self.path, 0o600)
        self.apply_group(group)

    def apply_group(self, group: str) -> None:
        """0600 for the owner alone, or 0660 with the given group (reloadable)."""
        if group:
            os.chown(self.path, -1, grp.getgrnam(group).gr_gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

    async def run(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            # DEALER peers send [routing id, proto, header, body]; a REQ peer adds an empty
            # delimiter, which we keep in the envelope so its reply is routed back.
            n = 2 if len(frames) > 1 and frames[1] == b"" else 1
            envelope, payload = frames[:n], frames[n:]
            self.stats["requests"] += 1
            task = asyncio.create_task(self._handle(envelope, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, envelope: list[bytes], payload: list[bytes]) -> None:
        t0 = time.perf_counter()
        rid: int | str | None = None
        op: str | None = None
        code = OK
        try:
            rid, op, body = wire.parse_request(payload, self.max_message)
            handler = wire.handler_for(self.handlers, op)

            async def progress(message: str, _rid: int | str = rid) -> None:
                await self._send(envelope, wire.reply_progress(_rid, message))

            if op in self.changes and self.audit is not None:
                result = await self._audited(op, body, handler, progress)
            else:
                result = await handler(body, progress)
            await self._send(envelope, wire.reply_ok(rid, result))
        except WireError as exc:
            self.stats["errors"] += 1
            code = exc.code
            if exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION,
                            ErrorCode.TOO_LARGE):
                self.stats["malformed"] += 1
            rid = rid if rid is not None else exc.request_id
            await self._send(envelope, wire.reply_error(rid, exc.code, exc.message,
                                                        exc.details))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats["errors"] += 1
            code = ErrorCode.INTERNAL
            await self._send(envelope, wire.reply_incident(
                rid, log, f"control: request {rid!r} failed", exc))
        self.ops.observe(op, code, time.perf_counter() - t0)

    async def _audited(self, op: str, body: dict[str, Any], handler: Handler,
                       progress: Progress) -> Any:
        """Run a change with its audit record: refused up front when the log cannot be
        written and on_failure is "refuse"; the record (with how it ended) is on disk
        before the reply leaves, so what an admin was told happened is in the log."""
        assert self.audit is not None
        try:
            await self.audit.ensure()
        except AuditUnavailable as exc:
            raise WireError(ErrorCode.STORAGE_ERROR, f"audit log unavailable, so {op} is "
                            f"refused ([audit] on_failure = refuse): {exc}",
                            details={"reason": "audit_unavailable"}) from None
        record: dict[str, Any] = {"op": op, "args": body}
        try:
            result = await handler(body, progress)
        except WireError as exc:
            record.update(ok=False, error={"code": exc.code, "message": exc.message})
            await self._record(record)
            raise
        except Exception as exc:
            record.update(ok=False, error={"code": ErrorCode.INTERNAL, "message": repr(exc)})
            await self._record(record)
            raise
        record["ok"] = True
        shown = wire.unpack(result) if isinstance(result, wire.Packed) else result
        if isinstance(shown, dict):
            record["result"] = {k: shown[k] for k in AUDITED_RESULT if k in shown}
        await self._record(record)
        return result

    async def _record(self, record: dict[str, Any]) -> None:
        assert self.audit is not None
        fut = self.audit.submit("control", record, wait=True)
        if fut is not None:
            with contextlib.suppress(AuditUnavailable):  # counted and logged by the writer
                await fut

    async def _send(self, envelope: list[bytes], frames: list[bytes]) -> None:
        try:
            await self.sock.send_multipart(envelope + frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client left; EAGAIN: it stopped reading (HWM reached).
            self.stats["undeliverable"] += 1
            log.debug("control: reply undeliverable: %s", exc)

    async def drain(self, timeout: float) -> None:
        """Let in-flight requests finish (e.g. the reply to `stop`), up to `timeout`."""
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.sock.close(linger=500)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
