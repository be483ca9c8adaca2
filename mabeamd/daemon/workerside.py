"""The arbiter's side of its workers: the WatcherHost the watchers run on (how a worker is
spawned, what its life's events do) and the worker link's messages (heartbeats, results,
hello, sessions' pushes and ends) with the broadcasts the arbiter sends back (revocations,
whether var.* events are wanted, agents gone).

A mixin of the Arbiter, on top of ControlSide (whose status line it updates): it reads the
arbiter's services and never creates any; data comes in from workers here and goes on to
the services that own it (shard calls, sessions, the event publisher, the audit reports).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

from mabeamd.agents.credentials import WRITE_KEY_ENV
from mabeamd.daemon.controlside import ControlSide
from mabeamd.daemon.sdnotify import child_environment
from mabeamd.daemon.watcher import State, worker_argv
from mabeamd.net.zmqutil import shard_address

if TYPE_CHECKING:
    from mabeamd.daemon.auditside import AuditReports


class WorkerSide(ControlSide):
    """(ControlSide declares the services; these are the worker side's own.)"""

    write_key: bytes
    shm_gid: int | None
    revoked: dict[str, int]
    var_events: bool
    reports: AuditReports
    _hellos: dict[int, tuple[int, str | None]]

    def worker_argv(self, index: int, generation: int) -> list[str]:
        w, v = self.config.workers, self.config.variables
        shard_args = ["--state-dir", str(self.paths.state_dir),
                      "--shards", str(self.meta.shards), "--shm-dir", v.shm_dir,
                      "--shm-prefix", self.meta.shm_prefix, "--fsync", v.fsync,
                      "--history", str(v.history), "--max-value", str(v.max_value),
                      "--snapshot-every", str(v.snapshot_every),
                      "--max-variables", str(v.max_variables_per_shard),
                      "--max-bytes", str(v.max_bytes_per_shard),
                      "--disabled-plugins", ",".join(self.config.plugins.disabled),
                      "--max-message", str(self.config.agents.max_message),
                      "--limits", json.dumps(dataclasses.asdict(self.config.limits))]
        if self.shm_gid is not None:
            shard_args += ["--shm-group", str(self.shm_gid)]
        if self.config.agents.shard_endpoint:
            shard_args += ["--shard-endpoint",
                           shard_address(self.config.agents.shard_endpoint, index)]
        c = self.config.cluster
        if c.etcd:  # the shard lives in etcd (cluster/shard.py)
            shard_args += ["--cluster", json.dumps({"etcd": c.etcd, "name": c.name,
                                                    "node": c.node,
                                                    "timeout": c.request_timeout,
                                                    "lease_ttl": c.lease_ttl})]
        return worker_argv(index, generation, link=self.paths.endpoint(self.paths.worker_link),
                           heartbeat=w.heartbeat_interval, log_level=self.config.daemon.log_level,
                           wrapper=w.wrapper, shard_args=shard_args)

    def worker_env(self) -> dict[str, str]:
        return {**child_environment(dict(os.environ)), WRITE_KEY_ENV: self.write_key.hex()}

    async def send_to_worker(self, index: int, generation: int, op: str) -> bool:
        return self.link.send(index, generation, op, {})

    def worker_event(self, index: int, event: str, details: dict[str, Any]) -> None:
        self.plugins.call("mabeamd_worker_event", index=index, event=event, details=details)
        self.events.publish(f"worker.{event}", {"index": index, **details})
        if event == "exited":
            self.shard_calls.worker_down(index)
            self.sessions.worker_down(index)
            self.agents.set_shard_endpoint(index, None)
            self.beats.pop(index, None)
            self._hellos.pop(index, None)
        if self.state == "running" and event in ("running", "exited", "failed"):
            self.notifier.status(self.status_line())

    def _on_link_message(self, index: int, generation: int, op: str, body: dict[str, Any]) -> None:
        if not 0 <= index < len(self.watchers):
            return
        w = self.watchers[index]
        if op == "heartbeat":
            w.on_heartbeat(generation)
            if generation == w.generation:
                beat = self.beats.setdefault(index, {})
                for key in ("shard_traffic", "shard_ops", "shard"):  # kept until a newer one
                    if isinstance(body.get(key), dict):
                        beat[key] = body[key]
                storage = body.get("storage")
                beat["storage"] = storage if isinstance(storage, dict) else None
        elif op == "loading":
            w.on_loading(generation)
        elif op == "results":  # a worker's answers to one batch of requests
            w.on_heartbeat(generation)  # any message is a sign of life
            for result in body.get("results") or ():
                if isinstance(result, dict):
                    self.shard_calls.on_result(result)
        elif op == "hello":
            if generation == w.generation:
                pid = body.get("pid")
                address = body.get("shard_endpoint")
                self._hellos[index] = (pid if isinstance(pid, int) else -1,
                                       address if isinstance(address, str) else None)
                # Revocations so far first: its shard endpoint takes writes only after them.
                self.link.send(index, generation, "revoke", {"agents": self.revoked,
                                                             "full": True})
                self.link.send(index, generation, "var_events", {"wanted": self.var_events})
                # Also in its argv; again here for a reload between its spawn and now.
                self.link.send(index, generation, "limits",
                               dataclasses.asdict(self.config.limits))
        elif op == "open":  # the worker has the revocations: it serves every path now
            said = self._hellos.pop(index, None)
            if said is not None and generation == w.generation:
                w.on_hello(generation, said[0])
                self.agents.set_shard_endpoint(index, said[1])
        elif op == "audit":  # forbidden writes a worker refused
            self.reports.worker_refusals(index, body)
        elif op == "events":  # writes served on a worker's shard endpoint
            w.on_heartbeat(generation)
            for event in body.get("events") or ():
                self.events.publish_write(event)
        elif op in ("push", "event", "ended"):
            w.on_heartbeat(generation)
            if generation != w.generation:
                return  # from a worker already replaced: its sessions were ended
            if op == "push":
                gone = self.sessions.on_push(index, body)
                if gone:
                    self.link.send(index, generation, "agents_down", {"agents": gone})
            elif op == "event":
                self.sessions.on_event(body)
            else:
                self.sessions.on_ended(body)

    def _revoke(self, agent: str, epoch: int) -> None:
        """An agent's binding to a connection ended: its write credential stops working on
        every shard endpoint (workers started later get the whole map at hello)."""
        self.revoked[agent] = epoch
        self._to_running_workers("revoke", {"agents": {agent: epoch}})

    def _var_interest(self) -> None:
        """Tell workers whether to send var.* events of direct writes (building and relaying
        events nobody receives costs an arbiter wake-up per batch of writes)."""
        wanted = self.events.watched("var.")
        if wanted != self.var_events:
            self.var_events = wanted
            self._to_running_workers("var_events", {"wanted": wanted})

    def _to_running_workers(self, op: str, body: dict[str, Any]) -> None:
        """A link message to every running worker (one starting gets the state at hello)."""
        for w in self.watchers:
            if w.state is State.RUNNING:
                self.link.send(w.index, w.generation, op, body)

    def _agent_down(self, agent: str) -> None:
        """Sessions count an agent that left or went silent as absent."""
        for index in self.sessions.live_shards():
            w = self.watchers[index]
            self.link.send(index, w.generation, "agents_down", {"agents": [agent]})
