"""The console's pages as HTML, from plain data (what the read-only control ops answer and
what the feed keeps). Pure: no I/O; every value from outside is escaped here.

A page is a title and its sections: `{name: html}`. The page puts each in an element
`data-live="name"`; the live stream (app.py) sends the sections again when they change
and console.js swaps them in, so a page updates without a reload and without a client-side
template.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from mabeamd.console import svg

NAV = (("/console/", "Overview"), ("/console/agents", "Agents"),
       ("/console/sessions", "Sessions"), ("/console/markets", "Markets"),
       ("/console/variables", "Variables"))
MARKETS = {"continuous_double_auction", "call_market", "supply_demand", "english", "dutch",
           "fisher_market", "exchange_market"}
Sections = dict[str, str]


def cell(value: Any, limit: int = 120) -> str:
    """A value for a table cell, escaped: strings as they are, the rest as compact JSON;
    cut at `limit` characters."""
    if value is None:
        return '<span class="none">-</span>'
    return escape(text(value, limit))


def text(value: Any, limit: int = 120) -> str:
    """cell() without the escaping (for SVG labels, which svg.py escapes)."""
    if isinstance(value, str):
        out = value
    else:
        try:
            out = json.dumps(value, default=repr, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            out = repr(value)
    if len(out) > limit:
        out = out[:limit - 1] + "…"
    return out


def when(t: Any) -> str:
    """A wall-clock time, in UTC with its date (the daemon's clock, whatever the viewer's
    time zone)."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return cell(None)
    return (f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))}">'
            + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
            + f".{int(t * 1000) % 1000:03d} UTC</time>")


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return cell(None)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def table(cls: str, head: Sequence[str], rows: Iterable[Sequence[str]],
          empty: str = "none") -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        body = f'<tr class="empty"><td colspan="{len(head)}">{escape(empty)}</td></tr>'
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def session_link(sid: Any) -> str:
    return link(f"/console/sessions/{quote(str(sid), safe='')}", str(sid))


def layout(title: str, path: str, sections: Sections, order: Sequence[str],
           live: str | None) -> str:
    """The whole page. `live`: the path its live stream renders (None: a page that does
    not update)."""
    here = ' class="here"'
    nav = "".join(f'<a href="{h}"{here if h == path else ""}>{t}</a>' for h, t in NAV)
    main = "".join(f'<section data-live="{escape(n)}">{sections[n]}</section>'
                   for n in order if n in sections)
    stream = f' data-stream="{escape(live)}"' if live else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)} · mabeamd</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no /favicon.ico request
            '<link rel="stylesheet" href="/console/static/console.css">'
            '<script src="/console/static/console.js" defer></script></head>'
            f'<body{stream}><header><strong>mabeamd</strong><nav>{nav}</nav>'
            '<span id="live-state" class="live-state">static</span></header>'
            f"<main><h1>{escape(title)}</h1>{main}</main></body></html>")


# --- overview ---------------------------------------------------------------------------------

