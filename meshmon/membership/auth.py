"""Self-statements and their proofs: the narrow interface between membership and identity.

Theory of operation
-------------------
SWIM lets anyone gossip about anyone. Two kinds of news, however, only the member itself may
state (DESIGN.md principle 5): *I am alive at incarnation i with this metadata* (``Alive``) and
*I leave at incarnation i* (a ``Dead`` whose source is the node itself). Each such statement
travels with an opaque *proof* made by its author's :meth:`Authenticator.prove`; every receiver
calls :meth:`Authenticator.verify` before the statement may change its view, whether the
statement came straight from its author, was relayed by gossip, or arrived in a push-pull.
Nodes that relay or push-pull a statement pass on the proof they accepted it with, so proofs
need no freshness: an old statement replayed later loses to the member's newer incarnation (the
merge rules), and if the member itself hears of an older life of its own it refutes.

A statement is the canonical encoding :func:`~meshmon.membership.codec.encode_statement` of
``(kind, incarnation, metadata)``; the proof binds it to the author's identity. The real
implementation (:mod:`meshmon.membership.identity`) signs it with the node's certified key and
checks the certificate's name, tags and addresses against the metadata; the simulator's
(:mod:`meshmon.sim.identities`) models the same binding with keyed hashes. What a third party
says (suspect, dead) stays unproven, as SWIM needs.

The core never raises for a bad proof: :meth:`verify` returns a short reason (one of
:data:`REASONS`), the core counts it and leaves the view untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshmon.membership.messages import NodeMeta, State

REASONS = (
    "missing-proof", "malformed-proof", "untrusted-cert", "revoked", "expired",
    "fingerprint-mismatch", "name-mismatch", "tags-mismatch", "address-mismatch",
    "bad-signature",
)  # fmt: skip
"""Every reason a proof can be refused for (counters and logs use these names)."""


class Authenticator(Protocol):
    """Proves this node's statements about itself and verifies other nodes' statements."""

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """A proof that this node states ``kind`` (ALIVE or LEFT) at ``incarnation``."""

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """None if ``proof`` shows ``meta.name`` itself made the statement, else a reason."""


class Unchecked:
    """Accepts every statement and proves nothing: for protocol tests that are not about identity.

    Never use it where peers are not all trusted: any member could then speak for any other.
    """

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """An empty proof."""
        return b""

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """Always accepted."""
        return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A statement the core refused: who it claimed to be from, why, and when."""

    name: str
    reason: str
    kind: State
    incarnation: int
    time: float
