"""The mesh's PKI: a mesh is defined by its certificate authority.

Theory of operation
-------------------
``meshmon ca init DIR`` makes a CA: ``ca.key`` (0600), ``ca.crt``, an empty signed ``crl.pem``
and ``issued.json``, the CA's own register of what it issued. ``meshmon cert issue`` makes a node
key *in the node's folder* and a certificate for it: subject CN = node name, SANs = the node's
IPs and DNS names plus ``urn:meshmon:node:<name>``, and the node's tags in a private extension.
The node folder also receives copies of ``ca.crt`` and ``crl.pem``. Revocation adds serials to a
new CRL with a higher CRL number; because the CA signs it, any peer may pass a CRL on and every
agent keeps the newest valid one it has seen.

Every certificate the mesh sees passes :meth:`Trust.verify`: issued by the mesh CA (signature
checked), inside its validity window, and not on the CRL. The same rules are enforced inside TLS
by the contexts from :func:`server_context` / :func:`client_context` (TLS 1.3, client
certificate required, CRL checked on the leaf). Failures raise a :class:`CertificateError`
subclass whose message says what is wrong and what to do.

Keys are ECDSA P-256: small, fast to verify, supported by every TLS stack.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TAGS_OID = x509.ObjectIdentifier("2.25.171923004410893174590811453290476226851")
"""Private extension holding the node's tags (CBOR list); a UUID-derived OID needs no registry."""

NODE_URI_PREFIX = "urn:meshmon:node:"

CA_KEY, CA_CERT, CRL_FILE, REGISTER = "ca.key", "ca.crt", "crl.pem", "issued.json"
NODE_KEY, NODE_CERT = "node.key", "node.crt"


class PkiError(Exception):
    """Something about the mesh PKI is wrong; the message says what to do."""


class CertificateError(PkiError):
    """A certificate is refused."""


class UnknownCAError(CertificateError):
    """The certificate was not issued by this mesh's CA."""


class ExpiredCertificateError(CertificateError):
    """The certificate's validity ended."""


class NotYetValidError(CertificateError):
    """The certificate's validity has not started (or the clocks disagree)."""


class RevokedCertificateError(CertificateError):
    """The certificate is on the mesh CRL."""


class KeyPermissionError(PkiError):
    """A private key file is readable by others."""


@dataclass(frozen=True)
class PeerIdentity:
    """What a verified certificate says about a node."""

    name: str
    tags: tuple[str, ...]
    serial: int
    fingerprint: str
    """SHA-256 of the DER certificate, hex."""
    not_after: dt.datetime


@dataclass(frozen=True)
class IssuedCert:
    """One row of the CA's register."""

    name: str
    serial: int
    not_after: str
    fingerprint: str
    revoked: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_key_permissions(path: Path) -> None:
    """Refuse a private key that group or others may read.

    Raises:
        KeyPermissionError: with the ``chmod`` that fixes it.
    """
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyPermissionError(
            f"{path}: private key is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        check_key_permissions(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{path}: key file not found") from None
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate, naming the file in any error."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path}: certificate file not found") from None
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate, lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


# --- the CA -------------------------------------------------------------------------------


