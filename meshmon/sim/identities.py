"""The simulator's stand-in for the mesh CA: cheap proofs that still bind statements to names.

The real authenticator (:mod:`meshmon.membership.identity`) costs an ECDSA signature check per
new statement, too slow for 10,000 simulated nodes. :class:`SimIdentities` keeps what matters
for the protocol: each simulated node holds a secret key for one certified name and tag set, so
a node can prove statements about itself and about nobody else.

A simulated *certificate* is the name and tags with a MAC under the CA's secret, padded to
:data:`CERT_SIZE`; its *fingerprint* a 32-byte hash of it. A proof comes in the real two forms:
full, ``1 || certificate || MAC(statement)`` padded to :data:`PROOF_SIZE`, and compact,
``2 || fingerprint || MAC(statement)`` padded to :data:`COMPACT_PROOF_SIZE`, so datagrams and
push-pull states weigh what the real ones do. Each node's :class:`SimAuthenticator` holds the
certificates it met (in full proofs, fetched, its own; a warm-started mesh shares one store,
as its views share one snapshot) and, like the real one, resolves a compact proof only against
them (``unknown-cert`` otherwise). Verification refuses with the real reasons: a certificate
the CA did not sign (``untrusted-cert``), ``revoked``, ``name-mismatch``, ``tags-mismatch``,
``bad-signature``.
"""

from __future__ import annotations

import hashlib
import random

from meshmon.membership.auth import UNKNOWN_CERT
from meshmon.membership.codec import encode_statement
from meshmon.membership.messages import NodeMeta, State

PROOF_SIZE = 610
"""Bytes of a real full proof: a ~540-byte certificate and a 64-byte signature in CBOR
(measured by ``tests/test_sim_identity.py`` against a real certificate)."""
COMPACT_PROOF_SIZE = 98
"""Bytes of a simulated compact proof: a real one is the bare 64-byte signature (66 in CBOR),
the certificate named by the 32-byte fingerprint in the metadata; simulated metadata states
none, so the simulated proof carries it, and weighs both (the ``Alive`` weighs the same)."""
CERT_SIZE = 540
"""Bytes of a real node certificate (DER), roughly."""
_MAC = 16
_FULL, _COMPACT = b"\x01", b"\x02"
_REF = 32

Cert = tuple[str, tuple[str, ...]]
"""What a simulated certificate says: the name and the tags the CA granted."""


class SimIdentities:
    """Which names the simulated CA certified, with which tags, and their keys.

    Args:
        seed: derives the CA's secret and every node's key (runs stay reproducible).
        proof_size: pad full proofs to this many bytes (0: no padding, smallest datagrams).
    """

    def __init__(self, seed: int, proof_size: int = PROOF_SIZE) -> None:
        self._secret = random.Random(seed).randbytes(32)
        self._certs: dict[str, bytes] = {}
        self.revoked: set[str] = set()
        self.proof_size = proof_size
        self.warm: dict[bytes, tuple[Cert, bytes]] = {}
        """Certificates every node holds from the start (a warm-started mesh)."""

    def certify(self, name: str, tags: tuple[str, ...] = ()) -> bytes:
        """Issue ``name`` a certificate for ``tags`` (replacing an earlier one); returns it."""
        body = (name + "\x00" + "\x01".join(sorted(tags))).encode()
        if len(body) > CERT_SIZE - _MAC - 2:
            raise ValueError("too many tags for a simulated certificate")
        body = len(body).to_bytes(2, "big") + body.ljust(CERT_SIZE - _MAC - 2, b"\x00")
        der = body + hashlib.blake2b(body, key=self._secret, digest_size=_MAC).digest()
        self._certs[name] = der
        return der

    def is_certified(self, name: str) -> bool:
        """Whether ``name`` holds a certificate."""
        return name in self._certs

    def certificate(self, name: str) -> bytes:
        """``name``'s certificate."""
        return self._certs[name]

    def authenticator(self, name: str) -> SimAuthenticator:
        """The authenticator of the node holding ``name``'s certificate."""
        if name not in self._certs:
            raise KeyError(f"{name} has no certificate; certify() it first")
        return SimAuthenticator(self, name)

    def warm_up(self, names: list[str]) -> None:
        """Let every node hold these names' certificates from the start."""
        for name in names:
            der = self._certs[name]
            cert = self.check(der)
            assert not isinstance(cert, str)
            self.warm[fingerprint(der)] = (cert, der)

    def check(self, der: bytes) -> Cert | str:
        """What a certificate says, if this CA signed it; else ``untrusted-cert``."""
        if len(der) != CERT_SIZE:
            return "malformed-proof"
        body, mac = der[:-_MAC], der[-_MAC:]
        if hashlib.blake2b(body, key=self._secret, digest_size=_MAC).digest() != mac:
            return "untrusted-cert"
        size = int.from_bytes(body[:2], "big")
        name, _, tags = body[2:2 + size].decode().partition("\x00")
        return name, tuple(tags.split("\x01")) if tags else ()

    def _key(self, name: str) -> bytes:
        return hashlib.blake2b(name.encode(), key=self._secret, digest_size=32).digest()

    def _mac(self, name: str, statement: bytes) -> bytes:
        return hashlib.blake2b(statement, key=self._key(name), digest_size=_MAC).digest()


