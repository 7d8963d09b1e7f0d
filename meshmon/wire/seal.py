"""Sealing and opening of UDP datagrams between mesh members. Sans-IO: ``now`` is passed in.

Theory of operation
-------------------
Every node holds an ECDSA P-256 key certified by the mesh CA (:mod:`meshmon.pki`). P-256 keys
also do ECDH, so any two members A and B share a static secret ``Z = ECDH(a, B) = ECDH(b, A)``
that nobody else can compute. From it each direction gets its own AES-256-GCM key::

    K(A->B, epoch) = HKDF-SHA256(Z, salt="meshmon-seal-v1" || epoch,
                                 info=fingerprint(A) || fingerprint(B))

A datagram is ``header || AES-GCM(K, nonce, plaintext, aad=header)`` with the 22-byte header::

    version:1  purpose:1  epoch:4  sender_id:8  counter:8      (big endian)

``sender_id`` is the first 8 bytes of the SHA-256 certificate fingerprint; the receiver looks the
sender's certificate up by it (certificates are learned over mTLS, see :mod:`meshmon.net`). The
nonce is ``epoch || counter`` (12 bytes, never sent twice under one key: the counter only grows).
The counter is the sender's wall clock in microseconds, bumped to stay strictly increasing, so a
restarted sender never reuses a nonce and the receiver can judge freshness from it.

Rotation: ``epoch = floor(unix_time / rotation)``; keys change every epoch without any message
or restart, and receivers accept the previous, current and next epoch (clock skew).

Threat model
------------
* Outsiders (no certificate from the mesh CA): cannot compute any key, so cannot read, inject or
  modify datagrams. Every failure is a :class:`SealError` with a reason; no state changes.
* A member C cannot forge A's datagrams to B: it does not know ``Z(A, B)``. The only party other
  than A that can make ``K(A->B)`` is B itself, which can only fool itself.
* Replay: the receiver keeps, per sender, the highest counter seen, a floor ``reorder`` seconds
  (default 2 s) below it, and the set of counters accepted above the floor (at most
  ``window`` of them; when full the floor rises). A counter at or below the floor, or already in
  the set, is refused: datagrams may arrive reordered by up to ``reorder`` seconds, never twice.
  Counters more than ``max_age`` seconds away from the receiver's clock are refused too, which
  bounds replays to a receiver that lost its state by a restart. Hosts' clocks must therefore
  agree within ``max_age`` (default 120 s); a sender whose clock was stepped back across a restart
  is refused until its clock passes its last counter (at most ``max_age``).
* Revocation: at open and seal time the peer's serial is checked against the current
  :class:`meshmon.pki.Trust` CRL, and :meth:`Keyring.prune` drops revoked or expired peers and
  their cached keys; a CRL update takes effect at the next datagram.
* Not covered: forward secrecy (a stolen node key decrypts recorded traffic of that node; rotate
  by reissuing certificates), traffic analysis (sizes, timing, ``sender_id`` in clear), and
  denial of service by flooding (bounded by the cost of one header parse + one AES-GCM check).

Overhead: 22-byte header + 16-byte tag = 38 bytes; a datagram is at most 1399 bytes, so the
plaintext budget is :data:`MAX_PLAINTEXT` = 1361 bytes.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshmon.pki import CertificateError, NodeIdentity, PeerIdentity, Trust

VERSION = 1
"""Wire format version byte."""
_HEADER = struct.Struct(">BBI8sQ")
HEADER_LEN = _HEADER.size
"""Bytes of clear header in front of the ciphertext (22)."""
TAG_LEN = 16
"""AES-GCM tag length."""
OVERHEAD = HEADER_LEN + TAG_LEN
"""Bytes a sealed datagram adds to its plaintext (38)."""
MAX_DATAGRAM = 1399
"""Largest datagram sent or accepted: strictly under 1400 bytes."""
MAX_PLAINTEXT = MAX_DATAGRAM - OVERHEAD
"""Largest plaintext :meth:`Keyring.seal` accepts (1361)."""
_SALT = b"meshmon-seal-v1"

REASONS = (
    "oversized", "truncated", "version", "unknown_sender", "revoked", "epoch", "stale",
    "replay", "auth",
)  # fmt: skip
"""Every reason :class:`SealError` can carry (drivers count drops per reason)."""


class SealError(Exception):
    """A datagram could not be sealed or opened; ``reason`` is one of :data:`REASONS` or "send".

    The only exception :meth:`Keyring.open` raises for any input bytes.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SealConfig:
    """Key rotation and replay settings."""

    rotation: float = 3600.0
    """Seconds per key epoch: keys roll hourly, so a key is used for at most ~3 hours."""
    max_age: float = 120.0
    """Seconds a datagram's counter may lie from our clock (NTP-synced hosts agree far better)."""
    reorder: float = 2.0
    """Seconds a datagram may lag a newer one from the same sender and still be accepted; SWIM
    messages older than a couple of probe intervals are useless anyway."""
    window: int = 1024
    """Counters remembered per sender within ``reorder``: 500 datagrams/s from one peer, far
    above a gossip node's rate; beyond it the floor rises and late datagrams count as replays."""


