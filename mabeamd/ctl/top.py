"""`mabeamctl top`: a live view of the daemon, refreshed until q or Ctrl-C.

Each refresh asks the control socket for `status` and `workers` (two small requests; the
arbiter answers them from counters it keeps anyway) and shows rates as the differences of
those counters between two refreshes: writes per shard (the WAL's record count), one-hop
requests per shard, agent and control requests, events, and sessions started and ended per
protocol. Workers report their counters with each heartbeat, so a rate is as fresh as the
last heartbeat ([workers] heartbeat_interval).

The screen is drawn with rich (tables that fit the terminal's width, an alternate screen
that is given back on exit); `--once` prints one frame, rates over --interval, for scripts
and for stdout that is not a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from mabeamd.ctl import render
from mabeamd.ctl.client import ControlClient
from mabeamd.ctl.usage import UsageError

END_STATES = ("applied", "failed", "cancelled", "timed_out")


def _rate(now: Any, before: Any, dt: float) -> float | None:
    """Per second, or None when there is nothing to compare (first sample, a counter that
    went back because its process restarted)."""
    if not isinstance(now, (int, float)) or not isinstance(before, (int, float)) or dt <= 0:
        return None
    if now < before:
        return None
    return (now - before) / dt


class Sample:
    """One reading of the daemon's counters."""

    def __init__(self, status: dict[str, Any], workers: list[dict[str, Any]]) -> None:
        self.at = time.monotonic()
        self.status = status
        self.workers = {w["index"]: w for w in workers}


def take(c: ControlClient) -> Sample:
    return Sample(c.call("status"), c.call("workers")["workers"])


def _counter(w: dict[str, Any] | None, group: str, key: str) -> Any:
    return ((w or {}).get(group) or {}).get(key)


def frame(now: Sample, before: Sample | None, shards: int = 5) -> dict[str, Any]:
    """What one screen shows (and `--once --json` prints): counters now, rates since
    `before`."""
    dt = now.at - before.at if before is not None else 0.0
    s, b = now.status, (before.status if before else {})
    workers = []
    for i, w in sorted(now.workers.items()):
        old = before.workers.get(i) if before else None
        same = old is not None and old.get("pid") == w.get("pid")  # else: restarted
        workers.append({
            "index": i, "state": w.get("state"), "pid": w.get("pid"),
            "cpu_percent": w.get("cpu_percent"), "rss": w.get("rss"),
            "restarts": w.get("restarts"),
            "variables": _counter(w, "shard", "variables"),
            "bytes": _counter(w, "shard", "bytes"),
            "segment_fill": _counter(w, "shard", "segment_fill"),
            # The WAL's record count survives a restart (it is the last sequence number),
            # the endpoint's request count does not.
            "writes_per_s": _rate(_counter(w, "shard", "wal_records"),
                                  _counter(old, "shard", "wal_records"), dt),
            "direct_per_s": _rate(_counter(w, "shard_traffic", "requests"),
                                  _counter(old, "shard_traffic", "requests"), dt)
            if same else None,
        })
    protocols = []
    now_p = (s.get("sessions") or {}).get("by_protocol") or {}
    old_p = (b.get("sessions") or {}).get("by_protocol") or {}
    for name in sorted(now_p):
        n, o = now_p[name], old_p.get(name, {}) if before else {}
        ended = sum(n.get(k, 0) for k in END_STATES)
        protocols.append({
            "protocol": name, **{k: n.get(k, 0) for k in ("started", *END_STATES)},
            "started_per_s": _rate(n.get("started", 0), o.get("started", 0), dt),
            "ended_per_s": _rate(ended, sum(o.get(k, 0) for k in END_STATES), dt),
        })
    busy = sorted(workers, key=lambda w: -((w["writes_per_s"] or 0) + (w["direct_per_s"] or 0)))
    agents = s.get("agents") or {}
    return {
        "daemon": {k: s.get(k) for k in ("pid", "version", "state", "summary", "uptime")},
        "interval": round(dt, 3) if before else None,
        "workers": workers,
        "agents": {k: agents.get(k, 0) for k in ("total", "healthy", "unhealthy")},
        "rates": {
            "agent_requests_per_s": _rate(_counter(s, "agent_traffic", "requests"),
                                          _counter(b, "agent_traffic", "requests"), dt),
            "control_requests_per_s": _rate(_counter(s, "control", "requests"),
                                            _counter(b, "control", "requests"), dt),
            "events_per_s": _rate(s.get("events_published"), b.get("events_published"), dt),
        },
        "sessions": {"running": (s.get("sessions") or {}).get("running", 0),
                     "by_protocol": protocols},
        "busiest_shards": [w["index"] for w in busy[:shards]],
    }


