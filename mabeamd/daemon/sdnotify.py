"""sd_notify(3): tell systemd we are ready, reloading, stopping, alive.

Uses systemd-python when installed (the `mabeamd[systemd]` extra) and otherwise speaks the
protocol itself: one datagram of newline-separated KEY=VALUE pairs to $NOTIFY_SOCKET, where
a leading '@' means the abstract namespace. Both are no-ops when not run by systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable

_native: Callable[[str], bool] | None
try:  # pragma: no cover - depends on the optional extra
    from systemd import daemon as _sd_daemon

    def _native_notify(state: str) -> bool:
        return bool(_sd_daemon.notify(state))

    _native = _native_notify
except ImportError:
    _native = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self, prefer_native: bool = True) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self._use_native = prefer_native and _native is not None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def backend(self) -> str:
        return "systemd-python" if self._use_native else "builtin"

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") -> True if a message was sent."""
        if not self.address:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items())
        if self._use_native and _native is not None:
            return _native(message)
        return self._send(message.encode())

    def _send(self, data: bytes) -> bool:
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, addr)
            return True
        except OSError:
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
