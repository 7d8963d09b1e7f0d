"""The certificate-backed authenticator with real certificates from the mesh CA (synchronous)."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from meshmon import pki
from meshmon.membership import Membership, NodeMeta, State, Unchecked, codec, lan
from meshmon.membership.identity import CertAuthenticator
from meshmon.membership.messages import Alive, Dead
from tests.conftest import Mesh

ALIVE, LEFT = State.ALIVE, State.LEFT


def _meta(identity: pki.NodeIdentity, address: str = "127.0.0.1", **changes: object) -> NodeMeta:
    meta = NodeMeta(identity.name, address, 7946, 7946, identity.peer.tags, "test",
                    bytes.fromhex(identity.peer.fingerprint))
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


@pytest.fixture
def pair(mesh: Mesh) -> tuple[CertAuthenticator, CertAuthenticator, pki.NodeIdentity]:
    """(n1's authenticator, a verifier's authenticator, n1's identity)."""
    n1, _ = mesh.identity(mesh.node("n1", tags=("dc-east", "probe"), ips=("127.0.0.1",)))
    n2, trust2 = mesh.identity(mesh.node("n2"))
    _, trust1 = mesh.identity(mesh.node("n1-copy"))  # n1's own Trust object
    return CertAuthenticator(n1, trust1), CertAuthenticator(n2, trust2), n1


def test_own_statements_verify_and_fit_a_datagram(pair: tuple) -> None:  # type: ignore[type-arg]
    me, verifier, ident = pair
    meta = _meta(ident)
    proof = me.prove(ALIVE, 3, meta)
    assert verifier.verify(ALIVE, 3, meta, proof) is None
    assert verifier.verify(LEFT, 3, meta, me.prove(LEFT, 3, meta)) is None
    assert 550 < len(proof) < 800
    alive = codec.encode_message(Alive(3, meta, proof))
    assert len(alive) + codec.FRAME_OVERHEAD + 40 < lan().max_datagram_plaintext
    leave = codec.encode_message(Dead(3, meta.name, meta.name, meta, me.prove(LEFT, 3, meta)))
    assert len(leave) < lan().max_datagram_plaintext // 2 + 200


def test_metadata_must_match_the_certificate(pair: tuple) -> None:  # type: ignore[type-arg]
    me, verifier, ident = pair
    cases = {
        "name-mismatch": _meta(ident, name="n2"),
        "tags-mismatch": _meta(ident, tags=("dc-east", "probe", "admin")),
        "fingerprint-mismatch": _meta(ident, cert_fingerprint=b"\x00" * 32),
        "address-mismatch": _meta(ident, address="127.0.0.9"),
    }
    for reason, meta in cases.items():
        # n1 signs a lie with its own, valid key: the signature is fine, the claim is not
        assert verifier.verify(ALIVE, 1, meta, me.prove(ALIVE, 1, meta)) == reason
    # tag order does not matter; the set does
    meta = _meta(ident, tags=("probe", "dc-east"))
    assert verifier.verify(ALIVE, 1, meta, me.prove(ALIVE, 1, meta)) is None


def test_signature_binds_kind_incarnation_and_every_field(pair: tuple) -> None:  # type: ignore[type-arg]
    me, verifier, ident = pair
    meta = _meta(ident)
    proof = me.prove(ALIVE, 5, meta)
    assert verifier.verify(ALIVE, 6, meta, proof) == "bad-signature"  # replayed at a higher inc
    assert verifier.verify(LEFT, 5, meta, proof) == "bad-signature"  # an alive is not a leave
    assert verifier.verify(ALIVE, 5, dataclasses.replace(meta, udp_port=1), proof) \
        == "bad-signature"
    der, sig = cbor2.loads(proof)
    tampered = cbor2.dumps([der, sig[:-1] + bytes([sig[-1] ^ 1])])
    assert verifier.verify(ALIVE, 5, meta, tampered) == "bad-signature"
    assert verifier.verify(ALIVE, 5, meta, b"") == "missing-proof"
    assert verifier.verify(ALIVE, 5, meta, b"\xff\x00junk") == "malformed-proof"
    assert verifier.verify(ALIVE, 5, meta, cbor2.dumps([b"not a cert", sig])) == "malformed-proof"
    assert verifier.verify(ALIVE, 5, meta, proof) is None  # the original still verifies


def test_certificate_of_another_mesh_is_untrusted(make_mesh: Callable[[str], Mesh]) -> None:
    ours, theirs = make_mesh("ours"), make_mesh("theirs")
    _, trust = ours.identity(ours.node("n2"))
    verifier = CertAuthenticator(None, trust)
    stranger, _ = theirs.identity(theirs.node("n1"))
    meta = _meta(stranger)
    proof = CertAuthenticator(stranger, theirs.identity(theirs.node("x"))[1]).prove(ALIVE, 1, meta)
    assert verifier.verify(ALIVE, 1, meta, proof) == "untrusted-cert"


def test_revocation_applies_to_cached_results(mesh: Mesh) -> None:
    node = mesh.node("n1")
    ident, _ = mesh.identity(node)
    _, trust = mesh.identity(mesh.node("n2"))
    verifier = CertAuthenticator(None, trust)
    meta = _meta(ident)
    proof = CertAuthenticator(ident, trust).prove(ALIVE, 1, meta)
    assert verifier.verify(ALIVE, 1, meta, proof) is None  # now cached
    pki.revoke(mesh.ca_dir, "n1")
    assert trust.update_crl(pki.Trust.from_files(mesh.ca_cert, mesh.crl).crl)
    assert verifier.verify(ALIVE, 1, meta, proof) == "revoked"
    fresh = CertAuthenticator(None, trust)  # and without a cache: refused by the CA check
    assert fresh.verify(ALIVE, 1, meta, proof) == "revoked"


def test_expired_certificate(mesh: Mesh) -> None:
    ident, trust = mesh.identity(mesh.node("n1", days=1))
    meta = _meta(ident)
    proof = CertAuthenticator(ident, trust).prove(ALIVE, 1, meta)
    later = time.time() + 3 * 86400
    assert CertAuthenticator(None, trust, clock=lambda: later).verify(ALIVE, 1, meta, proof) \
        == "expired"


def test_cache_is_bounded_and_cheap_to_hit(pair: tuple) -> None:  # type: ignore[type-arg]
    me, _, ident = pair
    _, trust = me.identity, me.trust
    verifier = CertAuthenticator(None, trust, cert_cache=2, result_cache=3)
    metas = [(_meta(ident), i) for i in range(10)]
    for meta, inc in metas:
        assert verifier.verify(ALIVE, inc, meta, me.prove(ALIVE, inc, meta)) is None
    assert len(verifier._verified) == 3
    assert len(verifier._certs) == 1


def test_core_refuses_a_replayed_older_life_and_the_owner_refutes_only_proven_news(
        pair: tuple) -> None:  # type: ignore[type-arg]
    me, verifier, ident = pair
    meta = _meta(ident)
    old_proof = me.prove(ALIVE, 1, meta)
    # A verifier node that already knows n1 at incarnation 4 ignores the replayed incarnation 1.
    observer = Membership(lan(), _meta(verifier.identity), random.Random(1), 0.0, auth=verifier)
    new_proof = me.prove(ALIVE, 4, meta)
    observer.handle_datagram(0.0, ("127.0.0.1", 1), codec.encode_datagram([Alive(4, meta,
                                                                                  new_proof)]))
    assert observer.member("n1").incarnation == 4  # type: ignore[union-attr]
    observer.handle_datagram(1.0, ("127.0.0.1", 1), codec.encode_datagram(
        [Alive(1, dataclasses.replace(meta, udp_port=9), old_proof)]))
    assert observer.member("n1").meta == meta  # type: ignore[union-attr]
    # n1 itself refutes a proven older life of its own (say, after a restart) ...
    owner = Membership(lan(), meta, random.Random(2), 0.0, auth=me)
    moved = dataclasses.replace(meta, udp_port=9)
    owner.handle_datagram(0.0, ("127.0.0.1", 1), codec.encode_datagram(
        [Alive(7, moved, me.prove(ALIVE, 7, moved))]))
    assert owner.local.incarnation == 8
    # ... but not a forgery that nobody accepts anyway (no fight, no incarnation race).
    forged = codec.encode_datagram([Alive(50, moved, verifier.prove(ALIVE, 50, moved))])
    owner.handle_datagram(1.0, ("127.0.0.1", 1), forged)
    assert owner.local.incarnation == 8
    assert owner.refused["name-mismatch"] == 1
    assert [r.reason for r in owner.take_refusals()] == ["name-mismatch"]


def test_a_repeated_lie_is_answered_from_the_cache(pair: tuple) -> None:  # type: ignore[type-arg]
    me, verifier, ident = pair
    lie = _meta(ident, name="n2")
    proof = me.prove(ALIVE, 1, lie)
    assert verifier.verify(ALIVE, 1, lie, proof) == "name-mismatch"
    verifier._certs.clear()  # were it re-verified, the certificate would be parsed again
    assert verifier.verify(ALIVE, 1, lie, proof) == "name-mismatch"
    assert len(verifier._certs) == 0


def test_an_announcement_too_large_for_a_datagram_is_a_local_error(pair: tuple) -> None:  # type: ignore[type-arg]
    class Bulky(Unchecked):  # gossips its proofs as they are, like a third-party authenticator
        def prove(self, kind: State, incarnation: int, meta: NodeMeta) -> bytes:
            return b"\x00" * 1300

        def verify(self, kind: State, incarnation: int, meta: NodeMeta,
                   proof: bytes) -> str | None:
            return None

    with pytest.raises(ValueError, match="fewer addresses, names or tags"):
        Membership(lan(), _meta(pair[2]), random.Random(1), 0.0, auth=Bulky())


def test_agent_refuses_to_announce_an_address_its_certificate_does_not_hold(
        mesh: Mesh, tmp_path: Path) -> None:
    from meshmon.agent import Agent, AgentError
    from meshmon.config import load_config

    node = mesh.node("n9", ips=("127.0.0.9",))
    config = tmp_path / "agent.toml"
    config.write_text(f"""\
[node]
name = "n9"
data_dir = "{tmp_path / 'data'}"
[listen]
address = "127.0.0.9"
advertise = "127.0.0.10"
[tls]
ca_cert = "{mesh.ca_cert}"
cert = "{node.cert}"
key = "{node.key}"
crl = "{mesh.crl}"
""")
    with pytest.raises(AgentError, match=r"127\.0\.0\.10, which is not among the IP addresses"):
        Agent(load_config(config))
    config.write_text(config.read_text().replace('advertise = "127.0.0.10"', ""))
    assert Agent(load_config(config)).name == "n9"
