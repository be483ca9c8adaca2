"""`mabeamctl events [TOPIC ...]` and `mabeamctl vars watch`: tail the event endpoint.

The endpoint is the one the daemon reports in `status`, so the operator names nothing but
the topics. Missed events are found from the sequence numbers every event carries
(agents/events.py): `seq` counts every event, `family_seq` those of one topic family
(`agent`, `var`, ...). A gap in a counter whose events we all subscribe to is events
ZeroMQ dropped for us (we fell [events] hwm behind); a gap in a counter we see only part
of is other topics' events, so it is never reported as missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.auth

from mabeamd.ctl import render
from mabeamd.ctl.client import ControlClient, Unavailable
from mabeamd.ctl.usage import NoInput, UsageError

EX_TEMPFAIL = 75
MAX_EVENT = 1 << 30  # an event carries a variable's value: up to [variables] max_value


class Gaps:
    """Which counters a subscription sees whole, and the gaps in them."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.everything = not topics or "" in topics
        self.prefixes = list(topics)
        self.last_seq: int | None = None
        self.last_family: dict[str, int] = {}

    def whole_family(self, family: str) -> bool:
        # A prefix that is a prefix of "agent." receives every agent.* event.
        return any(f"{family}.".startswith(p) for p in self.prefixes)

    def check(self, topic: str, body: dict[str, Any]) -> tuple[int, str] | None:
        """(missed, counter) when this event shows that events were missed, (-1, counter)
        when the counter went back (the daemon restarted), else None."""
        if self.everything:
            seq = body.get("seq")
            if not isinstance(seq, int):
                return None
            last, self.last_seq = self.last_seq, seq
            return _gap(last, seq, "all topics")
        family = topic.partition(".")[0]
        fseq = body.get("family_seq")
        if not isinstance(fseq, int) or not self.whole_family(family):
            return None
        last = self.last_family.get(family)
        self.last_family[family] = fseq
        return _gap(last, fseq, f"{family}.*")


def _gap(last: int | None, seq: int, what: str) -> tuple[int, str] | None:
    if last is None or seq == last + 1:
        return None
    if seq <= last:
        return (-1, what)
    return (seq - last - 1, what)


def human(topic: str, body: dict[str, Any]) -> str:
    """One line: time, sequence number, topic and the event's own fields."""
    when = body.get("time")
    stamp = (time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"
             if isinstance(when, (int, float)) else "-")
    # Names and states bare; a variable's value stays JSON, so "5" and 5 differ.
    fields = " ".join(f"{k}={render.abbrev(v, bare=k != 'value')}" for k, v in body.items()
                      if k not in ("seq", "family_seq", "time"))
    return f"{stamp} #{body.get('seq', '?')} {topic} {fields}".rstrip()


def gap_line(gap: tuple[int, str], as_json: bool) -> str:
    missed, what = gap
    if as_json:
        return json.dumps({"missed": missed, "counter": what} if missed >= 0 else
                          {"restarted": True, "counter": what})
    if missed < 0:
        return f"--- sequence numbers ({what}) started again: the daemon restarted"
    return f"--- {missed} event{'s' if missed != 1 else ''} missed ({what})"


def event_endpoint(c: ControlClient) -> str:
    endpoint = c.call("status").get("event_endpoint")
    if not endpoint:
        raise Unavailable("the daemon has no event endpoint ([events] endpoint is empty in "
                          "its configuration)")
    return str(endpoint)


def subscriber(endpoint: str, topics: Sequence[str], key: str | None,
               server_key: str | None) -> zmq.Socket[Any]:
    sub: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("curve+"):
        if not (key and server_key):
            sub.close()
            raise UsageError(
                f"the event endpoint {endpoint} takes CURVE clients only: pass --key "
                "CLIENT.key_secret (a pair whose public key is in the daemon's [security] "
                "authorized_keys) and --server-key SERVER.key (the daemon's public key)")
        try:
            public, secret = zmq.auth.load_certificate(key)
            server_public, _ = zmq.auth.load_certificate(server_key)
        except (OSError, ValueError) as exc:
            sub.close()
            raise NoInput(f"cannot read CURVE key: {exc}") from None
        if not secret:
            sub.close()
            raise UsageError(f"--key {key} holds no secret key (give the .key_secret file)")
        sub.curve_publickey, sub.curve_secretkey = public, secret
        sub.curve_serverkey = server_public
    for t in topics or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, t.encode())
    sub.connect(endpoint.removeprefix("curve+"))
    return sub


def tail(c: ControlClient, args: argparse.Namespace, topics: Sequence[str],
         show: Callable[[str, dict[str, Any]], str] = human) -> int:
    """Print events until Ctrl-C, --count events or --timeout seconds without one."""
    from mabeamd.net import wire

    as_json = bool(getattr(args, "json", False))
    silence: float | None = getattr(args, "timeout", None)
    endpoint = event_endpoint(c)
    c.close()  # nothing more to ask: a daemon restart must not leave a dead request behind
    sub = subscriber(endpoint, topics, args.key, args.server_key)
    gaps = Gaps(topics)
    print(f"tailing {' '.join(topics) or 'every topic'} on {endpoint} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    seen = 0
    last = time.monotonic()
    try:
        while args.count is None or seen < args.count:
            wait = 1.0 if silence is None else min(1.0, silence - (time.monotonic() - last))
            if wait <= 0:
                break
            if not sub.poll(int(wait * 1000)):
                continue
            frames = sub.recv_multipart()
            if len(frames) != 2:
                continue
            topic = frames[0].decode(errors="replace")
            try:
                body = wire.unpack(frames[1], max_size=MAX_EVENT)
            except Exception:  # one bad frame must not end the tail
                continue
            if not isinstance(body, dict):
                continue
            last = time.monotonic()
            gap = gaps.check(topic, body)
            if gap is not None:
                print(gap_line(gap, as_json), flush=True)
            seen += 1
            print(json.dumps({"topic": topic, **body}, default=repr, sort_keys=True)
                  if as_json else show(topic, body), flush=True)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a tail ends
    finally:
        sub.close()
    if args.count is not None and seen < args.count:
        print(f"mabeamctl: {seen} of {args.count} events, then none for {silence:g}s",
              file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def var_line(topic: str, ev: dict[str, Any]) -> str:
    value = "" if ev.get("op") == "delete" else " = " + render.abbrev(ev.get("value"))
    return f"{ev.get('name')} {ev.get('op')} v{ev.get('version')} by {ev.get('by')}{value}"


def cmd_events(c: ControlClient, args: argparse.Namespace) -> int:
    return tail(c, args, args.topics)


def cmd_watch(c: ControlClient, args: argparse.Namespace) -> int:
    return tail(c, args, [f"var.{args.pattern}"], var_line)