def _r(x: float | None) -> str:
    return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def renderable(f: dict[str, Any], interval: float, live: bool) -> Any:
    """The frame as rich tables."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = f["daemon"]
    head = Text.assemble(
        (f"mabeamd {d['version']} ", "bold"), f"pid {d['pid']} {d['state']}: {d['summary']}, "
        f"up {render.duration(d['uptime'])}",
        f"   (every {interval:g}s{'; q quits' if live else ''})")
    a, r = f["agents"], f["rates"]
    summary = Text(f"agents {a['total']}: {a['healthy']} healthy, {a['unhealthy']} unhealthy"
                   f"   requests/s: agents {_r(r['agent_requests_per_s'])}, control "
                   f"{_r(r['control_requests_per_s'])}   events/s "
                   f"{_r(r['events_per_s'])}   sessions running {f['sessions']['running']}")
    wt = Table("WORKER", "STATE", "PID", "CPU%", "RSS", "WRITES/s", "DIRECT/s", "RESTARTS",
               box=box.SIMPLE_HEAD, show_edge=False, title="workers", title_justify="left")
    for w in f["workers"]:
        state = w["state"] or "-"
        wt.add_row(str(w["index"]), Text(state, "red" if state == "failed" else
                                         "green" if state == "running" else "yellow"),
                   render.cell(w["pid"]), render.cell(w["cpu_percent"]), render.size(w["rss"]),
                   _r(w["writes_per_s"]), _r(w["direct_per_s"]), render.cell(w["restarts"]))
    st = Table("PROTOCOL", "STARTED/s", "ENDED/s", "STARTED", "APPLIED", "FAILED",
               "CANCELLED", "TIMED_OUT", box=box.SIMPLE_HEAD, show_edge=False, title="sessions",
               title_justify="left")
    for p in f["sessions"]["by_protocol"]:
        st.add_row(p["protocol"], _r(p["started_per_s"]), _r(p["ended_per_s"]),
                   *(str(p[k]) for k in ("started", *END_STATES)))
    if not f["sessions"]["by_protocol"]:
        st.add_row("(none yet)", *[""] * 7)
    by_index = {w["index"]: w for w in f["workers"]}
    sh = Table("SHARD", "WRITES/s", "DIRECT/s", "VARIABLES", "BYTES", "SEGMENT", "STATE",
               box=box.SIMPLE_HEAD, show_edge=False, title="busiest shards", title_justify="left")
    for i in f["busiest_shards"]:
        w = by_index[i]
        fill = w["segment_fill"]
        sh.add_row(str(i), _r(w["writes_per_s"]), _r(w["direct_per_s"]),
                   render.cell(w["variables"]), render.size(w["bytes"]),
                   "-" if fill is None else f"{fill:.1%}", w["state"] or "-")
    return Group(head, summary, wt, st, sh)


@contextlib.contextmanager
def _keys(fd: int) -> Iterator[bool]:
    """Single keys from the terminal on `fd` (cbreak: no Enter needed, Ctrl-C still a
    signal), and its settings back however we leave. Yields whether keys can be read."""
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd: int | None, seconds: float) -> str:
    """The key pressed within `seconds`, or '' when none was."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        if fd is None:
            time.sleep(left)
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 32)
            if not data:  # the terminal went away: stop reading it, keep refreshing
                fd = None
                continue
            return data.decode(errors="replace")


def cmd_top(c: ControlClient, args: argparse.Namespace) -> int:
    interval: float = args.interval
    if args.once or getattr(args, "json", False):
        first = take(c)
        time.sleep(interval)  # rates need two readings
        f = frame(take(c), first, args.shards)
        if getattr(args, "json", False):
            print(json.dumps(f, indent=2, sort_keys=True))
        else:
            from rich.console import Console

            Console(width=None if sys.stdout.isatty() else 120).print(
                renderable(f, interval, live=False))
        return 0
    if not sys.stdout.isatty():
        raise UsageError("top draws on a terminal and stdout is not one; use `top --once` "
                         "(one frame), `top --once --json`, or `status`/`workers --json`")
    return _live(c, args, interval)


def _live(c: ControlClient, args: argparse.Namespace, interval: float) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    stdin = sys.stdin.fileno() if sys.stdin is not None else -1
    before = take(c)
    try:
        with _keys(stdin) as can_read, Live(
                renderable(frame(before, None, args.shards), interval, live=True),
                console=console, screen=True, auto_refresh=False) as live:
            while True:
                key = _wait_key(stdin if can_read else None, interval)
                if key[:1] in ("q", "Q"):
                    break  # any other key refreshes at once
                now = take(c)
                live.update(renderable(frame(now, before, args.shards), interval, live=True),
                            refresh=True)
                before = now
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit, like q; Live and _keys have restored the terminal
    return 0
