"""The simulator's stand-in for the mesh CA: cheap proofs that still bind statements to names.

The real authenticator (:mod:`meshmon.membership.identity`) costs an ECDSA signature check per
new statement, too slow for 10,000 simulated nodes. :class:`SimIdentities` keeps what matters
for the protocol: each simulated node holds a secret key for one certified name and tag set, so
a node can prove statements about itself and about nobody else. A proof is
``author name || 0 || keyed BLAKE2b(statement)``, padded to :data:`PROOF_SIZE` so datagrams and
push-pull states weigh what the real ones do. Verification refuses with the real reasons:
unknown author (``untrusted-cert``), ``revoked``, ``name-mismatch``, ``tags-mismatch``,
``bad-signature``.
"""

from __future__ import annotations

import hashlib
import random

from meshmon.membership.codec import encode_statement
from meshmon.membership.messages import NodeMeta, State

PROOF_SIZE = 610
"""Bytes of a real proof: a ~540-byte certificate and a 64-byte signature in CBOR (measured by
``tests/test_sim_identity.py`` against a real certificate)."""
_MAC = 16


class SimIdentities:
    """Which names the simulated CA certified, with which tags, and their keys.

    Args:
        seed: derives every node's key (runs stay reproducible).
        proof_size: pad proofs to this many bytes (0: no padding, smallest datagrams).
    """

    def __init__(self, seed: int, proof_size: int = PROOF_SIZE) -> None:
        self._secret = random.Random(seed).randbytes(32)
        self._tags: dict[str, tuple[str, ...]] = {}
        self.revoked: set[str] = set()
        self.proof_size = proof_size

    def certify(self, name: str, tags: tuple[str, ...] = ()) -> None:
        """Issue ``name`` a certificate for ``tags`` (replacing an earlier one)."""
        self._tags[name] = tuple(sorted(tags))

    def is_certified(self, name: str) -> bool:
        """Whether ``name`` holds a certificate."""
        return name in self._tags

    def authenticator(self, name: str) -> SimAuthenticator:
        """The authenticator of the node holding ``name``'s certificate."""
        if name not in self._tags:
            raise KeyError(f"{name} has no certificate; certify() it first")
        return SimAuthenticator(self, name)

    def _key(self, name: str) -> bytes:
        return hashlib.blake2b(name.encode(), key=self._secret, digest_size=32).digest()

    def _mac(self, name: str, statement: bytes) -> bytes:
        return hashlib.blake2b(statement, key=self._key(name), digest_size=_MAC).digest()


class SimAuthenticator:
    """One simulated node's authenticator: proves as ``name``, verifies anyone."""

    def __init__(self, identities: SimIdentities, name: str) -> None:
        self._ids = identities
        self.name = name

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """Our name and a MAC under our key (whatever ``meta`` claims)."""
        mac = self._ids._mac(self.name, encode_statement(kind, incarnation, meta))
        proof = self.name.encode() + b"\x00" + mac
        return proof.ljust(self._ids.proof_size, b"\x00")

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """None if ``meta.name``'s holder made this statement, else the reason."""
        if not proof:
            return "missing-proof"
        author, sep, rest = proof.partition(b"\x00")
        if not sep or len(rest) < _MAC:
            return "malformed-proof"
        name = author.decode(errors="replace")
        tags = self._ids._tags.get(name)
        if tags is None:
            return "untrusted-cert"
        if name in self._ids.revoked:
            return "revoked"
        if name != meta.name:
            return "name-mismatch"
        if tuple(sorted(meta.tags)) != tags:
            return "tags-mismatch"
        if rest[:_MAC] != self._ids._mac(name, encode_statement(kind, incarnation, meta)):
            return "bad-signature"
        return None