def overview(status: Mapping[str, Any], workers: Sequence[Mapping[str, Any]],
             agents: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]],
             sessions: Sequence[Mapping[str, Any]]) -> Sections:
    out: Sections = {}
    out["daemon"] = (f'<p class="summary">{cell(status.get("summary"), 400)}</p>'
                     f'<p>state <b data-field="state">{cell(status.get("state"))}</b> · '
                     f'ready <b data-field="ready">{cell(status.get("ready"))}</b> · '
                     f'uptime {cell(status.get("uptime"))} s · pid {cell(status.get("pid"))}'
                     "</p>")
    out["workers"] = "<h2>Workers</h2>" + table("workers", (
        "shard", "state", "pid", "CPU %", "RSS", "restarts", "variables"), (
        (str(w.get("index")), f'<span class="state {escape(str(w.get("state")))}">'
         f'{cell(w.get("state"))}</span>', cell(w.get("pid")), cell(w.get("cpu_percent")),
         size(w.get("rss")), cell(w.get("restarts")),
         cell((w.get("shard") or {}).get("variables"))) for w in workers))
    healthy = sum(1 for a in agents if a.get("status") == "healthy")
    caps: dict[str, int] = {}
    for a in agents:
        for c in a.get("capabilities") or ():
            caps[str(c)] = caps.get(str(c), 0) + 1
    out["agents"] = (f'<h2>Agents</h2><p><b data-field="agents">{len(agents)}</b> registered, '
                     f'<b data-field="healthy">{healthy}</b> healthy</p>' + table(
                         "capabilities", ("capability", "agents"),
                         ((escape(c), str(n)) for c, n in sorted(
                             caps.items(), key=lambda kv: (-kv[1], kv[0]))[:20])))
    last = samples[-1] if samples else {}
    rates: dict[str, list[float]] = {}
    for s in samples:
        for k in s.get("sessions") or {}:
            rates.setdefault(k, [0.0] * len(samples))
    for i, s in enumerate(samples):
        for k, v in (s.get("sessions") or {}).items():
            rates[k][i] = v
    running = sum(1 for s in sessions if s.get("state") not in svg_ended())
    out["sessions"] = (f'<h2>Sessions</h2><p><b data-field="running">{running}</b> running; '
                       "ended per second over the last 10 s:</p>" + table(
                           "session-rates", ("protocol and outcome", "per second", "last minute"),
                           ((escape(k), f"{v[-1]:.1f}", svg.spark(v, k))
                            for k, v in sorted(rates.items())), "no session ended lately"))
    ops = last.get("ops") or {}
    trend = [float(s.get("requests") or 0) for s in samples]
    out["requests"] = (f'<h2>Requests</h2><p><b data-field="requests">'
                       f'{last.get("requests", 0)}</b> in the last second '
                       f'{svg.spark(trend, "requests per second")}</p>' + table(
                           "ops", ("op", "per second", "p95 (bucket bound)"),
                           ((escape(op), str(o["rate"]), _ms(o.get("p95")))
                            for op, o in sorted(ops.items(), key=lambda kv: -kv[1]["rate"])),
                           "no requests in the last second"))
    return out


def svg_ended() -> tuple[str, ...]:
    return ("applied", "failed", "cancelled", "timed_out")


