"""Write credentials: how a worker knows who is writing on its shard endpoint.

Agents register with the arbiter, on their agent-endpoint connection; a worker serving a
variable write directly (shard_endpoint.py) never sees that registration. So the arbiter
hands each registered agent a credential at hello,

    credential = "<epoch>.<hex HMAC-SHA256(key, agent id NUL epoch), first 16 bytes>"

and the agent's writes to a shard endpoint carry it. Workers hold the same key (the arbiter
makes one per run and passes it in their environment), so they check a credential with no
round trip and no shared state: a forged or altered credential fails the MAC.

The epoch is a per-run counter the registry bumps whenever an agent id is (re)bound to a
connection. When an agent leaves (bye, gone silent) or another connection takes its id over,
the arbiter tells every worker to revoke that agent's epochs up to the one it had: older
credentials stop working, the agent's next registration gets a newer one. A revocation and a
write racing on two sockets can cross, as a `bye` and a write on the arbiter's own socket can
cross; no write is accepted for an epoch after its revocation has arrived.
"""

from __future__ import annotations

import hashlib
import hmac

MAC_BYTES = 16
WRITE_KEY_ENV = "MABEAMD_WRITE_KEY"  # how workers get the key (hex), from the arbiter
VERIFIED_CACHE = 65536  # verified (agent, credential) pairs a worker remembers


def issue(key: bytes, agent: str, epoch: int) -> str:
    mac = hmac.new(key, f"{agent}\0{epoch}".encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return f"{epoch}.{mac.hex()}"


class Verifier:
    """The worker's side: check credentials, remember revocations."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.revoked: dict[str, int] = {}  # agent -> highest revoked epoch
        # (agent, credential) -> epoch, for credentials whose MAC checked out: a write costs
        # a dict lookup, not an HMAC.
        self._verified: dict[tuple[str, str], int] = {}

    def check(self, agent: str, credential: object) -> bool:
        """True if `credential` was issued to `agent` and is not revoked."""
        if not isinstance(credential, str):
            return False
        epoch = self._verified.get((agent, credential))
        if epoch is None:
            head, sep, _ = credential.partition(".")
            if not sep or not head.isdigit() or len(head) > 18:
                return False
            epoch = int(head)
            if not hmac.compare_digest(issue(self.key, agent, epoch), credential):
                return False
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()  # cheap to rebuild: one HMAC per agent
            self._verified[(agent, credential)] = epoch
        return epoch > self.revoked.get(agent, 0)

    def revoke(self, agents: dict[str, int]) -> None:
        for agent, epoch in agents.items():
            if epoch > self.revoked.get(agent, 0):
                self.revoked[agent] = epoch
