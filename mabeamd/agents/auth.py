"""CURVE authentication: the server's key pair, the allow-list of client keys, and the map
from an authenticated key to the agent namespace it owns.

Key files are pyzmq's certificate format (`zmq.auth.create_certificates`): NAME.key holds a
public key, NAME.key_secret the pair. The allow-list is a directory of NAME.key files; the
ZAP handler accepts exactly those keys and stamps each message with User-Id = NAME, which
the agent endpoint reads to enforce that only key NAME registers ids NAME and NAME/...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)
ZAP_DOMAIN = "mabeamd"


class AuthError(Exception):
    pass


def load_server_keys(path: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read server key {path}: {exc}") from exc
    if not secret:
        raise AuthError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_authorized(directory: str) -> dict[bytes, str]:
    """{z85 public key: NAME} for every NAME.key in the directory."""
    d = Path(directory)
    if not d.is_dir():
        raise AuthError(f"authorized_keys {directory} is not a directory")
    keys: dict[bytes, str] = {}
    for f in sorted(d.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(f)
        except (OSError, ValueError) as exc:
            log.error("skipping unreadable key file %s: %s", f, exc)
            continue
        keys[public] = f.stem
    return keys


class KeyAuthenticator(AsyncioAuthenticator):
    """ZAP handler: allow listed keys only, and name the client after its key file."""

    def __init__(self, ctx: zmq.asyncio.Context, *,
                 on_failure: Callable[[str, str, str], None] | None = None) -> None:
        super().__init__(ctx)
        self.names: dict[bytes, str] = {}
        self.namespaces: set[str] = set()
        # (client key in z85, peer address, reason): a refused CURVE handshake (audit log).
        self.on_failure = on_failure
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The peer's address is only in the ZAP request; _authenticate_curve gets the key.
        # Requests are handled one at a time, so the attribute cannot be another's.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> Any:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed and self.on_failure is not None:
            self.on_failure(z85.encode(client_key).decode(), self._address,
                            reason.decode("utf-8", "replace") or "unknown key")
        return allowed, reason

    def reload(self, directory: str) -> None:
        self.names = load_authorized(directory)
        self.namespaces = set(self.names.values())
        self.configure_curve(domain=ZAP_DOMAIN, location=directory)
        log.info("CURVE: %d authorized client keys from %s", len(self.names), directory)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "")

    def owner_of(self, agent_id: str) -> str | None:
        """The key name whose namespace holds agent_id, if any."""
        head = agent_id.split("/", 1)[0]
        return head if head in self.namespaces else None


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)
