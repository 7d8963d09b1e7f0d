"""Certificates by reference with real certificates: compact proofs, fetches, and what a fetched
certificate must pass before a statement that names it counts (synchronous, two cores)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from meshmon import pki
from meshmon.membership import Membership, NodeMeta, State, StreamKind, codec, lan
from meshmon.membership.auth import UNKNOWN_CERT
from meshmon.membership.identity import CertAuthenticator
from meshmon.membership.messages import Alive
from tests.conftest import Mesh

ALIVE = State.ALIVE
SRC = ("127.0.0.1", 7946)


def _meta(identity: pki.NodeIdentity, **changes: object) -> NodeMeta:
    meta = NodeMeta(identity.name, "127.0.0.1", 7946, 7946, identity.peer.tags, "test",
                    bytes.fromhex(identity.peer.fingerprint))
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


def _auth(mesh: Mesh, name: str, **kw: object) -> tuple[CertAuthenticator, pki.NodeIdentity]:
    ident, trust = mesh.identity(mesh.node(name, **kw))  # type: ignore[arg-type]
    return CertAuthenticator(ident, trust), ident


def test_compact_proof_is_the_signature_and_expands_back(mesh: Mesh) -> None:
    n1, ident = _auth(mesh, "n1", tags=("dc-east", "probe"))
    meta = _meta(ident)
    full = n1.prove(ALIVE, 3, meta)
    compact = n1.for_gossip(full)
    assert len(compact) == 64 and len(full) > 550
    assert n1.for_state(meta, compact) == full
    assert n1.reference(meta, compact) == meta.cert_fingerprint
    assert n1.reference(meta, full) is None
    full_alive = len(codec.encode_message(Alive(3, meta, full)))
    compact_alive = len(codec.encode_message(Alive(3, meta, compact)))
    assert compact_alive < 170 < 650 < full_alive  # ~7 per datagram instead of 1
    budget = lan().max_datagram_plaintext - codec.FRAME_OVERHEAD
    assert budget // compact_alive >= 7 and budget // full_alive == 1


def test_unknown_certificate_is_a_miss_until_learnt_and_then_fully_checked(
        mesh: Mesh, make_mesh: Callable[[str], Mesh]) -> None:
    n1, ident = _auth(mesh, "n1")
    _, trust = mesh.identity(mesh.node("n2"))
    verifier = CertAuthenticator(None, trust)
    meta = _meta(ident)
    compact = n1.for_gossip(n1.prove(ALIVE, 1, meta))
    assert verifier.verify(ALIVE, 1, meta, compact) == UNKNOWN_CERT
    assert verifier.verify(ALIVE, 1, meta, compact) == UNKNOWN_CERT  # a miss is not cached
    # the same name and fingerprint from another CA: refused, and still a miss
    theirs = make_mesh("theirs")
    stranger, _ = theirs.identity(theirs.node("n1"))
    assert verifier.learn(stranger.certificate.public_bytes(Encoding.DER)) \
        == "untrusted-cert"
    assert verifier.learn(b"\x30\x03junk") == "malformed-proof"
    assert verifier.verify(ALIVE, 1, meta, compact) == UNKNOWN_CERT
    der = n1.certificate(meta.cert_fingerprint)
    assert der is not None and verifier.learn(der) is None
    assert verifier.verify(ALIVE, 1, meta, compact) is None
    # a held certificate does not make a lie true: another name, a forged signature
    assert verifier.verify(ALIVE, 1, dataclasses.replace(meta, name="n9"), compact) \
        == "name-mismatch"
    assert verifier.verify(ALIVE, 2, meta, compact) == "bad-signature"
    assert verifier.verify(ALIVE, 1, dataclasses.replace(meta, cert_fingerprint=b"x"),
                           compact) == "fingerprint-mismatch"
    # revocation applies to held certificates, and a revoked one is not learnt again
    pki.revoke(mesh.ca_dir, "n1")
    assert trust.update_crl(pki.Trust.from_files(mesh.ca_cert, mesh.crl).crl)
    assert verifier.verify(ALIVE, 1, meta, compact) == "revoked"
    assert CertAuthenticator(None, trust).learn(der) == "revoked"


def _fetch(requester: Membership, answer: Callable[[bytes], bytes], now: float) -> int:
    """Carry out the requester's certificate fetches with ``answer``; how many there were."""
    fetches = [r for r in requester.take_stream_requests() if r.kind is StreamKind.CERTS]
    for req in fetches:
        assert req.addr == SRC and req.node is None
        requester.stream_result(now, req.token, True, answer(req.payload))
    return len(fetches)


