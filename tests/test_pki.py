"""The mesh PKI: issuing, verifying, revoking, and refusing bad credentials with clear reasons."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshmon import pki
from tests.conftest import Mesh

NOW = dt.datetime.now(dt.UTC)


def test_node_certificate_carries_name_tags_and_sans(mesh: Mesh) -> None:
    node = mesh.node("web-1", tags=("dc1", "web"), ips=("127.0.0.2",))
    identity, trust = mesh.identity(node)
    assert identity.name == "web-1"
    assert identity.peer.tags == ("dc1", "web")
    san = identity.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    assert os.stat(node.key).st_mode & 0o777 == 0o600
    assert os.stat(mesh.ca_dir / pki.CA_KEY).st_mode & 0o777 == 0o600
    assert trust.verify(identity.certificate).fingerprint == identity.peer.fingerprint


def test_certificate_from_another_ca_is_refused(make_mesh: Callable[[str], Mesh]) -> None:
    ours, theirs = make_mesh("ours"), make_mesh("theirs")
    intruder = theirs.node("intruder")
    trust = pki.Trust.from_files(ours.ca_cert, ours.crl)
    with pytest.raises(pki.UnknownCAError, match="not issued by this mesh's CA"):
        trust.verify(pki.load_certificate(intruder.cert))
    with pytest.raises(pki.UnknownCAError, match="intruder"):
        pki.load_identity(ours.ca_cert, intruder.cert, intruder.key, ours.crl)


def test_expired_and_not_yet_valid_are_refused(mesh: Mesh) -> None:
    old = mesh.node("old", days=1, not_before=NOW - dt.timedelta(days=10))
    future = mesh.node("future", days=10, not_before=NOW + dt.timedelta(days=2))
    with pytest.raises(pki.ExpiredCertificateError, match=r"expired on .* meshmon cert issue"):
        mesh.identity(old)
    with pytest.raises(pki.NotYetValidError, match="check this host's clock"):
        mesh.identity(future)


def test_revocation_updates_crl_and_is_refused(mesh: Mesh) -> None:
    node = mesh.node("gone")
    _, trust_before = mesh.identity(node)
    serials = pki.revoke(mesh.ca_dir, "gone")
    assert len(serials) == 1
    trust = pki.Trust.from_files(mesh.ca_cert, mesh.crl)
    assert trust.crl_number == trust_before.crl_number + 1
    with pytest.raises(pki.RevokedCertificateError, match="revoked"):
        trust.verify(pki.load_certificate(node.cert))
    # a newer CRL learnt from a peer replaces the old one; an older one is ignored
    assert trust_before.update_crl(trust.crl) is True
    assert trust_before.is_revoked(serials[0])
    assert trust.update_crl(trust_before.crl) is False
    assert [r.revoked for r in pki.list_issued(mesh.ca_dir)] == [True]


def test_a_certificate_verified_once_is_still_checked_for_time_and_revocation(
        mesh: Mesh, make_mesh: Callable[[str], Mesh]) -> None:  # fmt: skip
    node = mesh.node("cached", days=10)
    identity, trust = mesh.identity(node)
    der = pki.load_certificate(node.cert).public_bytes(serialization.Encoding.DER)
    first = trust.verify(der)  # the CA's signature is checked once and remembered
    assert trust.verify(pki.load_certificate(node.cert)) == first == identity.peer
    with pytest.raises(pki.ExpiredCertificateError, match="expired on"):
        trust.verify(der, NOW + dt.timedelta(days=11))
    with pytest.raises(pki.NotYetValidError, match="not valid before"):
        trust.verify(der, NOW - dt.timedelta(days=1))
    pki.revoke(mesh.ca_dir, "cached")
    assert trust.update_crl(pki.Trust.from_files(mesh.ca_cert, mesh.crl).crl)
    with pytest.raises(pki.RevokedCertificateError, match="revoked"):
        trust.verify(der)
    # a certificate from another CA is refused every time, never remembered as good
    intruder = make_mesh("theirs").node("cached")
    for _ in range(2):
        with pytest.raises(pki.UnknownCAError):
            trust.verify(pki.load_certificate(intruder.cert))


def test_crl_from_another_ca_is_refused(make_mesh: Callable[[str], Mesh]) -> None:
    ours, theirs = make_mesh("ours"), make_mesh("theirs")
    trust = pki.Trust.from_files(ours.ca_cert, ours.crl)
    foreign = pki.Trust.from_files(theirs.ca_cert, theirs.crl).crl
    with pytest.raises(pki.PkiError, match="not signed by the mesh CA"):
        trust.update_crl(foreign)


def test_readable_key_is_refused_with_chmod_hint(mesh: Mesh) -> None:
    node = mesh.node("loose")
    os.chmod(node.key, 0o644)
    with pytest.raises(pki.KeyPermissionError, match=f"chmod 600 {node.key}"):
        mesh.identity(node)


def test_key_not_matching_certificate_is_refused(mesh: Mesh) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    with pytest.raises(pki.PkiError, match="is not the key of"):
        pki.load_identity(mesh.ca_cert, a.cert, b.key, mesh.crl)


def test_revoking_unknown_node_says_where_to_look(mesh: Mesh) -> None:
    with pytest.raises(pki.PkiError, match="meshmon cert list"):
        pki.revoke(mesh.ca_dir, "nobody")


def test_ca_init_refuses_to_overwrite(mesh: Mesh) -> None:
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.init_ca(mesh.ca_dir)


def test_garbage_files_are_named(mesh: Mesh) -> None:
    node = mesh.node("n")
    node.cert.write_text("not a certificate")
    with pytest.raises(pki.PkiError, match=f"{node.cert}: not a PEM certificate"):
        mesh.identity(node)