def _ms(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "&gt; 10 s" if seconds is None else cell(seconds)
    return f"≤ {seconds * 1000:g} ms"


# --- agents -----------------------------------------------------------------------------------

SESSIONS_SHOWN = 300  # rows of the sessions page
# A session's page: arrows drawn and participants listed. A browser here takes ~0.3 s for
# a 1,000-bidder auction's 2,002 arrows; a diagram that long says no more than 500 do.
MAX_DRAWN = 500
PARTICIPANTS_SHOWN = 200
AGENTS_PAGE = 200  # rows a page of agents shows (a browser lays out 1,000 in ~0.3 s here)


def seen(age: Any) -> str:
    """How long ago an agent was heard from, coarsely: an exact age would change the page
    on every render, and the live stream would send the whole list every time."""
    if not isinstance(age, (int, float)):
        return cell(None)
    if age < 10:
        return "just now"
    if age < 60:
        return "under a minute ago"
    return f"{int(age // 60)} min ago"


def agents_slice(agents: Sequence[Mapping[str, Any]], query: str, page: int,
                 ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], int, int]:
    """(the agents matching `query`, those on `page`, the page shown, pages)."""
    q = query.lower()

    def matches(a: Mapping[str, Any]) -> bool:
        text = " ".join([str(a.get("id")), *map(str, a.get("capabilities") or ()),
                         json.dumps(a.get("metadata") or {}, default=repr)]).lower()
        return q in text

    found = [a for a in agents if not q or matches(a)]
    pages_n = max(1, -(-len(found) // AGENTS_PAGE))
    page = min(max(0, page), pages_n - 1)
    return found, found[page * AGENTS_PAGE:(page + 1) * AGENTS_PAGE], page, pages_n


def agents_page(agents: Sequence[Mapping[str, Any]], taking_part: Mapping[str, list[str]],
                query: str, page: int = 0,
                endpoints: Mapping[str, str | None] | None = None) -> Sections:
    """`endpoints`: the agent endpoint each shown agent is connected through."""
    found, rows, page, pages_n = agents_slice(agents, query, page)
    q = query.lower()
    endpoints = endpoints or {}
    search = (f'<form class="search" method="get"><input type="search" name="q" '
              f'id="agent-search" placeholder="id, capability or metadata (Enter: all pages)"'
              f' value="{escape(query)}" autocomplete="off"></form>')

    def to(k: int, label: str) -> str:
        return link(f"/console/agents?q={quote(query)}&page={k}", label)
    nav = ""
    if pages_n > 1:
        nav = (f'<p class="pager">page {page + 1} of {pages_n} '
               + (to(page - 1, "previous") + " " if page else "")
               + (to(page + 1, "next") if page + 1 < pages_n else "") + "</p>")
    body = table("agents", ("id", "status", "capabilities", "metadata", "weight", "last seen",
                            "registered", "connected to", "taking part in"), (
        (escape(str(a.get("id"))), f'<span class="state {escape(str(a.get("status")))}">'
         f'{cell(a.get("status"))}</span>', cell(", ".join(map(str, a.get("capabilities") or ()))),
         cell(a.get("metadata")), cell(a.get("weight")),
         seen(a.get("last_seen_age")), when(a.get("registered_at")),
         cell(endpoints.get(str(a.get("id")))),
         " ".join(session_link(s) for s in taking_part.get(str(a.get("id")), [])[:5]) or
         cell(None)) for a in rows), "no agent matches" if q else "no agent registered")
    return {"search": search, "list": f'<p><b data-field="count">{len(rows)}</b> shown of '
                                      f'{len(found)} matching, {len(agents)} agents</p>'
                                      + nav + body}


# --- sessions ---------------------------------------------------------------------------------

def newest_first(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Running sessions, then the ended ones, most recently ended first (sessions.list
    gives the ended oldest first)."""
    ended = svg_ended()
    return [r for r in rows if r.get("state") not in ended] + \
        [r for r in rows if r.get("state") in ended][::-1]


def sessions_page(rows: Sequence[Mapping[str, Any]], state: str | None,
                  states: Sequence[str] = ()) -> Sections:
    states = ("", *states)
    pick = "".join(
        f'<a class="{"here" if (s or None) == state else ""}" '
        f'href="/console/sessions{"?state=" + s if s else ""}">{s or "all"}</a>'
        for s in states)
    note = (f"<p>The first {SESSIONS_SHOWN} of {len(rows)} (running first, then the most "
            "recently ended).</p>" if len(rows) > SESSIONS_SHOWN else "")
    shown = newest_first(rows)[:SESSIONS_SHOWN]
    return {"filter": f'<p class="filter">{pick}</p>', "list": note + table(
        "sessions", ("session", "protocol", "state", "initiator", "shard", "started", "reason"),
        ((session_link(r.get("session")), cell(r.get("protocol")),
          f'<span class="state {escape(str(r.get("state")))}">{cell(r.get("state"))}</span>',
          cell(r.get("initiator")), cell(r.get("shard")), when(r.get("created_at")),
          cell(r.get("reason"))) for r in shown), "no session")}


def messages(kept: Mapping[str, Any], show_answers: bool) -> tuple[list[str], list[svg.Message]]:
    """A kept session's lanes and messages, in time order: the start, each round's
    invitations and answers (an answer's value only with show_answers), the result."""
    initiator = str(kept.get("initiator"))
    participants = [str(p) for p in kept.get("participants") or ()]
    lanes = [initiator, "mabeamd", *[p for p in participants if p != initiator]]
    msgs = [svg.Message(0.0, initiator, "mabeamd", "start", "session.start")]
    for k, r in enumerate(kept.get("rounds") or ()):
        at = r.get("at") if isinstance(r.get("at"), (int, float)) else 0.0
        kind = str(r.get("kind"))
        msgs += [svg.Message(float(at), "mabeamd", str(a), "invite",
                             f"invite {kind} (round {k + 1})") for a in r.get("asked") or ()]
        for ans in r.get("answers") or ():
            label = f"answer {kind}"
            if show_answers:
                label += " " + text(ans.get("value"), 40)
            t = ans.get("at") if isinstance(ans.get("at"), (int, float)) else at
            msgs.append(svg.Message(float(t), str(ans.get("agent")), "mabeamd", "answer",
                                    label))
    end = kept.get("elapsed")
    msgs.append(svg.Message(float(end) if isinstance(end, (int, float)) else
                            max(m.at for m in msgs), "mabeamd", initiator, "result",
                            f"{kept.get('state')}"))
    msgs.sort(key=lambda m: m.at)  # stable: a round's invitations stay before its answers
    return lanes, msgs


def session_page(record: Mapping[str, Any], kept: Mapping[str, Any] | None,
                 market: Mapping[str, Any] | None, show_answers: bool) -> Sections:
    out: Sections = {}
    fields = [("protocol", record.get("protocol")), ("state", record.get("state")),
              ("initiator", record.get("initiator")), ("shard", record.get("shard")),
              ("round", record.get("round")), ("started", None), ("elapsed (s)",
                                                                   record.get("elapsed")),
              ("reason", record.get("reason"))]
    rows = [(escape(k), when(record.get("created_at")) if k == "started" else cell(v, 400))
            for k, v in fields]
    out["summary"] = table("session-summary", ("", ""), rows)
    out["params"] = "<h2>Parameters</h2>" + table(
        "params", ("name", "value"), ((escape(str(k)), cell(v, 400))
                                      for k, v in (record.get("params") or {}).items()))
    parts = record.get("participants") or (kept or {}).get("participants") or []
    waiting = set(record.get("waiting") or ())
    absent = set(record.get("absent") or ())
    ended = record.get("state") in svg_ended()
    answered = {str(a.get("agent")) for r in (kept or {}).get("rounds") or ()
                for a in r.get("answers") or ()}

    def now(p: Any) -> str:
        if p in absent:
            return "absent"
        if ended:
            return "answered" if p in answered else ("did not answer" if kept else "")
        return "waiting" if p in waiting else ""
    out["participants"] = f"<h2>Participants ({len(parts)})</h2>" + table(
        "participants", ("agent", "now"), ((escape(str(p)), now(p))
                                           for p in parts[:PARTICIPANTS_SHOWN])) + (
        f"<p>and {len(parts) - PARTICIPANTS_SHOWN} more.</p>"
        if len(parts) > PARTICIPANTS_SHOWN else "")
    if record.get("state") in svg_ended():
        writes = record.get("writes") or {}
        versions = (kept or {}).get("versions") or {}
        result = cell(record.get("result"), 4000)
        out["outcome"] = ("<h2>Outcome</h2>" + f'<pre class="result">{result}'
                          "</pre>" + table("writes", ("variable", "new value", "version"), (
                              (link(f"/console/variables/{quote(str(n), safe='')}", str(n)),
                               cell(v), cell(versions.get(n))) for n, v in writes.items()),
                              "no variable written"))
    else:
        out["outcome"] = (f'<h2>Outcome</h2><p>running: <b>{cell(record.get("answered"))}</b> '
                          f'answers so far; answers are shown once it has ended.</p>')
    if kept is not None:
        lanes, msgs = messages(kept, show_answers)
        cut = (kept.get("answers_cut") or 0) + max(0, len(msgs) - MAX_DRAWN)
        note = (f"<p>The first {MAX_DRAWN} in time order are drawn; {cut} later messages "
                "are not.</p>" if cut else "")
        rounds = table("rounds", ("round", "kind", "opened at (ms)", "asked", "answered"), (
            (str(k + 1), cell(r.get("kind")),
             f'{float(r.get("at") or 0) * 1000:.1f}' if isinstance(r.get("at"), (int, float))
             else cell(None), str(len(r.get("asked") or ())), str(len(r.get("answers") or ())))
            for k, r in enumerate(kept.get("rounds") or ())), "no round")
        out["diagram"] = (f'<h2>Rounds</h2>{rounds}'
                          f'<h2>Messages ({len(msgs) + (kept.get("answers_cut") or 0)})</h2>'
                          f'{note}<div class="scroll">'
                          + svg.sequence(lanes, msgs[:MAX_DRAWN],
                                         f"messages of {record.get('session')}")
                          + "</div>")
        if show_answers:
            every = [(k + 1, a) for k, r in enumerate(kept.get("rounds") or ())
                     for a in r.get("answers") or ()]
            more = (f"<p>and {len(every) - MAX_DRAWN} more.</p>"
                    if len(every) > MAX_DRAWN else "")
            out["answers"] = "<h2>Answers</h2>" + table("answers", (
                "round", "agent", "at (ms)", "answer"), (
                (str(k), escape(str(a.get("agent"))), f'{float(a.get("at") or 0) * 1000:.1f}',
                 cell(a.get("value"), 200)) for k, a in every[:MAX_DRAWN])) + more
    elif record.get("state") in svg_ended():
        out["diagram"] = ("<h2>Messages</h2><p>Not kept: the console keeps the messages of "
                          "the sessions that ended since it started, the last [console] "
                          "keep_sessions of them.</p>")
    else:
        out["diagram"] = ("<h2>Messages</h2><p>Drawn when the session ends (until then its "
                          "answers are private to it).</p>")
    if str(record.get("protocol")) in MARKETS:
        out["market"] = "<h2>Market</h2>" + market_charts(record, kept, market, show_answers)
    return out


# --- markets ----------------------------------------------------------------------------------

def _aggregate(kept: Mapping[str, Any] | None) -> tuple[list[list[float]], list[list[float]]]:
    """Demand and supply steps from a call market's or supply/demand session's answers."""
    demand: list[list[float]] = []
    supply: list[list[float]] = []
    for r in (kept or {}).get("rounds") or ():
        for a in r.get("answers") or ():
            v = a.get("value")
            if not isinstance(v, dict):
                continue
            # call market: {"orders": [{side, price, quantity}, ...]} or one order
            listed = v.get("orders")
            for o in listed if isinstance(listed, list) else ([v] if "side" in v else []):
                if isinstance(o, dict) and isinstance(o.get("price"), (int, float)):
                    side = demand if o.get("side") == "buy" else supply
                    side.append([float(o["price"]), float(o.get("quantity") or 1)])
            for key, side in (("demand", demand), ("supply", supply)):  # step curves
                steps = v.get(key)
                if isinstance(steps, list):
                    side += [[float(s[0]), float(s[1])] for s in steps
                             if isinstance(s, list) and len(s) == 2
                             and all(isinstance(x, (int, float)) for x in s)]
    return demand, supply


def market_charts(record: Mapping[str, Any], kept: Mapping[str, Any] | None,
                  market: Mapping[str, Any] | None, show_answers: bool) -> str:
    protocol = str(record.get("protocol"))
    result = record.get("result") if isinstance(record.get("result"), dict) else {}
    assert isinstance(result, dict)
    out = []
    if protocol == "continuous_double_auction":
        book = (market or {}).get("book") or result.get("book_at_close") or {}
        out.append(svg.depth(book.get("bids") or [], book.get("asks") or [],
                             "order book depth" + (" at close" if result else "")))
        trades = list((market or {}).get("trades") or ()) or list(result.get("trades") or ())
        start = record.get("created_at")
        t0 = float(start) if isinstance(start, (int, float)) else 0.0
        pts = [(float(t.get("time") or t0) - t0, float(t["price"])) for t in trades
               if isinstance(t.get("price"), (int, float))]
        out.append(svg.series(pts, "trades over time", "seconds since the start", "price",
                              kind="trades", labels=[f"{t.get('quantity')} at {t.get('price')}"
                                                     for t in trades]))
    elif protocol in ("call_market", "supply_demand"):
        if show_answers and kept is not None:
            demand, supply = _aggregate(kept)
            price = result.get("price")
            qty = result.get("quantity")
            out.append(svg.curves(demand, supply, price if isinstance(price, (int, float))
                                  else None, qty if isinstance(qty, (int, float)) else None))
        else:
            out.append("<p>The curves are drawn from the orders, which the console shows "
                       "only with [console] show_answers = true.</p>")
        out.append(table("clearing", ("price", "quantity"), [(cell(result.get("price")),
                                                              cell(result.get("quantity")))]))
    elif protocol in ("english", "dutch"):
        hist = [h for h in result.get("history") or () if isinstance(h, dict)]
        pts = [(float(h.get("round") or k + 1), float(h["price"])) for k, h in enumerate(hist)
               if isinstance(h.get("price"), (int, float))]
        labels = [f"round {h.get('round')}: {h.get('price')}, in: "
                  + ", ".join(map(str, h.get("active") or h.get("in") or ()))[:200]
                  for h in hist]
        out.append(svg.series(pts, "price per round", "round", "price", kind="rounds",
                              labels=labels))
        out.append(table("clock", ("round", "price", "still in"), (
            (cell(h.get("round")), cell(h.get("price")),
             cell(h.get("active") or h.get("in"))) for h in hist)))
    elif protocol in ("fisher_market", "exchange_market"):
        prices = result.get("prices")
        goods = result.get("goods") or [f"good {j}" for j in range(len(prices or []))]
        if isinstance(prices, dict):
            items = [(str(k), float(v)) for k, v in prices.items() if isinstance(v, (int, float))]
        elif isinstance(prices, list):
            items = [(str(g), float(p)) for g, p in zip(goods, prices, strict=False)
                     if isinstance(p, (int, float))]
        else:
            items = []
        out.append(svg.bars(items, "equilibrium prices", "price"))
        alloc = result.get("allocation") or result.get("allocations")
        if isinstance(alloc, dict):
            out.append(table("allocation", ("agent", "allocation"), (
                (escape(str(a)), cell(v, 300)) for a, v in alloc.items())))
        elif isinstance(alloc, list):
            out.append(table("allocation", ("buyer", "allocation"), (
                (str(i), cell(v, 300)) for i, v in enumerate(alloc))))
    return "".join(out) or "<p>Nothing to draw yet.</p>"


def markets_page(rows: Sequence[Mapping[str, Any]],
                 charts: Mapping[str, str]) -> Sections:
    mk = [r for r in rows if str(r.get("protocol")) in MARKETS]
    parts = []
    for r in mk[:20]:
        sid = str(r.get("session"))
        parts.append(f'<article class="market"><h2>{session_link(sid)} · '
                     f'{cell(r.get("protocol"))} · {cell(r.get("state"))}</h2>'
                     f'{charts.get(sid, "")}</article>')
    return {"list": "".join(parts) or "<p>No market or auction session running or kept.</p>"}


# --- variables --------------------------------------------------------------------------------

def variables_page(prefix: str, listing: Mapping[str, Any]) -> Sections:
    form = (f'<form class="search" method="get"><input type="search" name="prefix" '
            f'id="var-prefix" placeholder="name prefix" value="{escape(prefix)}"></form>')
    rows = listing.get("vars") or []
    more = listing.get("next")
    href = f"/console/variables?prefix={quote(prefix)}&after={quote(str(more))}"
    nxt = f"<p>{link(href, 'next page')}</p>" if more else ""
    return {"search": form, "list": table("variables", (
        "name", "version", "value", "type", "access", "modified by", "updated"), (
        (link(f"/console/variables/{quote(str(v.get('name')), safe='')}", str(v.get("name"))),
         cell(v.get("version")), cell(v.get("value")), cell(v.get("type")),
         cell(v.get("access")), cell(v.get("modified_by")), when(v.get("updated_at")))
        for v in rows), "no variable with this prefix") + nxt}


def variable_page(var: Mapping[str, Any], history: Mapping[str, Any]) -> Sections:
    past = [h for h in history.get("history") or () if isinstance(h, dict)]
    points = [(float(h.get("updated_at") or 0), int(h.get("version") or 0),
               text(h.get("value"), 80)) for h in past]
    points.append((float(var.get("updated_at") or 0), int(var.get("version") or 0),
                   text(var.get("value"), 80)))
    meta = table("variable", ("", ""), ((escape(k), when(var.get(k)) if k.endswith("_at")
                                         else cell(var.get(k), 400)) for k in (
        "name", "version", "value", "type", "access", "policy", "owner", "modified_by",
        "writers", "constraints", "created_at", "updated_at")))
    return {"variable": meta, "timeline": "<h2>History</h2>" + svg.timeline(points) + table(
        "history", ("version", "value", "by", "at"), (
            (cell(h.get("version")), cell(h.get("value"), 200), cell(h.get("modified_by")),
             when(h.get("updated_at"))) for h in reversed(past)), "no earlier version kept")}
