"""The Python SDK for mabeamd agents.

- `AsyncClient` (asyncio) and `Client` (blocking, runs an AsyncClient in a thread): one
  connection, any number of agent ids, automatic heartbeats and re-registration.
- `client.batch(ops)`, `get_many`, `set_many` and `pipeline()`: many variable ops in one
  message per shard, each answered on its own (`BatchError` names the ops that failed).
- `Agent`: a base class with @topic message handlers, @invitation session handlers and
  run().
- Exceptions: one class per daemon error code, all subclasses of `MabeamError`.
"""

from mabeamd.client.agent import Agent, Invitation, Message, invitation, topic
from mabeamd.client.aio import AsyncClient
from mabeamd.client.bodies import Push, Registration
from mabeamd.client.errors import (
    BadRequest,
    Busy,
    Conflict,
    ConnectionLost,
    ConstraintViolation,
    Exists,
    Forbidden,
    Internal,
    MabeamError,
    NotFound,
    NotRegistered,
    QuotaExceeded,
    RateLimited,
    ShuttingDown,
    StorageError,
    Timeout,
    TooLarge,
    Unavailable,
    UnknownOp,
    UnsupportedVersion,
    VersionMismatch,
    WrongShard,
    error_for,
)
from mabeamd.client.pipeline import BatchError, Pipeline
from mabeamd.client.sync import Client, SyncPipeline

__all__ = [
    "Agent", "AsyncClient", "BadRequest", "BatchError", "Busy", "Client", "Conflict",
    "ConnectionLost", "ConstraintViolation", "Exists", "Forbidden", "Internal", "Invitation",
    "MabeamError", "Message", "NotFound", "NotRegistered", "Pipeline", "Push",
    "QuotaExceeded", "RateLimited", "Registration", "ShuttingDown", "StorageError",
    "SyncPipeline", "Timeout", "TooLarge", "Unavailable", "UnknownOp", "UnsupportedVersion",
    "VersionMismatch", "WrongShard", "error_for", "invitation", "topic",
]