def _crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, dt.datetime]],
    number: int,
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=3650))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def init_ca(directory: Path, name: str = "meshmon mesh CA", days: int = 3650) -> Path:
    """Create a mesh CA in ``directory`` (created if needed, must not already hold a CA).

    Returns:
        The CA certificate's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise PkiError(f"{directory}: a CA already exists here; use another folder")
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshmon")])  # fmt: skip
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    crl = _crl(key, cert, [], 1, now)
    (directory / CRL_FILE).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    _write_atomic(directory / REGISTER, json.dumps({"crl_number": 1, "issued": []}).encode())
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, dict]:  # type: ignore[type-arg]
    if not (directory / CA_KEY).exists():
        raise PkiError(f"{directory}: no CA here; create one with: meshmon ca init {directory}")
    key = _load_key(directory / CA_KEY)
    cert = load_certificate(directory / CA_CERT)
    try:
        register = json.loads((directory / REGISTER).read_text())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{directory / REGISTER}: unreadable CA register ({exc})") from None
    return key, cert, register


def issue_cert(
    ca_dir: Path,
    name: str,
    out_dir: Path,
    tags: Sequence[str] = (),
    ips: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    days: int = 365,
    not_before: dt.datetime | None = None,
) -> Path:
    """Issue a node certificate; the key is generated in ``out_dir`` and never leaves it.

    ``not_before`` exists for tests that need certificates outside their validity window.

    Returns:
        The node certificate's path.
    """
    from meshmon.config import check_name

    try:
        check_name(name, "node name")
        for tag in tags:
            check_name(tag, "tag")
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise PkiError(str(exc)) from None
    ca_key, ca_cert, register = _load_ca(ca_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = not_before or (_now() - dt.timedelta(minutes=5))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URI_PREFIX + name)]
    sans += [x509.IPAddress(a) for a in addresses]
    sans += [x509.DNSName(d) for d in dns_names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshmon")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.UnrecognizedExtension(TAGS_OID, cbor2.dumps(list(tags))),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _write_private(out_dir / NODE_KEY, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    (out_dir / NODE_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shutil.copyfile(ca_dir / CA_CERT, out_dir / CA_CERT)
    shutil.copyfile(ca_dir / CRL_FILE, out_dir / CRL_FILE)
    register["issued"].append({
        "name": name, "serial": cert.serial_number,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": fingerprint(cert), "revoked_at": None,
    })  # fmt: skip
    _write_atomic(ca_dir / REGISTER, json.dumps(register, indent=1).encode())
    return out_dir / NODE_CERT


def revoke(ca_dir: Path, name: str) -> list[int]:
    """Revoke every unrevoked certificate issued to ``name`` and write a new ``crl.pem``.

    Returns:
        The serials newly revoked.

    Raises:
        PkiError: the CA never issued a certificate to ``name``.
    """
    ca_key, ca_cert, register = _load_ca(ca_dir)
    now = _now()
    rows = [r for r in register["issued"] if r["name"] == name]
    if not rows:
        raise PkiError(f"{ca_dir}: no certificate was issued to {name!r}; see: meshmon cert list")
    newly = []
    for row in rows:
        if row["revoked_at"] is None:
            row["revoked_at"] = now.isoformat()
            newly.append(row["serial"])
    register["crl_number"] += 1
    revoked = [
        (r["serial"], dt.datetime.fromisoformat(r["revoked_at"]))
        for r in register["issued"] if r["revoked_at"]
    ]  # fmt: skip
    crl = _crl(ca_key, ca_cert, revoked, register["crl_number"], now)
    _write_atomic(ca_dir / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))
    _write_atomic(ca_dir / REGISTER, json.dumps(register, indent=1).encode())
    return newly


def list_issued(ca_dir: Path) -> list[IssuedCert]:
    """Every certificate the CA issued, in order."""
    _, _, register = _load_ca(ca_dir)
    return [
        IssuedCert(r["name"], r["serial"], r["not_after"], r["fingerprint"],
                   r["revoked_at"] is not None)
        for r in register["issued"]
    ]  # fmt: skip


# --- trust ----------------------------------------------------------------------------------


def _tags_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_oid(TAGS_OID)
    except x509.ExtensionNotFound:
        return ()
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return ()
    try:
        tags = cbor2.loads(value.value)
    except Exception:  # a malformed extension from a valid CA is not worth failing over
        return ()
    return tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()


def tags_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The tags in a certificate's private extension (empty if none); not a verification."""
    return _tags_of(cert)