@dataclass(frozen=True)
class Opened:
    """An authenticated datagram."""

    sender: PeerIdentity
    purpose: int
    plaintext: bytes


def node_id_of(fingerprint_hex: str) -> bytes:
    """The 8-byte sender id of a certificate fingerprint (hex SHA-256)."""
    return bytes.fromhex(fingerprint_hex)[:8]


@dataclass
class _Peer:
    identity: PeerIdentity
    public_key: ec.EllipticCurvePublicKey
    shared: bytes | None = None
    keys: dict[tuple[int, bool], AESGCM] = field(default_factory=dict)
    highest: int = -1
    floor: int = -1
    seen: set[int] = field(default_factory=set)


class Keyring:
    """This node's sealing state: known peer certificates, derived keys, counters, windows.

    Args:
        identity: this node's certificate and key.
        trust: the mesh CA and CRL (shared with TLS, so a CRL update applies here too).
        config: rotation and freshness settings.
    """

    def __init__(self, identity: NodeIdentity, trust: Trust, config: SealConfig | None = None):
        self.identity = identity
        self.trust = trust
        self.config = config or SealConfig()
        self.node_id = node_id_of(identity.peer.fingerprint)
        self._fp = bytes.fromhex(identity.peer.fingerprint)
        self._peers: dict[bytes, _Peer] = {}
        self._by_name: dict[str, bytes] = {}
        self._counter = 0

    # -- peers ---------------------------------------------------------------------------------

    def add_peer(self, cert: x509.Certificate | bytes, now: float) -> PeerIdentity:
        """Verify a peer's certificate (CA, validity, CRL) and remember it.

        Raises:
            CertificateError: the certificate is not acceptable; the message says why.
        """
        if isinstance(cert, bytes):
            try:
                cert = x509.load_der_x509_certificate(cert)
            except ValueError as exc:
                raise CertificateError(f"not a DER certificate ({exc})") from None
        peer = self.trust.verify(cert, dt.datetime.fromtimestamp(now, dt.UTC))
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CertificateError(f"certificate of {peer.name!r} has no P-256 key")
        nid = node_id_of(peer.fingerprint)
        old = self._by_name.get(peer.name)
        if old is not None and old != nid:
            self._peers.pop(old, None)  # the node got a new certificate
        if nid not in self._peers:
            self._peers[nid] = _Peer(peer, key)
        self._by_name[peer.name] = nid
        return peer

    def peer(self, name: str) -> PeerIdentity | None:
        """The known, currently acceptable certificate identity of node ``name``."""
        nid = self._by_name.get(name)
        return self._peers[nid].identity if nid in self._peers else None

    def peers(self) -> list[PeerIdentity]:
        """All known peers."""
        return [p.identity for p in self._peers.values()]

    def prune(self, now: float) -> list[str]:
        """Forget peers whose certificate is now revoked or expired; returns their names."""
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        gone = [
            nid for nid, p in self._peers.items()
            if self.trust.is_revoked(p.identity.serial) or when > p.identity.not_after
        ]  # fmt: skip
        names = []
        for nid in gone:
            name = self._peers.pop(nid).identity.name
            if self._by_name.get(name) == nid:
                del self._by_name[name]
            names.append(name)
        return names

    # -- keys ----------------------------------------------------------------------------------

    def _aead(self, peer: _Peer, epoch: int, outgoing: bool) -> AESGCM:
        cached = peer.keys.get((epoch, outgoing))
        if cached is not None:
            return cached
        if peer.shared is None:
            peer.shared = self.identity.private_key.exchange(ec.ECDH(), peer.public_key)
        theirs = bytes.fromhex(peer.identity.fingerprint)
        info = self._fp + theirs if outgoing else theirs + self._fp
        key = HKDF(hashes.SHA256(), 32, _SALT + struct.pack(">I", epoch), info).derive(peer.shared)
        aead = AESGCM(key)
        for old in [k for k in peer.keys if abs(k[0] - epoch) > 2]:
            del peer.keys[old]
        peer.keys[(epoch, outgoing)] = aead
        return aead

    def _remember(self, peer: _Peer, counter: int) -> None:
        peer.seen.add(counter)
        if counter > peer.highest:
            peer.highest = counter
            floor = counter - int(self.config.reorder * 1_000_000)
            if floor > peer.floor:
                peer.floor = floor
                peer.seen = {c for c in peer.seen if c > floor}
        if len(peer.seen) > self.config.window:  # keep the newest half: amortised sorting
            ordered = sorted(peer.seen)
            keep = max(1, self.config.window // 2)
            peer.floor = ordered[-keep - 1]
            peer.seen = set(ordered[-keep:])

    def _epoch(self, now: float) -> int:
        return int(now // self.config.rotation) & 0xFFFFFFFF

    # -- seal / open ---------------------------------------------------------------------------

    def seal(self, peer_name: str, plaintext: bytes, now: float, purpose: int = 0) -> bytes:
        """Seal ``plaintext`` for node ``peer_name``.

        Raises:
            SealError: reason "send": the peer is unknown or revoked, or the plaintext is larger
                than :data:`MAX_PLAINTEXT`.
        """
        if len(plaintext) > MAX_PLAINTEXT:
            raise SealError("send", f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        nid = self._by_name.get(peer_name)
        peer = self._peers.get(nid) if nid is not None else None
        if peer is None:
            raise SealError("send", f"no certificate known for {peer_name!r}; exchange keys first")
        if self.trust.is_revoked(peer.identity.serial):
            raise SealError("send", f"certificate of {peer_name!r} is revoked")
        epoch = self._epoch(now)
        self._counter = max(self._counter + 1, int(now * 1_000_000))
        header = _HEADER.pack(VERSION, purpose & 0xFF, epoch, self.node_id, self._counter)
        nonce = header[2:6] + header[14:22]
        return header + self._aead(peer, epoch, True).encrypt(nonce, plaintext, header)

    def open(self, datagram: bytes, now: float) -> Opened:
        """Authenticate and decrypt ``datagram``; on success record its counter (replay window).

        Raises:
            SealError: for every bad input (its ``reason`` says which check failed); the
                keyring is unchanged in that case.
        """
        size = len(datagram)
        if size > MAX_DATAGRAM:
            raise SealError("oversized", f"datagram of {size} bytes exceeds {MAX_DATAGRAM}")
        if size < OVERHEAD:
            raise SealError("truncated", f"datagram of {size} bytes is shorter than {OVERHEAD}")
        version, purpose, epoch, nid, counter = _HEADER.unpack_from(datagram)
        if version != VERSION:
            raise SealError("version", f"unknown seal version {version}")
        peer = self._peers.get(nid)
        if peer is None:
            raise SealError("unknown_sender", f"no certificate known for sender id {nid.hex()}")
        name = peer.identity.name
        if self.trust.is_revoked(peer.identity.serial):
            raise SealError("revoked", f"datagram from revoked node {name!r}")
        if abs(epoch - self._epoch(now)) > 1:
            raise SealError("epoch", f"datagram from {name!r} has key epoch {epoch}, far from ours")
        if abs(counter / 1_000_000 - now) > self.config.max_age:
            raise SealError("stale", f"datagram from {name!r} is timestamped too far from now")
        if counter <= peer.floor or counter in peer.seen:
            raise SealError("replay", f"replayed or too old datagram from {name!r}")
        header = datagram[:HEADER_LEN]
        try:
            plaintext = self._aead(peer, epoch, False).decrypt(
                header[2:6] + header[14:22], datagram[HEADER_LEN:], header
            )
        except InvalidTag:
            raise SealError(
                "auth", f"datagram claiming to be from {name!r} failed authentication"
            ) from None
        self._remember(peer, counter)
        return Opened(peer.identity, purpose, plaintext)
