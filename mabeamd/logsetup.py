"""Logging: journald when systemd connected our stderr to the journal, plain stderr otherwise.

The event loop must never block on a log write (a slow journald or a full pipe would stall
the control socket), so records go through a QueueHandler; a listener thread does the I/O.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import socket
import struct
import sys
import time

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"


def stderr_is_journal() -> bool:
    """True when systemd passed $JOURNAL_STREAM and it is still our stderr (see systemd.exec)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class JournalHandler(logging.Handler):
    """Native journal protocol over the datagram socket (used when systemd-python is absent)."""

    def __init__(self, identifier: str, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @staticmethod
    def _field(key: str, value: str) -> bytes:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        return key.encode() + b"=" + data + b"\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            payload = b"".join([
                self._field("MESSAGE", msg),
                self._field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
                self._field("SYSLOG_IDENTIFIER", self.identifier),
                self._field("LOGGER", record.name),
                self._field("CODE_FILE", record.pathname),
                self._field("CODE_LINE", str(record.lineno)),
            ])
            self.sock.sendto(payload, self.path)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def _journal_handler(identifier: str) -> logging.Handler:
    try:
        from systemd.journal import JournalHandler as NativeJournalHandler
    except ImportError:
        return JournalHandler(identifier)
    return NativeJournalHandler(SYSLOG_IDENTIFIER=identifier)  # type: ignore[no-any-return]


class LogSetup:
    """Owns the queue listener so it can be flushed and stopped at exit."""

    def __init__(self) -> None:
        self.listener: logging.handlers.QueueListener | None = None
        self.target = "stderr"

    def start(self, level: str, identifier: str = "mabeamd") -> None:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        handler: logging.Handler
        if stderr_is_journal():
            handler = _journal_handler(identifier)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            self.target = "journald"
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(UTCFormatter(
                "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        root.addHandler(logging.handlers.QueueHandler(q))
        self.listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
        self.listener.start()
        self.set_level(level)

    @staticmethod
    def set_level(level: str) -> None:
        logging.getLogger().setLevel(level.upper())

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()  # drains the queue
            for h in self.listener.handlers:
                h.close()
            self.listener = None


def setup_child_logging(level: str, prefix: str) -> None:
    """Workers log straight to stderr (journald tags each line with the worker's pid)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UTCFormatter(
        f"%(asctime)s %(levelname)s [%(process)d] {prefix} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
