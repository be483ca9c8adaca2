"""Agent-facing addresses: ZeroMQ bind endpoints and HTTP listen addresses, parsed.

Pure parsing with no knowledge of the configuration schema; config.py validates options
with it (and re-exports these names, which is where the rest of the daemon imports them
from), zmqutil.py binds what it returns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """A bind address: `[curve+]tcp://HOST:PORT` or `[curve+]ipc://PATH`."""

    address: str  # without the curve+ prefix, as ZeroMQ takes it
    curve: bool
    transport: str  # tcp | ipc
    host: str = ""

    @property
    def loopback(self) -> bool:
        if self.transport == "ipc":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return ("curve+" if self.curve else "") + self.address


def parse_listen(text: str) -> tuple[str, int, bool] | None:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port, on loopback), or None if malformed."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):(\d{1,5})", text)
    if m is None or not 0 < int(m.group(2)) < 65536:
        return None
    host = m.group(1).strip("[]")
    if host == "localhost":
        return host, int(m.group(2)), True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(m.group(2)), addr.is_loopback


def parse_endpoint(text: str) -> Endpoint | None:
    curve = text.startswith("curve+")
    addr = text.removeprefix("curve+")
    m = re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", addr)
    if m:
        port = int(m.group(2))
        if not 0 < port < 65536:
            return None
        return Endpoint(addr, curve, "tcp", m.group(1))
    if addr.startswith("ipc://") and len(addr) > 6 and "\0" not in addr:
        return Endpoint(addr, curve, "ipc")
    return None