def node_name_of(cert: x509.Certificate) -> str:
    """The node name a certificate is for (its ``urn:meshmon:node:`` SAN, else its CN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(NODE_URI_PREFIX):
                return uri.removeprefix(NODE_URI_PREFIX)
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


VERIFIED_CACHE = 16384
"""Certificates whose CA signature :class:`Trust` remembers having checked (~600 bytes each:
a mesh's worth, ~10 MiB only for a mesh that large); beyond that it starts over."""


class Trust:
    """The mesh CA and the newest CRL known; verifies node certificates outside TLS."""

    def __init__(self, ca_cert: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
        self.ca_cert = ca_cert
        self._crl = crl
        self._revoked = frozenset(r.serial_number for r in crl)
        self._check_crl(crl)
        self._issued: dict[bytes, tuple[PeerIdentity, dt.datetime]] = {}
        """SHA-256 of a DER certificate the CA's signature was checked on → what it says and
        its ``not_before``; see :meth:`verify`."""

    @classmethod
    def from_files(cls, ca_path: Path, crl_path: Path) -> Trust:
        """Load the CA certificate and CRL from files."""
        ca = load_certificate(ca_path)
        try:
            crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        except FileNotFoundError:
            raise PkiError(
                f"{crl_path}: CRL file not found; copy crl.pem from the CA folder"
            ) from None
        except ValueError as exc:
            raise PkiError(f"{crl_path}: not a PEM CRL ({exc})") from None
        return cls(ca, crl)

    def _check_crl(self, crl: x509.CertificateRevocationList) -> None:
        if not crl.is_signature_valid(self.ca_cert.public_key()):  # type: ignore[arg-type]
            raise PkiError("the CRL is not signed by the mesh CA; copy crl.pem from the CA folder")

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The newest CRL accepted."""
        return self._crl

    @property
    def crl_number(self) -> int:
        """The CRL's sequence number (higher is newer)."""
        try:
            ext = self._crl.extensions.get_extension_for_class(x509.CRLNumber)
        except x509.ExtensionNotFound:
            return 0
        return int(ext.value.crl_number)

    def update_crl(self, crl: x509.CertificateRevocationList) -> bool:
        """Adopt ``crl`` if the CA signed it and it is newer than ours.

        Returns:
            True if it replaced the current list.
        """
        self._check_crl(crl)
        try:
            number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        except x509.ExtensionNotFound:
            return False
        if number <= self.crl_number:
            return False
        self._crl = crl
        self._revoked = frozenset(r.serial_number for r in crl)
        return True

    def is_revoked(self, serial: int) -> bool:
        """True if ``serial`` is on the current CRL."""
        return serial in self._revoked

    def verify(
        self, cert: x509.Certificate | bytes, now: dt.datetime | None = None
    ) -> PeerIdentity:
        """Check a node certificate (object or DER) against the CA, its validity and the CRL.

        Raises:
            CertificateError: a subclass naming the reason and the remedy.
        """
        der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).digest()
        known = self._issued.get(digest)
        if known is None:
            known = self._check_issued(cert, digest)
        peer, not_before = known
        now = now or _now()
        if now > peer.not_after:
            raise ExpiredCertificateError(
                f"certificate of {peer.name!r} expired on {peer.not_after:%Y-%m-%d %H:%M} "
                "UTC; issue a new one with meshmon cert issue"
            )
        if now < not_before:
            raise NotYetValidError(
                f"certificate of {peer.name!r} is not valid before "
                f"{not_before:%Y-%m-%d %H:%M} UTC; check this host's clock"
            )
        if self.is_revoked(peer.serial):
            raise RevokedCertificateError(
                f"certificate of {peer.name!r} (serial {peer.serial:x}) is revoked; "
                "the node must be issued a new certificate to rejoin"
            )
        return peer

    def _check_issued(self, cert: x509.Certificate | bytes,
                      digest: bytes) -> tuple[PeerIdentity, dt.datetime]:  # fmt: skip
        """Parse ``cert`` and check the CA's signature on it; remember what it says.

        Whether the CA signed these exact bytes never changes, so each certificate is parsed and
        its signature checked once (~0.7 ms of CPU: the TLS handshake, the keyring and the
        membership authenticator each verify a peer's certificate, on every connection). What
        can change — the time, the CRL — :meth:`verify` checks on every call.
        """
        if isinstance(cert, bytes):
            try:
                cert = x509.load_der_x509_certificate(cert)
            except ValueError as exc:
                raise CertificateError(f"not a DER certificate ({exc})") from None
        name = node_name_of(cert)
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise UnknownCAError(
                f"certificate of {name!r} was not issued by this mesh's CA "
                f"({self.ca_cert.subject.rfc4514_string()}); issue one with meshmon cert issue "
                "using this mesh's CA folder"
            ) from None
        peer = PeerIdentity(name, _tags_of(cert), cert.serial_number, digest.hex(),
                            cert.not_valid_after_utc)  # fmt: skip
        if len(self._issued) >= VERIFIED_CACHE:
            self._issued.clear()  # more certificates than a mesh has: start over
        known = self._issued[digest] = (peer, cert.not_valid_before_utc)
        return known


@dataclass(frozen=True)
class NodeIdentity:
    """This node's credentials, checked at load time."""

    cert_path: Path
    key_path: Path
    ca_path: Path
    crl_path: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    peer: PeerIdentity

    @property
    def name(self) -> str:
        """The node name in the certificate."""
        return self.peer.name


def load_identity(
    ca_path: Path, cert_path: Path, key_path: Path, crl_path: Path, now: dt.datetime | None = None
) -> tuple[NodeIdentity, Trust]:
    """Load and check this node's credentials: its own certificate must pass :meth:`Trust.verify`.

    Raises:
        PkiError: naming the file and the remedy.
    """
    trust = Trust.from_files(ca_path, crl_path)
    cert = load_certificate(cert_path)
    key = _load_key(key_path)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise PkiError(f"{key_path} is not the key of {cert_path}; point tls.key at node.key")
    try:
        peer = trust.verify(cert, now)
    except CertificateError as exc:
        raise type(exc)(f"{cert_path}: {exc}") from None
    identity = NodeIdentity(cert_path, key_path, ca_path, crl_path, cert, key, peer)
    return identity, trust


def _context(purpose: ssl.Purpose, identity: NodeIdentity, trust: Trust) -> ssl.SSLContext:
    server = purpose is ssl.Purpose.CLIENT_AUTH
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # peers are addressed by IP; the node name is checked by the caller
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.load_verify_locations(cadata=trust.ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    crl_pem = trust.crl.public_bytes(serialization.Encoding.PEM)
    # The ssl module loads CRLs only from files; the CRL is public, so a temporary file will do
    # (the configured path may be on a read-only mount and may be older than what peers sent).
    with tempfile.NamedTemporaryFile(suffix=".pem") as crl_file:
        crl_file.write(crl_pem)
        crl_file.flush()
        ctx.load_verify_locations(cafile=crl_file.name)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    if server:
        # A TLS 1.3 server sends two session tickets after every handshake by default; no mesh
        # client resumes a session (each request is a fresh stream), so they were pure cost:
        # ~12 % of a request's CPU, both ends (a 50-agent start makes ~600 such requests).
        ctx.num_tickets = 0
    return ctx


def server_context(identity: NodeIdentity, trust: Trust) -> ssl.SSLContext:
    """An ``SSLContext`` for accepting mesh connections: TLS 1.3, client certificate required."""
    return _context(ssl.Purpose.CLIENT_AUTH, identity, trust)


def client_context(identity: NodeIdentity, trust: Trust) -> ssl.SSLContext:
    """An ``SSLContext`` for connecting to mesh peers, presenting this node's certificate."""
    return _context(ssl.Purpose.SERVER_AUTH, identity, trust)