def test_core_fetches_a_missing_certificate_from_the_sender_and_accepts_the_alive(
        mesh: Mesh) -> None:
    a1, i1 = _auth(mesh, "n1")
    a2, i2 = _auth(mesh, "n2")
    n1 = Membership(lan(), _meta(i1), random.Random(1), 0.0, auth=a1)
    n2 = Membership(lan(), _meta(i2, address="127.0.0.2"), random.Random(2), 0.0, auth=a2)
    gossip = n1._queue.peek("n1")
    assert gossip is not None and len(gossip) < 170  # n1 gossips its Alive compact
    n2.handle_datagram(0.0, SRC, codec.frame([gossip]))
    assert n2.member("n1") is None
    assert n2.stats["unknown_cert"] == 1 and not n2.refused and not n2.take_refusals()
    assert _fetch(n2, n1.certificates, 0.1) == 1
    member = n2.member("n1")  # accepted from the retry buffer, verified in full
    assert member is not None and member.state is ALIVE
    assert n2.stats["certs_learned"] == 1 and not n2.refused
    # push-pull carries the full form: a third node needs no fetch
    a3, i3 = _auth(mesh, "n3")
    n3 = Membership(lan(), _meta(i3, address="127.0.0.3"), random.Random(3), 0.0, auth=a3)
    n3.merge_remote_state(0.2, n2.local_state())
    assert n3.member("n1") is not None and n3.stats["unknown_cert"] == 0


def test_core_refuses_a_fetched_certificate_of_another_ca(
        mesh: Mesh, make_mesh: Callable[[str], Mesh]) -> None:
    a1, i1 = _auth(mesh, "n1")
    a2, i2 = _auth(mesh, "n2")
    n1 = Membership(lan(), _meta(i1), random.Random(1), 0.0, auth=a1)
    n2 = Membership(lan(), _meta(i2, address="127.0.0.2"), random.Random(2), 0.0, auth=a2)
    theirs = make_mesh("theirs")
    stranger, _ = theirs.identity(theirs.node("n1"))
    fake = stranger.certificate.public_bytes(Encoding.DER)
    gossip = n1._queue.peek("n1")
    assert gossip is not None
    n2.handle_datagram(0.0, SRC, codec.frame([gossip]))
    assert _fetch(n2, lambda _: codec.encode_blobs([fake]), 0.1) == 1
    assert n2.member("n1") is None
    assert n2.stats["certs_refused"] == 1 and len(n2._certs) == 0
    # junk or oversized answers change nothing either
    n2.handle_datagram(1.0, SRC, codec.frame([gossip]))
    assert _fetch(n2, lambda _: cbor2.dumps(["junk"]), 1.1) == 1
    n2.handle_datagram(2.0, SRC, codec.frame([gossip]))
    assert _fetch(n2, lambda _: codec.encode_blobs([fake, fake]), 2.1) == 1
    assert n2.stats["malformed_certs"] == 2 and n2.member("n1") is None


def test_certificate_server_answers_only_what_it_holds_and_bounded(mesh: Mesh) -> None:
    a1, i1 = _auth(mesh, "n1")
    n1 = Membership(lan(), _meta(i1), random.Random(1), 0.0, auth=a1)
    own = _meta(i1).cert_fingerprint
    answer = codec.decode_blobs(n1.certificates(codec.encode_blobs([own, b"\x00" * 32])), 2,
                                codec.MAX_PROOF)
    assert answer == [a1.certificate(own)]
    too_many = codec.encode_blobs([b"\x00" * 32] * (lan().cert_batch + 1))
    with pytest.raises(codec.MalformedMessage):
        n1.certificates(too_many)


def test_sim_compact_announcements_weigh_what_real_ones_do(mesh: Mesh) -> None:
    from meshmon.sim import SimIdentities, make_meta

    n1, ident = _auth(mesh, "n1", tags=("dc-east", "probe"))
    meta = _meta(ident, name="n00001", address="10.0.0.1")  # the simulator's name and address
    real = len(codec.encode_message(Alive(1, meta, n1.for_gossip(n1.prove(ALIVE, 1, meta)))))
    ids = SimIdentities(1)
    sim_meta = make_meta(1, tags=("dc-east", "probe"))  # states no fingerprint
    ids.certify(sim_meta.name, sim_meta.tags)
    auth = ids.authenticator(sim_meta.name)
    sim = len(codec.encode_message(Alive(1, sim_meta, auth.for_gossip(auth.prove(ALIVE, 1,
                                                                                  sim_meta)))))
    assert abs(sim - real) <= 0.05 * real


def test_after_a_failed_fetch_the_alive_waits_for_the_certificate_from_an_mtls_peer(
        mesh: Mesh) -> None:
    a1, i1 = _auth(mesh, "n1")
    a2, i2 = _auth(mesh, "n2")
    n1 = Membership(lan(), _meta(i1), random.Random(1), 0.0, auth=a1)
    n2 = Membership(lan(), _meta(i2, address="127.0.0.2"), random.Random(2), 0.0, auth=a2)
    gossip = n1._queue.peek("n1")
    assert gossip is not None
    n2.handle_datagram(0.0, SRC, codec.frame([gossip]))
    (fetch,) = [r for r in n2.take_stream_requests() if r.kind is StreamKind.CERTS]
    assert fetch.deadline >= lan().join_timeout  # as patient as a join
    n2.stream_result(0.5, fetch.token, False)  # the sender was too busy to answer
    assert n2.member("n1") is None and n2.stats["cert_fetches_failed"] == 1
    der = a1.certificate(_meta(i1).cert_fingerprint)
    assert der is not None
    assert n2.learn_certificate(1.0, der)  # say, n1 connected for a push-pull
    assert n2.member("n1") is not None and not n2.refused
