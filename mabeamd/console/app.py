"""The console's routes: which page a GET names, the data it reads, and its live stream.

Read-only by construction: the console is given the *read-only* control ops only (those
marked `changes=False`: status, workers, agents.list, sessions.list and .show, vars.list,
.get and .history) and calls nothing else of the daemon, so no request to it can change
anything. It serves GET and HEAD; the monitor listener (observe/http.py) refuses the rest.

Who can see what: anyone who can reach the `[metrics] listen` address -- loopback unless
the operator chose otherwise, as for /metrics -- sees what an agent connected without
credentials can already read (the agents as `discover` lists them, every variable, every
session's record as `session.get` answers it), plus the shape of each ended session's
messages (who was asked and who answered when). Answers' contents (bids, votes, orders)
only with `[console] show_answers = true`, and only after the session has ended.
Credentials, tokens and connection ids are never shown. docs/console.md says the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from html import escape
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from mabeamd.console import pages
from mabeamd.console.feed import Feed
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError

log = logging.getLogger(__name__)

Op = Callable[[dict[str, Any]], Awaitable[Any]]
STATIC = {"console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}
HEADERS = {
    # No inline script: console.js is the page's only code. Charts are inline SVG with
    # presentation attributes, hence 'unsafe-inline' for styles alone.
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_QUERY = 256  # characters of a search, prefix or session id
HEARTBEAT = 15.0  # seconds between comments on an idle live stream (proxies, dead peers)
# Every state a session is listed in (sessions/service.py Entry, sessions/engine.py).
SESSION_STATES = ("starting", "created", "queued", "collecting", "deciding", "escalated",
                  "applied", "failed", "cancelled", "timed_out")


class Reply(NamedTuple):
    status: int
    ctype: str
    body: bytes


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _static(name: str) -> bytes:
    return (resources.files("mabeamd.console") / "static" / name).read_bytes()


class Console:
    def __init__(self, ops: Mapping[str, Op], feed: Feed, show_answers: bool) -> None:
        self.ops = ops
        self.feed = feed
        self.show_answers = show_answers
        self.static = {name: _static(name) for name in STATIC}
        self.stats = {"pages": 0, "streams": 0, "updates": 0, "refused": 0}

    # --- requests --------------------------------------------------------------------------

    async def page(self, target: str) -> Reply:
        """The reply to GET `target` (a path under /console, with its query)."""
        url = urlsplit(target)
        path = url.path
        if path.startswith("/console/static/"):
            name = path[len("/console/static/"):]
            if name not in STATIC:
                return self._error(404, "no such file")
            return Reply(200, STATIC[name], self.static[name])
        try:
            query = self._query(url.query)
            title, sections, order, live = await self.render(path, query)
        except Refused as exc:
            self.stats["refused"] += 1
            return self._error(exc.status, str(exc))
        self.stats["pages"] += 1
        here = path if path != "/console" else "/console/"
        nav = next((h for h, _ in pages.NAV[1:] if here.startswith(h)), "/console/") \
            if here != "/console/" else here
        html = pages.layout(title, nav, sections, order, target if live else None)
        return Reply(200, "text/html; charset=utf-8", html.encode())

    def _error(self, status: int, message: str) -> Reply:
        html = pages.layout({400: "Bad request", 404: "Not found"}.get(status, "Error"),
                            "", {"error": f'<p class="error">{escape(message)}</p>'},
                            ["error"], None)
        return Reply(status, "text/html; charset=utf-8", html.encode())

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        try:
            q = parse_qs(text, strict_parsing=False, max_num_fields=8)
        except ValueError:
            raise Refused(400, "too many query fields") from None
        out = {}
        for k, v in q.items():
            if len(v[-1]) > MAX_QUERY:
                raise Refused(400, f"{k} is longer than {MAX_QUERY} characters")
            out[k] = v[-1]
        return out

    async def _op(self, op: str, body: dict[str, Any]) -> Any:
        try:
            result = await self.ops[op](body)
            # A variable comes as its segment record's bytes (wire.Packed), sent as is to
            # agents; a page needs the map.
            return wire.unpack(result, 1 << 30) if isinstance(result, bytes) else result
        except WireError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise Refused(404, exc.message) from None
            if exc.code == ErrorCode.BAD_REQUEST:
                raise Refused(400, exc.message) from None
            raise

    async def render(self, path: str, q: dict[str, str],
                     ) -> tuple[str, pages.Sections, list[str], bool]:
        """(title, sections, their order, live) of the page at `path`; raises Refused."""
        if path in ("/console", "/console/"):
            status, workers, agents, sessions = await asyncio.gather(
                self._op("status", {}), self._op("workers", {}), self._op("agents.list", {}),
                self._op("sessions.list", {}))
            sections = pages.overview(status, workers["workers"], agents["agents"],
                                      list(self.feed.samples), sessions)
            return "Overview", sections, ["daemon", "workers", "agents", "sessions",
                                          "requests"], True
        if path == "/console/agents":
            agents = await self._op("agents.list", {})
            page = q.get("page", "0")
            if not page.isdigit():
                raise Refused(400, "page must be a number")
            shown = pages.agents_slice(agents["agents"], q.get("q", ""), int(page))[1]
            endpoints = dict(await asyncio.gather(*(self._endpoint(str(a.get("id")))
                                                    for a in shown)))
            return "Agents", pages.agents_page(agents["agents"], self.feed.taking_part(),
                                               q.get("q", ""), int(page), endpoints), \
                ["search", "list"], True
        if path == "/console/sessions":
            state = q.get("state") or None
            if state is not None and state not in SESSION_STATES:
                raise Refused(400, f"no session state {state!r}")
            rows = await self._op("sessions.list", {"state": state} if state else {})
            return "Sessions", pages.sessions_page(rows, state, SESSION_STATES), \
                ["filter", "list"], True
        if path.startswith("/console/sessions/"):
            sid = self._name(path, "/console/sessions/")
            record = await self._op("sessions.show", {"session": sid})
            kept = self.feed.sessions.get(sid)
            return (f"Session {sid}", pages.session_page(
                record, kept, self.feed.markets.get(sid), self.show_answers),
                ["summary", "outcome", "diagram", "market", "answers", "params",
                 "participants"], True)
        if path == "/console/markets":
            rows = pages.newest_first([r for r in await self._op("sessions.list", {})
                                       if str(r.get("protocol")) in pages.MARKETS])[:20]
            charts = {}
            for r in rows:
                sid = str(r.get("session"))
                try:
                    record = await self._op("sessions.show", {"session": sid})
                except Refused:  # ended and forgotten between the list and now
                    continue
                charts[sid] = pages.market_charts(record, self.feed.sessions.get(sid),
                                                  self.feed.markets.get(sid),
                                                  self.show_answers)
            return "Markets and auctions", pages.markets_page(rows, charts), ["list"], True
        if path == "/console/variables":
            prefix, after = q.get("prefix", ""), q.get("after", "")
            listing = await self._op("vars.list", {"prefix": prefix, "after": after,
                                                   "limit": 100})
            return "Variables", pages.variables_page(prefix, listing), ["search", "list"], \
                False
        if path.startswith("/console/variables/"):
            name = self._name(path, "/console/variables/")
            var, history = await asyncio.gather(self._op("vars.get", {"name": name}),
                                                self._op("vars.history", {"name": name}))
            return f"Variable {name}", pages.variable_page(var, history), \
                ["variable", "timeline"], True
        raise Refused(404, f"no console page {path}")

    async def _endpoint(self, agent: str) -> tuple[str, str | None]:
        """The agent endpoint an agent is connected through (not its connection's id)."""
        try:
            shown = await self._op("agents.show", {"agent": agent})
        except Refused:  # gone since the list
            return agent, None
        conn = shown.get("connection") if isinstance(shown, dict) else None
        return agent, conn.get("endpoint") if isinstance(conn, dict) else None

    @staticmethod
    def _name(path: str, prefix: str) -> str:
        try:
            name = unquote(path[len(prefix):], errors="strict")
        except UnicodeDecodeError:
            raise Refused(400, "a name is UTF-8, percent-encoded") from None
        if not name or len(name) > MAX_QUERY or re.search(r"[\x00-\x1f]", name):
            raise Refused(400, "a name of 1-256 characters, no control characters")
        return name

    # --- the live stream -------------------------------------------------------------------

    async def live(self, target: str, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Server-sent events for the page `target` names (`/console/live?page=PATH`):
        each time the feed changes (at most 5 times a second), the page's sections whose
        HTML changed, as `event: section` with data {"name", "html"}. Ends when the client
        goes (write raises) or the page stops existing."""
        url = urlsplit(target)
        page = self._query(url.query).get("page", "/console/")
        inner = urlsplit(page)
        if not inner.path.startswith("/console"):
            raise Refused(400, "page must be a console path")
        self.stats["streams"] += 1
        sent: dict[str, str] = {}
        await write(b"retry: 2000\n\n")
        while True:
            try:
                _, sections, _, _ = await self.render(inner.path, self._query(inner.query))
            except Refused as exc:
                await write(_event("gone", {"status": exc.status, "message": str(exc)}))
                return
            changed = {n: h for n, h in sections.items() if sent.get(n) != h}
            for name, html in changed.items():
                await write(_event("section", {"name": name, "html": html}))
                self.stats["updates"] += 1
            sent.update(changed)
            if not await self.feed.changed(HEARTBEAT):
                await write(b": idle\n\n")  # finds a client that went, keeps proxies open


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