def fingerprint(der: bytes) -> bytes:
    """A simulated certificate's fingerprint."""
    return hashlib.blake2b(der, digest_size=_REF).digest()


class SimAuthenticator:
    """One simulated node's authenticator: proves as ``name``, verifies anyone."""

    def __init__(self, identities: SimIdentities, name: str) -> None:
        self._ids = identities
        self.name = name
        self._der = identities.certificate(name)
        self._ref = fingerprint(self._der)
        own = identities.check(self._der)
        assert not isinstance(own, str)
        self._held: dict[bytes, tuple[Cert, bytes]] = {self._ref: (own, self._der)}

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """Our certificate and a MAC under our key (whatever ``meta`` claims), full form."""
        mac = self._ids._mac(self.name, encode_statement(kind, incarnation, meta))
        return (_FULL + self._der + mac).ljust(self._ids.proof_size, b"\x00")

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """None if ``meta.name``'s holder made this statement, else the reason."""
        if not proof:
            return "missing-proof"
        form = proof[:1]
        if form == _FULL and len(proof) >= 1 + CERT_SIZE + _MAC:
            der, mac = proof[1:1 + CERT_SIZE], proof[1 + CERT_SIZE:1 + CERT_SIZE + _MAC]
            cert = self._learn(der)
            if isinstance(cert, str):
                return cert
        elif form == _COMPACT and len(proof) >= 1 + _REF + _MAC:
            ref, mac = proof[1:1 + _REF], proof[1 + _REF:1 + _REF + _MAC]
            found = self._lookup(ref)
            if found is None:
                return UNKNOWN_CERT
            cert = found
        else:
            return "malformed-proof"
        name, tags = cert
        if name in self._ids.revoked:
            return "revoked"
        if name != meta.name:
            return "name-mismatch"
        if tuple(sorted(meta.tags)) != tags:
            return "tags-mismatch"
        if mac != self._ids._mac(name, encode_statement(kind, incarnation, meta)):
            return "bad-signature"
        return None

    def for_gossip(self, proof: bytes) -> bytes:
        """The compact form of a full proof."""
        if proof[:1] != _FULL or len(proof) < 1 + CERT_SIZE + _MAC:
            return proof
        ref = fingerprint(proof[1:1 + CERT_SIZE])
        mac = proof[1 + CERT_SIZE:1 + CERT_SIZE + _MAC]
        size = min(COMPACT_PROOF_SIZE, self._ids.proof_size) if self._ids.proof_size else 0
        return (_COMPACT + ref + mac).ljust(size, b"\x00")

    def for_state(self, meta: NodeMeta, proof: bytes) -> bytes:
        """The full form of a compact proof whose certificate is held."""
        if proof[:1] != _COMPACT or len(proof) < 1 + _REF + _MAC:
            return proof
        der = self.certificate(proof[1:1 + _REF])
        if der is None:
            return proof
        mac = proof[1 + _REF:1 + _REF + _MAC]
        return (_FULL + der + mac).ljust(self._ids.proof_size, b"\x00")

    def reference(self, meta: NodeMeta, proof: bytes) -> bytes | None:
        """The fingerprint a compact proof names."""
        if proof[:1] != _COMPACT or len(proof) < 1 + _REF + _MAC:
            return None
        return proof[1:1 + _REF]

    def certificate(self, reference: bytes) -> bytes | None:
        """A held certificate by fingerprint."""
        held = self._held.get(reference) or self._ids.warm.get(reference)
        return None if held is None else held[1]

    def learn(self, certificate: bytes) -> str | None:
        """Hold a certificate the CA signed and did not revoke."""
        cert = self._learn(certificate)
        if isinstance(cert, str):
            return cert
        return "revoked" if cert[0] in self._ids.revoked else None

    def _lookup(self, ref: bytes) -> Cert | None:
        held = self._held.get(ref) or self._ids.warm.get(ref)
        return None if held is None else held[0]

    def _learn(self, der: bytes) -> Cert | str:
        ref = fingerprint(der)
        found = self._lookup(ref)
        if found is not None:
            return found
        cert = self._ids.check(der)
        if isinstance(cert, str):
            return cert
        if cert[0] in self._ids.revoked:  # as the real CA check: never held once revoked
            return "revoked"
        self._held[ref] = (cert, der)
        return cert
