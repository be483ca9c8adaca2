"""What the console knows beyond the daemon's own state: fed by the event stream and by the
sessions' final records, sampled once a second for rates. Runs on the arbiter's loop.

The daemon keeps no history of rates, trades or messages for its own work, and the console
must not make it keep any unbounded: everything here is a ring or capped --
- the last `keep` ended sessions' messages (their rounds and answers, as the audit log
  records them: participants, each round's asked agents and its answers with their arrival
  time), each cut at MAX_ANSWERS answers;
- per market session, its last MAX_TRADES trades (`session.trade` events) and its latest
  book (`session.book`), for at most `keep` sessions;
- SAMPLES one-second samples of the rates the overview draws.

Waiters (the console's live streams) are woken on every event, at most once per
WAKE_EVERY seconds: a flood of events costs one page render per stream per interval, not
one per event.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

from mabeamd.observe.opstats import BUCKETS, OpStats

MAX_ANSWERS = 2000  # answers kept per ended session (the diagram says how many more)
MAX_TRADES = 2000  # trades kept per market session
SAMPLES = 60  # one-second samples of the overview's rates
MAX_RUNNING = 10_000  # running sessions whose participants are remembered
WAKE_EVERY = 0.2  # seconds: the most often a live stream is woken
ENDED = ("applied", "failed", "cancelled", "timed_out")


def p95(counts: list[int], total: int) -> float | None:
    """The 95th percentile's bucket bound from cumulative bucket counts (the last being
    +Inf): an upper bound, as Prometheus' histogram_quantile would place it."""
    if total <= 0:
        return None
    rank = 0.95 * total
    for bound, n in zip(BUCKETS, counts, strict=False):
        if n >= rank:
            return bound
    return None  # past the last bucket (> 10 s)


class Feed:
    def __init__(self, keep: int, stats: Callable[[], Mapping[str, OpStats]]) -> None:
        self.keep = keep
        self._stats = stats  # the request counters to sample (agent endpoint, shards)
        self.sessions: collections.OrderedDict[str, dict[str, Any]] = \
            collections.OrderedDict()  # ended: id -> record + its messages
        self.markets: collections.OrderedDict[str, dict[str, Any]] = \
            collections.OrderedDict()  # id -> {"trades": deque, "book": ..., "protocol"}
        # Running sessions' participants (session.started), for "taking part in"; bounded.
        self.running: dict[str, list[str]] = {}
        self.outcomes: collections.deque[tuple[float, str, str]] = collections.deque()
        self.samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=SAMPLES)
        self.version = 0  # bumped on every change a page may show
        self.events = 0
        self._changed = asyncio.Event()
        self._last: dict[str, tuple[int, list[int]]] = {}  # op -> (count, cumulative hist)
        self._waking: asyncio.TimerHandle | None = None

    # --- in ------------------------------------------------------------------------------

    def on_event(self, topic: str, fields: dict[str, Any]) -> None:
        """Every event the daemon publishes (EventPublisher listener)."""
        self.events += 1
        family, _, name = topic.partition(".")
        if family == "session":
            sid = fields.get("session")
            if isinstance(sid, str):
                if name == "started":
                    who = fields.get("participants")
                    self.running[sid] = [str(a) for a in who] if isinstance(who, list) else []
                    while len(self.running) > MAX_RUNNING:
                        self.running.pop(next(iter(self.running)))
                elif name in ENDED:
                    self.running.pop(sid, None)
                    self.outcomes.append((time.monotonic(), str(fields.get("protocol")), name))
                elif name in ("trade", "book"):
                    self._market(sid, str(fields.get("protocol")), name, fields)
        self._wake()

    def _market(self, sid: str, protocol: str, name: str, fields: dict[str, Any]) -> None:
        m = self.markets.get(sid)
        if m is None:
            m = self.markets[sid] = {"protocol": protocol, "book": None,
                                     "trades": collections.deque(maxlen=MAX_TRADES),
                                     "trade_count": 0}
            while len(self.markets) > self.keep:
                self.markets.popitem(last=False)
        if name == "trade":
            m["trade_count"] += 1
            m["trades"].append({k: fields.get(k) for k in
                                ("price", "quantity", "buyer", "seller", "time")})
        else:
            m["book"] = {"bids": fields.get("bids") or [], "asks": fields.get("asks") or [],
                         "time": fields.get("time")}

    def on_session_ended(self, record: dict[str, Any]) -> None:
        """A session's final record with what the audit log keeps of it (participants in
        full, transcript: sessions/engine.py `_audit`)."""
        sid = str(record.get("session"))
        rounds = []
        budget = MAX_ANSWERS
        cut = 0
        for r in record.get("transcript") or ():
            if not isinstance(r, dict):
                continue
            answers = list(r.get("answers") or ())
            kept, cut = answers[:max(0, budget)], cut + max(0, len(answers) - budget)
            budget -= len(kept)
            rounds.append({"kind": r.get("kind"), "asked": list(r.get("asked") or ()),
                           "at": r.get("at"), "stream": bool(r.get("stream")),
                           "answers": kept})
        keep = {k: record.get(k) for k in ("session", "protocol", "initiator", "state",
                                           "reason", "params", "result", "writes",
                                           "variables", "created_at", "elapsed", "versions",
                                           "absent", "shard")}
        keep["participants"] = [p.get("id") if isinstance(p, dict) else p
                                for p in record.get("participants") or ()]
        keep.update(rounds=rounds, answers_cut=cut, ended_at=time.time())
        self.sessions[sid] = keep
        self.sessions.move_to_end(sid)
        while len(self.sessions) > self.keep:
            self.sessions.popitem(last=False)
        self._wake()

    def taking_part(self) -> dict[str, list[str]]:
        """agent -> the running sessions it takes part in."""
        out: dict[str, list[str]] = {}
        for sid, who in self.running.items():
            for a in who:
                out.setdefault(a, []).append(sid)
        return out

    # --- sampling --------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """One second's sample: requests/s and p95 by op since the last one, sessions ended
        per second by protocol and outcome over the last 10 s."""
        now = time.monotonic()
        ops: dict[str, dict[str, Any]] = {}
        merged: dict[str, list[int]] = {}
        for stats in self._stats().values():
            for op, (counts, _) in stats.histograms().items():
                m = merged.setdefault(op, [0] * len(counts))
                for k, n in enumerate(counts):
                    m[k] += n
        for op, counts in merged.items():
            total = counts[-1]
            last_total, last_counts = self._last.get(op, (0, [0] * len(counts)))
            delta = [a - b for a, b in zip(counts, last_counts, strict=False)]
            if total - last_total > 0:
                ops[op] = {"rate": total - last_total, "p95": p95(delta, total - last_total)}
            self._last[op] = (total, counts)
        while self.outcomes and now - self.outcomes[0][0] > 10.0:
            self.outcomes.popleft()
        by: dict[str, float] = {}
        for _, protocol, outcome in self.outcomes:
            key = f"{protocol} {outcome}"
            by[key] = round(by.get(key, 0.0) + 0.1, 6)
        s = {"t": time.time(), "ops": ops, "sessions": dict(by),
             "requests": sum(o["rate"] for o in ops.values())}
        self.samples.append(s)
        self._wake()
        return s

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    # --- out -------------------------------------------------------------------------------

    def _wake(self) -> None:
        self.version += 1
        if self._waking is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop (tests of the pure parts)
                return
            self._waking = loop.call_later(WAKE_EVERY, self._woken)

    def _woken(self) -> None:
        self._waking = None
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> bool:
        """True at the next change (at most every WAKE_EVERY s), False after `timeout`."""
        waiter = self._changed
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
