"""sd_notify(3): tell systemd we are ready, reloading, stopping, alive.

Speaks the protocol itself: one datagram of newline-separated KEY=VALUE pairs to
$NOTIFY_SOCKET, where a leading '@' means the abstract namespace; a no-op when not run by
systemd. Never blocking: a datagram socket blocks its sender while the receiver's queue is
full, and the arbiter's event loop once hung for 70 s in sendto() on a notify socket nobody
was reading (libsystemd's sd_notify blocks the same way, so systemd-python is not used for
this). A message that cannot go now: a state change (READY, RELOADING, STOPPING) is kept
and sent first by the next call or by flush(), which the arbiter calls every second; a
STATUS-only or WATCHDOG message is dropped and counted (the next one supersedes it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

STATE_KEYS = ("READY", "RELOADING", "STOPPING")


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._pending: list[bytes] = []  # state changes not sent yet, oldest first
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def backend(self) -> str:
        return "builtin"

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") -> True if the message was sent now."""
        if not self.address:
            return False
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        if not self.flush():
            if any(k in fields for k in STATE_KEYS):
                self._pending.append(data)
            else:
                self.dropped += 1
            return False
        if self._send(data):
            return True
        if any(k in fields for k in STATE_KEYS):
            self._pending.append(data)
        else:
            self.dropped += 1
        return False

    def flush(self) -> bool:
        """Send the state changes that could not go; True when none is left."""
        while self._pending:
            if not self._send(self._pending[0]):
                return False
            self._pending.pop(0)
        return True

    def _send(self, data: bytes) -> bool:
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, socket.MSG_DONTWAIT, addr)
            return True
        except OSError:  # EAGAIN: the receiver's queue is full; or no one listens there
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def reloading(self) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if not asked for."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or not self.address:
            return None
        if pid and pid != str(os.getpid()):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment for our children: systemd's notify and watchdog variables are ours alone."""
    return {k: v for k, v in env.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                         "LISTEN_PID", "LISTEN_FDNAMES")}
