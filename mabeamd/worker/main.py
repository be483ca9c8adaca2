"""The worker process: `python -m mabeamd.worker`, spawned and supervised by the arbiter.

A worker connects a DEALER to the arbiter's link socket, says hello, and sends a heartbeat
every interval from its event loop (so a wedged loop goes silent and gets restarted). It
dies with the arbiter: PR_SET_PDEATHSIG delivers SIGKILL the moment the arbiter's process
goes away, however it went. Terminal signals (SIGINT, SIGHUP) are ignored: the arbiter
decides when workers stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from mabeamd.agents import batch as batchops
from mabeamd.agents.admission import RESPOND
from mabeamd.agents.credentials import WRITE_KEY_ENV, Verifier
from mabeamd.cluster.pending import Pending
from mabeamd.logsetup import setup_child_logging
from mabeamd.malloc import return_big_frees
from mabeamd.net import wire
from mabeamd.net.drain import Drain, recv_bounded, recv_ready_batch
from mabeamd.net.frames import NOBLOCK, send_frames
from mabeamd.net.link import identity
from mabeamd.plugins import PluginHost
from mabeamd.sessions.engine import SessionEngine
from mabeamd.storage.snapshot import SnapshotCorrupt
from mabeamd.storage.wal import WalCorrupt
from mabeamd.worker.shard import Shard, ShardInUse
from mabeamd.worker.shard_endpoint import ShardEndpoint

if TYPE_CHECKING:
    from mabeamd.cluster.shard import ClusterShard

log = logging.getLogger("mabeamd.worker")

PR_SET_PDEATHSIG = 1
EXIT_SHARD_REFUSED = 3  # the shard's files were refused (corrupt, or locked by another process)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when our parent exits; then make sure it has not already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        # Either a wrapper forked us (then the arbiter is our grandparent) or the arbiter is
        # already gone. Only the second is fatal.
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            log.error("arbiter (pid %d) is gone before start; exiting", parent)
            sys.exit(1)
        except PermissionError:
            pass



class Worker:
    def __init__(self, index: int, generation: int, link: str, heartbeat: float,
                 shard: Shard | ClusterShard | None = None, *,
                 plugins: PluginHost | None = None) -> None:
        self.index = index
        self.plugins = plugins or PluginHost()
        self.sessions: SessionEngine | None = None
        self.generation = generation
        self.link = link
        self.heartbeat = heartbeat
        self.shard = shard
        self._stop = asyncio.Event()
        self._seq = 0
        self._hello_sent = False
        self._last_progress = -math.inf  # the first progress() call reports at once
        self._sock: zmq.Socket[Any]
        self._link: Drain[list[bytes]]
        # Direct variable requests (shard_endpoint.py), when configured and bound.
        self.direct: ShardEndpoint | None = None
        self._direct: Drain[list[bytes]] | None = None
        self.var_events = False  # someone subscribes to var.* (the arbiter says)
        self._refused: list[dict[str, Any]] = []  # forbidden writes from the link, for audit
        self._later: set[asyncio.Task[None]] = set()  # cluster writes awaiting etcd
        self.cluster: ClusterShard | None = None  # cluster mode: the shard, which is in etcd

    def _send(self, op: str, body: dict[str, Any]) -> None:
        self._seq += 1
        try:
            send_frames(self._sock, wire.encode({"id": self._seq, "op": op}, body), NOBLOCK)
        except zmq.Again:
            # The arbiter is not reading: its requests time out (`busy`) and heartbeats
            # stop, which is what should happen to a link that is stuck.
            log.warning("link to the arbiter is full; %s dropped", op)

    def connect(self) -> None:
        """Open the link to the arbiter (before the shard loads, so loading can report)."""
        # A plain socket with its ZMQ_FD as a loop reader (net/drain.py says why).
        self._ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity(self.index, self.generation))
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(self.link)
        self._sock = sock
        # The batch's replies go out on this socket: look again after them (sends).
        self._link = Drain(sock, self._serve_link, recv_ready_batch, sends=True)

    def progress(self) -> None:
        """Long blocking work (loading a big shard, rebuilding its segment) calls this every
        few thousand records: at most once a heartbeat interval it tells the arbiter the
        worker is alive ("loading" before hello pushes the start deadline back)."""
        now = time.monotonic()
        if now - self._last_progress >= self.heartbeat:
            self._last_progress = now
            self._send("heartbeat" if self._hello_sent else "loading",
                       {"generation": self.generation, "t": now})

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        if not hasattr(self, "_sock"):
            self.connect()
        sock, ctx = self._sock, self._ctx
        try:
            if self.cluster is not None:
                await self._load_cluster(self.cluster)
            if self.shard is not None:
                self.sessions = SessionEngine(self.shard, self.plugins, self._out)
            direct = self.direct
            if direct is not None:
                direct.sessions = self.sessions is not None
            if direct is not None and (self.shard is None or not direct.bind()):
                direct.close()
                direct = self.direct = None
            self._send("hello", {"index": self.index, "generation": self.generation,
                                 "pid": os.getpid(),
                                 "shard_endpoint": direct.address if direct else None})
            self._hello_sent = True
            self._link.start(loop)
            if direct is not None:
                # Under load its drains find many requests: receive until zmq.Again.
                self._direct = Drain(direct.sock, self._serve_direct, recv_bounded, sends=True)
                self._direct.start(loop)
            tasks = [asyncio.create_task(c) for c in (self._beat(), self._tick())]
            await self._stop.wait()
            if self.sessions is not None:
                await self.sessions.stop()
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self._link.close()
            if self._direct is not None:
                self._direct.close()
            if self._later:  # cluster writes in flight: their answers, then bye
                await asyncio.wait(self._later, timeout=self.heartbeat * 4)
            self._send("bye", {"generation": self.generation})
        finally:
            if self.direct is not None:
                self.direct.close()
            sock.close()
            ctx.term()
            if self.cluster is not None:
                await self.cluster.aclose()
            if self.shard is not None:
                self.shard.close()
        log.info("stopped")
        return 0

    async def _load_cluster(self, shard: ClusterShard) -> None:
        """List the shard from etcd before hello (as a WAL is replayed before it); while
        etcd does not answer, keep trying and keep telling the arbiter we are loading."""
        from mabeamd.cluster.etcd import DOWN

        shard.emit = self._cluster_events
        while True:
            try:
                await shard.load()
                return
            except DOWN as exc:
                log.warning("shard %d: etcd does not answer (%s); retrying", self.index, exc)
                for _ in range(4):
                    self.progress()
                    await asyncio.sleep(self.heartbeat / 2)

    def _cluster_events(self, events: list[dict[str, Any]]) -> None:
        """Changes the etcd watch brought (other nodes' writes): published like ours."""
        if self.var_events and events:
            self._send("events", {"events": events})
            self._link.wake()

    def _defer(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _link_later(self, fwd: Any, op: str, body: dict[str, Any],
                          pending: Pending) -> None:
        """A cluster write that came over the link: its result once etcd has answered."""
        try:
            result, event = await pending.result
            reply = self._reply(fwd, result, event)
        except wire.WireError as exc:
            reply = self._refusal(fwd, op, body, exc)
        except Exception as exc:
            reply = {"fwd": fwd, "error": wire.incident(
                log, f"shard {self.index}: request failed", exc).body()}
        self._send("results", {"results": [reply]})
        self._link.wake()
        self._send_refused()

    async def _direct_later(self, reply: Any) -> None:
        """A cluster write from the shard endpoint: its reply once etcd has answered."""
        direct = self.direct
        assert direct is not None
        frames, events = await reply
        direct.send(frames)
        direct.sent()
        if self._direct is not None:  # a send outside a drain can eat its wake-up edge
            self._direct.wake()
        if events and self.var_events:
            self._send("events", {"events": events})
            self._link.wake()
        if direct.refused:
            self._send_refused()
            self._link.wake()

    def _out(self, op: str, body: dict[str, Any]) -> None:
        """A message from the session engine (push, event, ended), sent outside a drain. A
        push goes straight to the agents attached here (attach.py), the rest through the
        arbiter."""
        direct = self.direct
        if op == "push" and direct is not None and len(direct.attachments):
            rest = direct.attachments.push(direct.sock, self.index, body)
            if self._direct is not None:  # a send outside a drain can eat its wake-up edge
                self._direct.wake()
            if not rest:
                return
            body = {**body, "agents": rest}
        self._send(op, body)
        self._link.wake()

    def _serve_link(self, batch: list[list[bytes]]) -> None:
        replies = [r for r in (self._serve(frames) for frames in batch) if r is not None]
        if self.shard is not None and replies:
            # Group commit: the WAL is durable (per policy) before any reply leaves. If this
            # raises, the worker dies and its writes are answered by no one.
            self.shard.commit()
        # One link message for the whole batch: per message, not per byte, is what the link
        # costs both ends (docs/benchmarks.md).
        if replies:
            self._send("results", {"results": replies})
        self._send_refused()

    def _send_refused(self) -> None:
        """Forbidden writes of the batch to the arbiter, which writes the audit log (one
        message per batch, and only on batches that had any: the write path pays nothing)."""
        records = self._refused
        if self.direct is not None and self.direct.refused:
            records += self.direct.refused
            self.direct.refused = []
        if records:
            self._refused = []
            for r in records:
                r["shard"] = self.index
            self._send("audit", {"records": records})

    def _serve_direct(self, batch: list[list[bytes]]) -> None:
        """Serve a batch from the shard endpoint: same group commit as _serve_link, then the
        replies, then the writes' events to the arbiter (it publishes them) in one message."""
        direct, shard = self.direct, self.shard
        assert direct is not None and shard is not None  # bound only for a loaded shard
        served = []
        for frames in batch:
            answer = direct.serve(frames, self._handle_var)
            if isinstance(answer, tuple):
                served.append(answer)
            else:
                self._defer(self._direct_later(answer))
        events = [event for _, written in served for event in written]
        if events:
            shard.commit()  # durable (per policy) before any reply leaves
        for reply, _ in served:
            direct.send(reply)
        direct.sent()
        if events and self.var_events:
            self._send("events", {"events": events})
            self._link.wake()
        if direct.refused:
            self._send_refused()
            self._link.wake()

    def _handle_var(self, op: str, args: dict[str, Any], actor: str,
                    ) -> tuple[Any, dict[str, Any] | None]:
        """A request the shard endpoint admitted: a variable op, or an answer to one of this
        shard's sessions (the one-hop path: it changes no variable, so no commit waits)."""
        if op == RESPOND:
            assert self.sessions is not None
            return self.sessions.handle(op, {**args, "agent": actor}), None
        assert self.shard is not None
        return self.shard.handle(op, args, actor, time.time())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.shard is not None:
                self.shard.tick()

    async def _beat(self) -> None:
        while True:
            beat: dict[str, Any] = {"generation": self.generation, "t": time.monotonic()}
            if self.direct is not None:
                pushes = self.direct.attachments
                beat["shard_traffic"] = {**self.direct.stats, "attached": len(pushes),
                                         "pushed": pushes.stats["pushed"]}
                beat["shard_ops"] = self.direct.ops.snapshot()
            if self.shard is not None:
                beat["storage"] = self.shard.storage_state()  # None while the disk is fine
                beat["shard"] = self.shard.gauges()  # for metrics: no scrape asks a worker
            self._send("heartbeat", beat)
            self._link.wake()
            await asyncio.sleep(self.heartbeat)

    def _serve(self, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            # The arbiter bounded what it took from agents ([agents] max_message); a request it
            # relays is that plus the link's envelope, and a batch's part is up to the whole
            # batch. The default 1 MiB bound here dropped a max_value write relayed by the
            # arbiter, and its agent waited out its timeout.
            _, op, body = wire.parse_request(frames, max_size=1 << 30)
        except wire.WireError as exc:
            log.warning("dropping malformed message from arbiter: %s", exc.message)
            return None
        if op == "stop":
            self._stop.set()
            return None
        if op == "agents_down":
            if self.sessions is not None:
                self.sessions.agents_down(list(body.get("agents") or []))
            return None
        if op == "revoke":  # agents whose write credentials end (credentials.py)
            if self.direct is not None:
                agents = body.get("agents")
                if isinstance(agents, dict):
                    revoked = {a: e for a, e in agents.items() if isinstance(e, int)}
                    self.direct.verifier.revoke(revoked)
                    self.direct.attachments.revoke(revoked)
                if body.get("full"):
                    self.direct.writes_open = True
            if body.get("full"):
                # The arbiter counts this worker running (and advertises its shard
                # endpoint) only now, so no agent is sent to an endpoint that answers busy.
                self._send("open", {})
            return None
        if op == "var_events":
            self.var_events = bool(body.get("wanted"))
            return None
        if op == "limits":  # [limits], at hello and on reload (the arbiter's, so trusted)
            if self.direct is not None:
                self.direct.configure_limits(body)
            return None
        if op != "request":
            log.warning("unknown op from arbiter: %s", op)
            return None
        # A result in the shape net/shardcall.py reads; an error's body is the one a wire
        # error reply carries (WireError.body), as on the shard endpoint.
        fwd = body.get("fwd")
        try:
            if self.shard is None:
                raise wire.WireError(wire.ErrorCode.INTERNAL, "this worker serves no shard")
            op = str(body.get("op"))
            if op == "var.batch":  # ops the arbiter admitted, of this shard (agents/batch.py)
                return self._link_batch(fwd, body.get("args") or {})
            if op.startswith("session.") and self.sessions is not None:
                return {"fwd": fwd, "result": self.sessions.handle(op, body.get("args") or {})}
            result, event = self.shard.handle(op, body.get("args") or {},
                                              str(body.get("actor")), time.time())
        except wire.WireError as exc:
            return self._refusal(fwd, op, body, exc)
        except Exception as exc:
            err = wire.incident(log, f"shard {self.index}: request failed", exc)
            return {"fwd": fwd, "error": err.body()}
        if type(result) is Pending:
            self._defer(self._link_later(fwd, op, body, result))
            return None
        return self._reply(fwd, result, event)

    def _link_batch(self, fwd: Any, args: dict[str, Any]) -> dict[str, Any] | None:
        """A batch's ops for this shard, relayed by the arbiter as (op, args, actor) each:
        served in order, each answered in its element (agents/batch.py); the result is
        the elements, which the arbiter puts in the request's order."""
        assert self.shard is not None
        elements: list[bytes] = []
        events: list[dict[str, Any]] = []
        later: list[tuple[int, Pending, str, dict[str, Any], str]] = []
        now = time.time()
        for op, op_args, actor in args.get("items") or ():
            try:
                result, event = self.shard.handle(op, op_args, actor, now)
            except Exception as exc:
                elements.append(self._element_failed(fwd, op, op_args, actor, exc))
                continue
            if type(result) is Pending:
                later.append((len(elements), result, op, op_args, actor))
                elements.append(b"")
                continue
            elements.append(batchops.ok(result))
            if event:
                events.append(event)
        reply = {"fwd": fwd, "elements": elements, "events": events}
        if later:
            self._defer(self._link_batch_later(reply, later))
            return None
        return reply

    async def _link_batch_later(self, reply: dict[str, Any],
                                later: list[tuple[int, Pending, str, dict[str, Any], str]],
                                ) -> None:
        for i, pending, op, op_args, actor in later:
            try:
                result, event = await pending.result
            except Exception as exc:
                reply["elements"][i] = self._element_failed(reply["fwd"], op, op_args, actor,
                                                            exc)
                continue
            reply["elements"][i] = batchops.ok(result)
            if event:
                reply["events"].append(event)
        self._send("results", {"results": [reply]})
        self._link.wake()
        self._send_refused()

    def _element_failed(self, fwd: Any, op: str, op_args: dict[str, Any], actor: str,
                        exc: Exception) -> bytes:
        if not isinstance(exc, wire.WireError):
            exc = wire.incident(log, f"shard {self.index}: an op of a batch failed", exc)
        self._refusal(fwd, op, {"actor": actor, "args": op_args}, exc)
        return batchops.error(exc)

    @staticmethod
    def _reply(fwd: Any, result: Any, event: dict[str, Any] | None) -> dict[str, Any]:
        if type(result) is wire.Packed:  # relayed as is: the arbiter need not repack it
            return {"fwd": fwd, "packed": bytes(result), "event": event}
        return {"fwd": fwd, "result": result, "event": event}

    def _refusal(self, fwd: Any, op: str, body: dict[str, Any],
                 exc: wire.WireError) -> dict[str, Any]:
        if exc.code == wire.ErrorCode.FORBIDDEN and op.startswith("var."):
            args = body.get("args")
            self._refused.append({"op": op, "agent": body.get("actor"),
                                  "name": args.get("name") if isinstance(args, dict)
                                  else None, "reason": exc.message,
                                  "via": "agent_endpoint"})
        return {"fwd": fwd, "error": exc.body()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mabeamd-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--generation", type=int, required=True)
    parser.add_argument("--link", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--shards", type=int, default=1,
                        help="the state directory's shard count (this worker owns the names "
                             "that hash to --index)")
    parser.add_argument("--shm-dir", type=Path)
    parser.add_argument("--shm-prefix")
    parser.add_argument("--shm-group", type=int, default=None,
                        help="gid that may read the segments (default: the worker's group)")
    parser.add_argument("--fsync", default="everysec")
    parser.add_argument("--history", type=int, default=16)
    parser.add_argument("--max-value", type=int, default=1 << 20)
    parser.add_argument("--snapshot-every", type=int, default=10000)
    parser.add_argument("--max-variables", type=int, default=1 << 62)
    parser.add_argument("--max-bytes", type=int, default=1 << 62)
    parser.add_argument("--disabled-plugins", default="",
                        help="comma-separated plugin names not to load")
    parser.add_argument("--shard-endpoint", default="",
                        help="where to serve variable requests directly (empty: nowhere)")
    parser.add_argument("--max-message", type=int, default=wire.DEFAULT_MAX_MESSAGE)
    parser.add_argument("--limits", type=json.loads, default={},
                        help="[limits] as JSON, in force from the first request")
    parser.add_argument("--cluster", type=json.loads, default=None,
                        help="cluster mode: {etcd, name, node, timeout} as JSON; the shard "
                             "lives in etcd (cluster/shard.py), not in --state-dir")
    args = parser.parse_args(argv)
    setup_child_logging(args.log_level, f"worker[{args.index}]")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(args.parent)
    return_big_frees()
    import uvloop

    # The worker runs the sessions, so it loads the protocol plugins itself (same entry
    # points, same disabled list as the arbiter; failures are logged to the daemon's log).
    plugins = PluginHost()
    worker = Worker(args.index, args.generation, args.link, args.heartbeat, plugins=plugins)
    worker.connect()
    key = os.environ.pop(WRITE_KEY_ENV, "")  # not for anything this process spawns
    if args.shard_endpoint and key:
        worker.direct = ShardEndpoint(worker._ctx, args.shard_endpoint, args.max_message,
                                      Verifier(bytes.fromhex(key)), plugins.authorize)
        if args.limits:
            worker.direct.configure_limits(args.limits)
    worker.progress()  # "loading": start_timeout now bounds silence, not start-up work
    plugins.load([n for n in args.disabled_plugins.split(",") if n], progress=worker.progress)
    if args.cluster is not None:
        from mabeamd.cluster.shard import ClusterShard

        c = args.cluster
        worker.shard = worker.cluster = ClusterShard(
            args.index, args.shards, args.shm_dir, args.shm_prefix, etcd=c["etcd"],
            cluster=c["name"], node=c["node"], timeout=c["timeout"], history=args.history,
            lease_ttl=int(c.get("lease_ttl", 10)),
            max_value=args.max_value, max_variables=args.max_variables,
            max_bytes=args.max_bytes, progress=worker.progress, shm_group=args.shm_group)
    elif args.state_dir is not None:
        # Loaded before hello: the arbiter counts the worker as running only once its shard
        # serves. A big shard takes seconds; worker.progress keeps the arbiter informed.
        try:
            worker.shard = Shard(args.index, args.state_dir, args.shm_dir, args.shm_prefix,
                                 shards=args.shards, fsync=args.fsync, history=args.history,
                                 max_value=args.max_value, snapshot_every=args.snapshot_every,
                                 max_variables=args.max_variables, max_bytes=args.max_bytes,
                                 progress=worker.progress, shm_group=args.shm_group)
        except (ShardInUse, WalCorrupt, SnapshotCorrupt) as exc:
            # Nothing is changed on disk; retrying is the watcher's call (and FAILED after
            # its budget). docs/operations.md: "A shard whose WAL is refused".
            log.error("shard %d not loaded: %s", args.index, exc)
            return EXIT_SHARD_REFUSED
    return int(uvloop.run(worker.run()))


if __name__ == "__main__":
    sys.exit(main())
