"""A synchronous control-socket client (used by mabeamctl, tests and scripts/bench).

The timeout is an *inactivity* timeout: a long operation that keeps sending progress frames
never times out, and a daemon that goes silent is reported as such, with how long we waited.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from mabeamd.net import wire


class ControlError(Exception):
    """Base class of everything the client raises."""


class NotRunning(ControlError):
    pass


class Unavailable(ControlError):
    """The daemon runs but does not offer what was asked (e.g. it has no event endpoint)."""


class Timeout(ControlError):
    pass


class CommandFailed(ControlError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def probe_socket(path: Path) -> None:
    """Fail fast with a clear reason when nobody can be listening at `path`."""
    if not path.exists():
        raise NotRunning(f"mabeamd is not running (no control socket at {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(os.fsencode(path))
        except ConnectionRefusedError:
            raise NotRunning(f"mabeamd is not running (stale control socket {path})") from None
        except PermissionError:
            raise NotRunning(f"permission denied on control socket {path} (run as the daemon's "
                             "user or a member of [control] group)") from None
        except OSError as exc:
            raise NotRunning(f"cannot connect to control socket {path}: {exc.strerror}") from None


class ControlClient:
    _ids = itertools.count(1)

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0,
                 ctx: zmq.Context[Any] | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            probe_socket(self.path)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{self.path}")
            self._sock = sock
        return self._sock

    def call(self, op: str, body: dict[str, Any] | None = None,
             on_progress: Callable[[str], None] | None = None) -> Any:
        """Send one request and return the reply body; raises CommandFailed on an error reply."""
        sock = self._socket()
        rid = next(self._ids)
        sock.send_multipart(wire.encode({"id": rid, "op": op}, body or {}))
        last = time.monotonic()
        while True:
            wait = self.timeout - (time.monotonic() - last)
            if wait <= 0 or not sock.poll(int(wait * 1000)):
                self.close()  # a late reply must not be read as the next call's answer
                raise Timeout(f"no answer from mabeamd for {self.timeout:g}s "
                              f"(op {op!r}; the daemon may be overloaded or wedged)")
            header, reply = wire.decode(sock.recv_multipart(), max_size=1 << 30)
            if header.get("id") != rid:
                continue
            status = header.get("status")
            if status == "progress":
                last = time.monotonic()
                if on_progress is not None and isinstance(reply, dict):
                    on_progress(str(reply.get("message", "")))
                continue
            if status == "error":
                raise CommandFailed(str(reply.get("code")), str(reply.get("message")))
            return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
