"""The monitoring listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (ready),
and with `[console] enabled` the web console under `/console` (mabeamd/console/).

It runs on the arbiter's event loop (asyncio.start_server), not in prometheus_client's
threaded HTTP server: the collector reads the arbiter's live state (registries, watchers,
counters), which only the loop may touch without locks; a scrape costs one short callback
on the loop, like any control request. HTTP here is the minimum a scraper, a load
balancer's probe and curl need: GET (and HEAD) of three paths, HTTP/1.0-style one request
per connection. Anything else is refused with the right status; a request head over 8 KiB
or slower than 5 s is dropped (a head over 8 KiB answered 431), and at most MAX_CLIENTS
connections are served at once, so a misbehaving client cannot grow the arbiter. When all
are taken, the oldest still sending its request head is dropped for the new one (a
slowloris cannot lock out /metrics and /readyz: a real request sends its head at once),
and only when every place is a request being answered is the new one told 503.

The console's live streams (server-sent events) are long-lived responses, counted apart:
at most MAX_STREAMS at once, each ended when its client goes, or once its kernel buffers
are full (a send buffer of STREAM_BUFFER bytes) and stay full for READ_TIMEOUT: a client
that stops reading is let go after tens of seconds at a page's update rate.

`/readyz` answers 200 when the daemon is running, every worker serves its shard and no
shard's disk refuses writes; otherwise 503, with a JSON body whose `reasons` say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mabeamd.console.app import HEADERS, Console, Refused, Reply

log = logging.getLogger(__name__)

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CLIENTS = 32
MAX_STREAMS = 8  # console live streams at once (each renders its page on every change)
STREAM_BUFFER = 16384  # a live stream's socket send buffer: what may wait unread in the kernel
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: "
               b"no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}

# () -> (ready, reasons, state): what /readyz reports.
Readiness = Callable[[], tuple[bool, list[str], str]]


def split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[V6]:PORT`) -> (host, port); config.py validates the text."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class MonitorServer:
    def __init__(self, listen: str, registry: CollectorRegistry, readiness: Readiness,
                 console: Console | None = None) -> None:
        self.listen = listen
        self.registry = registry
        self.readiness = readiness
        self.console = console
        self.streams = 0
        self.server: asyncio.Server | None = None
        self.error: str | None = None  # why it is not listening, for status
        self.stats = {"requests": 0, "scrapes": 0, "refused": 0, "evicted": 0}
        self._clients: set[asyncio.Task[Any]] = set()
        # Connections still sending their request head, oldest first: the ones given up
        # when every place is taken (a slow client must not lock out /metrics and /readyz).
        self._reading: dict[asyncio.Task[Any], None] = {}

    async def start(self) -> bool:
        """Listen; False (logged, and kept in `error`) when the address cannot be had: the
        daemon serves on without metrics rather than refusing to start for them."""
        host, port = split_listen(self.listen)
        try:
            self.server = await asyncio.start_server(self._client, host, port,
                                                     reuse_address=True, limit=MAX_HEAD)
        except OSError as exc:
            self.error = f"cannot listen on {self.listen}: {exc.strerror or exc}"
            log.error("[metrics] listen: %s; serving without metrics and health checks",
                      self.error)
            return False
        log.info("metrics and health checks on http://%s/metrics", self.listen)
        if self.console is not None:
            log.info("web console on http://%s/console/", self.listen)
        return True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) - self.streams >= MAX_CLIENTS and not self._evict():
            # Every place is taken by a request being answered: say so, do not hang up.
            self.stats["refused"] += 1
            _respond(writer, 503, "text/plain", b"too many connections\n", False)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._clients.add(task)
        self._reading[task] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.LimitOverrunError, ValueError):
                _respond(writer, 431, "text/plain", b"request head over 8 KiB\n", False)
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
                return
            finally:
                self._reading.pop(task, None)
            self.stats["requests"] += 1
            target = self._console_target(head)
            if target is not None:
                await self._console(target, head.startswith(b"HEAD "), reader, writer)
                return
            status, ctype, body, head_only = self._answer(head)
            _respond(writer, status, ctype, body, head_only)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            pass  # a client that went, stalled or sent junk: nothing to answer it
        finally:
            self._clients.discard(task)
            writer.close()

    def _evict(self) -> bool:
        """Make a place by dropping the oldest connection still sending its request head;
        False when every place is a request being answered."""
        for task in self._reading:
            del self._reading[task]
            task.cancel()
            self._clients.discard(task)
            self.stats["evicted"] += 1
            return True
        return False

    def _console_target(self, head: bytes) -> str | None:
        """The target of a GET or HEAD under /console when the console is on, else None."""
        if self.console is None:
            return None
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            return None
        path = parts[1].split("?", 1)[0]
        return parts[1] if path == "/console" or path.startswith("/console/") else None

    async def _console(self, target: str, head_only: bool, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        console = self.console
        assert console is not None
        if target.split("?", 1)[0] == "/console/live":
            if head_only:  # the stream's headers, no body
                writer.write(STREAM_HEAD)
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
                return
            await self._stream(target, reader, writer)
            return
        try:
            reply = await console.page(target)
        except Exception as exc:  # a bug in a page must not take the listener down
            log.exception("console: %s failed", target)
            reply = Reply(500, "text/plain; charset=utf-8", f"console error: {exc!r}\n".encode())
        _respond(writer, reply.status, reply.ctype, reply.body, head_only, extra=HEADERS)
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)

    async def _stream(self, target: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        console = self.console
        assert console is not None
        if self.streams >= MAX_STREAMS:
            self.stats["refused"] += 1
            _respond(writer, 503, "text/plain", b"too many live streams\n", False)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
            return
        self.streams += 1
        try:
            # Little buffering between us and a client that stops reading: once this much
            # waits unread, drain() blocks, and READ_TIMEOUT later the stream ends (with the
            # kernel's default buffers that took minutes at a page's update rate).
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
            writer.transport.set_write_buffer_limits(high=0)  # drain() waits on any backlog
            writer.write(STREAM_HEAD)

            async def write(data: bytes) -> None:
                writer.write(data)
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)

            # The client sends nothing after its request: EOF (or anything) on the reader
            # means it went, and its place is freed now, not at the next heartbeat.
            live = asyncio.ensure_future(console.live(target, write))
            gone = asyncio.ensure_future(reader.read(1))
            try:
                await asyncio.wait({live, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (live, gone):
                    task.cancel()
                # Collected, so a task ended by a client's going logs nothing.
                await asyncio.gather(live, gone, return_exceptions=True)
            if live.cancelled():
                return
            exc = live.exception()
            if isinstance(exc, Refused):
                with contextlib.suppress(Exception):
                    await write(f"event: gone\ndata: {json.dumps(str(exc))}\n\n".encode())
            elif exc is not None and not _gone(exc):
                log.error("console: live stream %s failed", target, exc_info=exc)
        finally:
            self.streams -= 1

    def _answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, HEAD) for one request head."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        console = self.console is not None and (path == "/console"
                                                or path.startswith("/console/"))
        if path not in ("/metrics", "/healthz", "/readyz") and not console:
            also = " or /console/" if self.console is not None else ""
            return 404, "text/plain", f"not found: try /metrics, /healthz, /readyz{also}\n" \
                .encode(), False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        if path == "/metrics":
            self.stats["scrapes"] += 1
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry), head_only
        if path == "/healthz":
            return 200, "application/json", b'{"alive": true}\n', head_only
        ready, reasons, state = self.readiness()
        body = json.dumps({"ready": ready, "state": state, "reasons": reasons}).encode()
        return (200 if ready else 503), "application/json", body + b"\n", head_only


def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
             head_only: bool, *, extra: dict[str, str] | None = None) -> None:
    more = "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
    writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: "
                 f"{ctype}\r\nContent-Length: {len(body)}\r\n{more}Connection: close\r\n"
                 "\r\n".encode())
    if not head_only:
        writer.write(body)


def _gone(exc: BaseException) -> bool:
    """Whether a live stream's error is its client going (a reset, a closed transport, a
    client that stopped reading), not a fault."""
    return isinstance(exc, (ConnectionError, asyncio.TimeoutError)) or (
        isinstance(exc, RuntimeError) and "closed" in str(exc))
