"""The errors the database layer raises to the HTTP layer (each means one answer)."""

from __future__ import annotations

from typing import Any


class IngestRefused(Exception):
    """The batch breaks the protocol: answer ``status`` with ``{"error": message, **extra}``.

    403: the batch's agent is not the certificate's node. 409: an undeclared sequence gap
    (``expected`` is where the agent must resume). 422: a record the aggregator cannot store
    (the message names the record and field). Nothing was written.
    """

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON answer."""
        return {"error": self.message, **self.extra}


def not_the_peer(agent: str, peer: str) -> IngestRefused:
    """The 403 for a batch whose ``agent`` is not the node in the client certificate."""
    return IngestRefused(403, f"agent: {agent!r} is not the node name in the client "
                         f"certificate ({peer!r})")  # fmt: skip


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or is shutting down (answer 503; the agent retries).

    Nothing of the batch is known to be committed; a retry is safe either way (the stream's
    high-water mark makes it exactly once).
    """
