"""The real :class:`~meshmon.membership.auth.Authenticator`: self-statements signed with the
node's certified key.

Theory of operation
-------------------
A proof is ``CBOR [certificate, signature]``: the author's certificate and its ECDSA P-256
signature (raw ``r || s``, 64 bytes) over the statement's canonical bytes
(:func:`~meshmon.membership.codec.encode_statement`). The certificate comes in one of two
forms (:mod:`meshmon.membership.auth`, "Certificates by reference"):

* full: its DER (~540 bytes; a proof ~610), as :meth:`CertAuthenticator.prove` makes it and
  push-pull states carry it, so any receiver can check a statement from a member it never
  spoke to;
* compact: by reference, as gossip datagrams carry it: the proof is the bare 64-byte
  signature, and the certificate the one whose SHA-256 the metadata's ``cert_fingerprint``
  states (which a full proof's certificate must match as well; the signature covers it). A
  datagram then holds ~8 announcements rather than one. A verifier that does not hold that
  certificate answers ``unknown-cert`` and the core fetches it.

:meth:`CertAuthenticator.verify` accepts a statement only if

* the certificate chains to the mesh CA and is within its validity
  (:meth:`meshmon.pki.Trust.verify`), and is not revoked: the CRL is consulted on every
  call, even for cached results;
* the metadata matches the certificate: ``name`` is the certificate's node name, ``tags`` are
  its tags (the CA grants group membership), ``cert_fingerprint`` is its SHA-256, and
  ``address`` is one of its IP SANs when it has any;
* the signature over the statement verifies under the certificate's key.

Certificates that passed the CA check are cached by fingerprint (from full proofs, from every
mTLS peer via :meth:`~CertAuthenticator.learn`, and from fetches, which go through the same
check), and the outcome for each (statement, proof) digest, both in bounded LRUs, so a statement
relayed by many peers, or a lie repeated, costs one signature check. A compact proof is only
ever resolved against that cache, so it can name nothing the CA did not sign. Revocation and
validity are re-checked on every call.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from meshmon import pki
from meshmon.membership.auth import UNKNOWN_CERT
from meshmon.membership.codec import encode_statement
from meshmon.membership.messages import NodeMeta, State

_SIG_LEN = 64
_REF_LEN = 32  # a SHA-256 fingerprint; no DER certificate is this short


@dataclass(frozen=True, slots=True)
class _Cert:
    """A certificate that chains to the mesh CA, with what verification needs from it."""

    identity: pki.PeerIdentity
    der: bytes
    fingerprint: bytes
    key: ec.EllipticCurvePublicKey
    ips: frozenset[str]
    not_before: dt.datetime


def _reason(exc: pki.CertificateError) -> str:
    if isinstance(exc, pki.RevokedCertificateError):
        return "revoked"
    if isinstance(exc, pki.ExpiredCertificateError | pki.NotYetValidError):
        return "expired"
    return "untrusted-cert"


class _Lru(collections.OrderedDict[bytes, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def hit(self, key: bytes) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: bytes, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class CertAuthenticator:
    """Signs this node's statements; verifies peers' against the mesh CA and CRL.

    Args:
        identity: this node's credentials (None: verify only, as a tool or test might).
        trust: the mesh CA and current CRL (shared with TLS, so CRL updates apply at once).
        clock: wall-clock seconds, for certificate validity.
        cert_cache: certificates remembered by fingerprint (one per member suffices).
        result_cache: verified statements remembered (a few per member: alive, leave, refutes).
    """

    def __init__(self, identity: pki.NodeIdentity | None, trust: pki.Trust, *,
                 clock: Callable[[], float] = time.time, cert_cache: int = 16384,
                 result_cache: int = 65536) -> None:
        self.identity = identity
        self.trust = trust
        self.clock = clock
        self._certs = _Lru(cert_cache)
        self._verified = _Lru(result_cache)
        self._der = (identity.certificate.public_bytes(serialization.Encoding.DER)
                     if identity is not None else b"")
        self._own_ref = hashlib.sha256(self._der).digest() if self._der else b""
        own = self._cert(self._der, clock()) if self._der else None
        self._own = own if isinstance(own, _Cert) else None

    # -- proving ---------------------------------------------------------------------------------

    def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
        """``CBOR [our certificate, signature over the statement]``."""
        if self.identity is None:
            raise RuntimeError("a verify-only authenticator cannot prove statements")
        der_sig = self.identity.private_key.sign(encode_statement(kind, incarnation, meta),
                                                 ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        return bytes(cbor2.dumps([self._der, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))

    def sign_blob(self, data: bytes) -> bytes:
        """A 64-byte signature of application data (alert digests) by this node's key."""
        if self.identity is None:
            raise RuntimeError("a verify-only authenticator cannot sign")
        r, s = decode_dss_signature(self.identity.private_key.sign(data,
                                                                   ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify_blob(self, meta: NodeMeta, data: bytes, sig: bytes) -> str | None:
        """None if ``meta.name``'s certificate (the one its metadata names) signed ``data``."""
        if len(sig) != _SIG_LEN:
            return "malformed-proof"
        cert = self._held(meta.cert_fingerprint)
        if cert is None:
            return UNKNOWN_CERT
        if cert.identity.name != meta.name:
            return "name-mismatch"
        reason = self._still_valid(cert, self.clock())
        if reason is not None:
            return reason
        signature = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                         int.from_bytes(sig[32:], "big"))
        try:
            cert.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad-signature"
        return None

    # -- verifying -------------------------------------------------------------------------------

    def verify(self, kind: State, incarnation: int, meta: NodeMeta, proof: bytes) -> str | None:
        """None if ``meta.name``'s certified key signed this statement; else the reason."""
        if not proof:
            return "missing-proof"
        statement = encode_statement(kind, incarnation, meta)
        digest = hashlib.blake2b(statement + proof, digest_size=20).digest()
        now = self.clock()
        cached: _Cert | str | None = self._verified.hit(digest)
        if isinstance(cached, str):
            return cached  # refused before, for a reason that time cannot change
        if cached is not None:
            return self._still_valid(cached, now)
        if len(proof) == _SIG_LEN:  # compact: the certificate the metadata names
            if len(meta.cert_fingerprint) != _REF_LEN:
                return "fingerprint-mismatch"
            held = self._held(meta.cert_fingerprint)
            if held is None:
                return UNKNOWN_CERT  # not cached: the same proof verifies once it is fetched
            cert, sig = held, proof
        else:
            parsed = _parse(proof)
            if parsed is None:
                return "malformed-proof"
            der, sig = parsed
            found = self._cert(der, now)
            if isinstance(found, str):
                return found
            cert = found
        reason = self._still_valid(cert, now)
        if reason is not None:
            return reason
        reason = self._matches(cert, meta)
        if reason is None:
            signature = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                             int.from_bytes(sig[32:], "big"))
            try:
                cert.key.verify(signature, statement, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                reason = "bad-signature"
        # a lie repeated costs a lookup: mismatches and bad signatures stay what they are
        self._verified.put(digest, reason or cert)
        return reason

    def _cert(self, der: bytes, now: float) -> _Cert | str:
        fp = hashlib.sha256(der).digest()
        cached: _Cert | None = self._certs.hit(fp)
        if cached is not None:
            return cached
        try:
            parsed = x509.load_der_x509_certificate(der)
            identity = self.trust.verify(parsed, dt.datetime.fromtimestamp(now, dt.UTC))
        except ValueError:
            return "malformed-proof"
        except pki.CertificateError as exc:
            return _reason(exc)
        key = parsed.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return "untrusted-cert"
        cert = _Cert(identity, der, fp, key, certificate_ips(parsed),
                     parsed.not_valid_before_utc)
        self._certs.put(fp, cert)
        return cert

    # -- certificates by reference -----------------------------------------------------------

    def for_gossip(self, proof: bytes) -> bytes:
        """The compact form: the bare signature (the metadata names the certificate)."""
        parsed = _parse(proof)
        return proof if parsed is None else parsed[1]

    def for_state(self, meta: NodeMeta, proof: bytes) -> bytes:
        """The full form, if the certificate referred to is held (else ``proof`` unchanged)."""
        if len(proof) != _SIG_LEN:
            return proof
        der = self.certificate(meta.cert_fingerprint)
        return proof if der is None else bytes(cbor2.dumps([der, proof]))

    def reference(self, meta: NodeMeta, proof: bytes) -> bytes | None:
        """The fingerprint a compact proof refers to (the one ``meta`` states)."""
        if len(proof) != _SIG_LEN or len(meta.cert_fingerprint) != _REF_LEN:
            return None
        return meta.cert_fingerprint

    def certificate(self, reference: bytes) -> bytes | None:
        """The DER of a held certificate (ours included) by its SHA-256 fingerprint."""
        cert = self._held(reference)
        return None if cert is None else cert.der

    def _held(self, reference: bytes) -> _Cert | None:
        if reference == self._own_ref and self._own is not None:
            return self._own
        cert: _Cert | None = self._certs.hit(reference)
        return cert

    def learn(self, certificate: bytes) -> str | None:
        """Hold a certificate (DER) that chains to the CA, is valid and not revoked."""
        now = self.clock()
        cert = self._cert(certificate, now)
        return cert if isinstance(cert, str) else self._still_valid(cert, now)

    def _still_valid(self, cert: _Cert, now: float) -> str | None:
        if self.trust.is_revoked(cert.identity.serial):
            return "revoked"
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        if not cert.not_before <= when <= cert.identity.not_after:
            return "expired"
        return None

    @staticmethod
    def _matches(cert: _Cert, meta: NodeMeta) -> str | None:
        if meta.name != cert.identity.name:
            return "name-mismatch"
        if sorted(meta.tags) != sorted(cert.identity.tags):
            return "tags-mismatch"
        if meta.cert_fingerprint != cert.fingerprint:
            return "fingerprint-mismatch"
        if cert.ips and _canonical_ip(meta.address) not in cert.ips:
            return "address-mismatch"
        return None


def _parse(proof: bytes) -> tuple[bytes, bytes] | None:
    """``(certificate or fingerprint, signature)``, or None if ``proof`` is not a proof."""
    try:
        cert, sig = cbor2.loads(proof)
    except Exception:  # cbor2 raises many types for junk; all mean the same here
        return None
    if type(cert) is not bytes or type(sig) is not bytes or len(sig) != _SIG_LEN:
        return None
    return cert, sig


def certificate_ips(cert: x509.Certificate) -> frozenset[str]:
    """The IP addresses in a certificate's SANs (an announced address must be one of them)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def address_allowed(cert: x509.Certificate, address: str) -> bool:
    """Whether peers accept ``address`` in announcements signed with ``cert``."""
    ips = certificate_ips(cert)
    return not ips or _canonical_ip(address) in ips


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text
