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

Certificates by reference
-------------------------
A proof has two forms. The *full* form carries what a stranger needs to check it (the author's
certificate); the *compact* form names that certificate by reference (its fingerprint) and is
what gossip datagrams carry (:meth:`Authenticator.for_gossip`), so that a datagram holds many
announcements rather than one. Push-pull states carry the full form (:meth:`for_state`), so a
node that joins learns every member's certificate at once. A compact proof whose certificate
the verifier does not hold is refused as :data:`UNKNOWN_CERT`: not a lie, only a miss. The core
then asks its driver to fetch the certificate (:meth:`reference` names it; the real compact
proof is the bare signature and the reference the fingerprint the metadata states, which a
full proof must match anyway) from the node that sent the datagram; the fetched bytes count
only once :meth:`learn` checked them exactly as a full proof's certificate is checked (chains
to the CA, valid, not revoked), and the statement itself is verified again in full. What a
peer merely claims never changes the view.
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

UNKNOWN_CERT = "unknown-cert"
"""A compact proof names a certificate the verifier does not hold (yet): fetch it, then the
statement may be verified. Not a refusal on security grounds, so not in :data:`REASONS`."""


class Authenticator(Protocol):
    """Proves this node's statements about itself and verifies other nodes' statements."""

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """A proof that this node states ``kind`` (ALIVE or LEFT) at ``incarnation``."""

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """None if ``proof`` shows ``meta.name`` itself made the statement, else a reason
        (one of :data:`REASONS`, or :data:`UNKNOWN_CERT` for a compact proof's missing
        certificate)."""

    def for_gossip(self, proof: bytes) -> bytes:
        """``proof`` in its compact form (certificate by reference), for datagrams."""

    def for_state(self, meta: NodeMeta, proof: bytes) -> bytes:
        """``proof`` (of a statement with ``meta``) in its full form, for push-pull states
        (unchanged if the certificate it refers to is not held)."""

    def reference(self, meta: NodeMeta, proof: bytes) -> bytes | None:
        """The certificate reference (fingerprint) of a compact proof; None for other forms."""

    def certificate(self, reference: bytes) -> bytes | None:
        """A held certificate by reference, to answer a peer's fetch; None if not held."""

    def learn(self, certificate: bytes) -> str | None:
        """Hold ``certificate`` if it passes the checks a full proof's would; else a reason."""


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

    def for_gossip(self, proof: bytes) -> bytes:
        """Unchanged."""
        return proof

    def for_state(self, meta: NodeMeta, proof: bytes) -> bytes:
        """Unchanged."""
        return proof

    def reference(self, meta: NodeMeta, proof: bytes) -> bytes | None:
        """Never a reference."""
        return None

    def certificate(self, reference: bytes) -> bytes | None:
        """Holds none."""
        return None

    def learn(self, certificate: bytes) -> str | None:
        """Holds none."""
        return "untrusted-cert"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A statement the core refused: who it claimed to be from, why, and when."""

    name: str
    reason: str
    kind: State
    incarnation: int
    time: float
