"""Certificates by reference in the simulator: mass joins converge, and a liar's references
(unknown, forged, another CA's, revoked, endless) never change anyone's view (seeded)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from meshmon.membership import EventKind, Membership, NodeMeta, State, StreamKind, codec, lan
from meshmon.membership.certs import CertFetches, Statement
from meshmon.membership.messages import Alive
from meshmon.sim import COMPACT_PROOF_SIZE, SimIdentities, Simulation, make_meta, start_mesh
from meshmon.sim.identities import CERT_SIZE, fingerprint
from tests.test_sim_identity import _honest, _refused, _start_liar
from tests.test_sim_membership import mesh

EVIL_IP = "10.66.0.1"


def _all_alive(sim: Simulation, n: int) -> bool:
    return all(sum(m.state is State.ALIVE for m in c.members()) == n for c in sim.running())


@pytest.mark.parametrize("seed", [1, 3])
def test_forty_nodes_joining_at_once_converge_within_seconds(seed: int) -> None:
    # With the certificate inline (one Alive per datagram) this took 13-18 simulated seconds.
    sim = Simulation(seed)
    start_mesh(sim, lan(), 40)
    sim.run_until(4.0, stop=lambda: _all_alive(sim, 40))
    assert _all_alive(sim, 40), f"not converged after {sim.now:.2f}s"
    stats = [c.stats for c in sim.running()]
    assert sum(s["unknown_cert"] for s in stats) > 0  # certificates were fetched on the way
    assert sum(s["certs_learned"] for s in stats) > 0
    assert sum(_refused(sim, but="").values()) == 0
    assert sim.max_datagram <= lan().max_datagram_plaintext


def _lie(meta: NodeMeta, proof: bytes) -> bytes:
    return codec.encode_message(Alive(5, meta, proof))


def test_compact_proofs_with_unknown_or_forged_references_never_change_the_view() -> None:
    sim, _names, rec = mesh(16, seed=31)
    _start_liar(sim, make_meta(900, address=EVIL_IP, name="evil"))
    sim.run_for(20.0)
    evil = sim.core("evil")
    victim = make_meta(4)
    mac = b"\x00" * 16
    ghost = make_meta(901, address=EVIL_IP, name="ghost")
    hijack = dataclasses.replace(victim, address=EVIL_IP)
    victim_ref = fingerprint(sim.identities.certificate(victim.name))
    lies = [
        _lie(ghost, (b"\x02" + b"\x07" * 32 + mac).ljust(COMPACT_PROOF_SIZE, b"\0")),
        _lie(hijack, (b"\x02" + b"\x08" * 32 + mac).ljust(COMPACT_PROOF_SIZE, b"\0")),
        # the victim's real certificate, with evil's signature over the hijacked address
        _lie(hijack, evil._auth.for_gossip(evil._auth.prove(State.ALIVE, 5, hijack))
             .replace(fingerprint(sim.identities.certificate("evil")), victim_ref)),
    ]
    for name in _honest(sim):
        evil._send(sim.nodes[name].meta.udp_addr, lies)
    sim._after(sim.nodes["evil"])
    sim.run_for(30.0)
    for name in _honest(sim):
        core = sim.core(name)
        assert core.member("ghost") is None
        assert core.member(victim.name).meta == victim  # type: ignore[union-attr]
        assert core.stats["unknown_cert"] >= 2  # the made-up references, each a miss
        assert len(core._certs) == 0  # nothing left waiting
    assert set(_refused(sim)) == {"bad-signature"}  # the real certificate, the wrong signer
    assert rec.first[(EventKind.SUSPECT, victim.name)] == {}


@pytest.mark.parametrize("bad", ["other-ca", "revoked"])
def test_a_fetched_certificate_of_another_ca_or_revoked_is_refused(bad: str) -> None:
    sim, _names, _rec = mesh(12, seed=32)
    _start_liar(sim, make_meta(900, address=EVIL_IP, name="evil"))
    sim.run_for(20.0)
    newcomer = make_meta(50)
    if bad == "other-ca":  # the same name, certified by a CA the mesh does not trust
        other = SimIdentities(seed=99)
        der = other.certify(newcomer.name)
        proof = other.authenticator(newcomer.name).prove(State.ALIVE, 0, newcomer)
    else:  # certified by the mesh CA, then revoked
        der = sim.identities.certify(newcomer.name)
        proof = sim.identities.authenticator(newcomer.name).prove(State.ALIVE, 0, newcomer)
        sim.identities.revoked.add(newcomer.name)
    ref = fingerprint(der)
    compact = (b"\x02" + ref + proof[1 + CERT_SIZE:1 + CERT_SIZE + 16]).ljust(
        COMPACT_PROOF_SIZE, b"\0")
    evil = sim.core("evil")
    evil._auth._held[ref] = ((newcomer.name, ()), der)  # type: ignore[attr-defined]
    before = {n: dict(sim.core(n).stats) for n in _honest(sim)}
    lie = _lie(newcomer, compact)
    for name in _honest(sim):
        evil._send(sim.nodes[name].meta.udp_addr, [lie])
    sim._after(sim.nodes["evil"])
    sim.run_for(10.0)
    for name in _honest(sim):
        core, was = sim.core(name), before[name]
        assert core.member(newcomer.name) is None
        assert core.stats["unknown_cert"] > was.get("unknown_cert", 0)
        assert core.stats["certs_refused"] > was.get("certs_refused", 0)  # fetched, refused
        assert core.stats["certs_learned"] == was.get("certs_learned", 0)
        assert core._auth.certificate(ref) is None
        assert len(core._certs) == 0
    assert sum(_refused(sim).values()) == 0  # the statement itself was never verifiable


def test_a_liar_cannot_make_a_node_fetch_unbounded_certificates() -> None:
    ids = SimIdentities(7)
    ids.certify("n00000")
    ids.certify("evil")
    cfg = lan()
    node = Membership(cfg, make_meta(0), random.Random(1), 0.0,
                      auth=ids.authenticator("n00000"))
    rng = random.Random(2)
    liar = ("10.66.0.1", 7946)
    sent = 0
    for round_ in range(50):  # 50 datagrams of 7 made-up references each, from two addresses
        msgs = []
        for _ in range(7):
            meta = make_meta(1000 + sent)
            ref = rng.randbytes(32)
            msgs.append(_lie(meta, (b"\x02" + ref + b"\0" * 16).ljust(98, b"\0")))
            sent += 1
        src = liar if round_ % 2 else ("10.66.0.2", 7946)
        node.handle_datagram(round_ * 0.01, src, codec.frame(msgs))
    requests = [r for r in node.take_stream_requests() if r.kind is StreamKind.CERTS]
    assert len(requests) == cfg.cert_fetches  # in flight at once, no more
    asked = [codec.decode_blobs(r.payload, cfg.cert_batch, 64) for r in requests]
    assert all(len(refs) <= cfg.cert_batch for refs in asked)
    assert len({ref for refs in asked for ref in refs}) == sum(len(refs) for refs in asked)
    assert len(node._certs) <= cfg.cert_pending
    assert node._certs.dropped > 0 and node.stats["unknown_cert"] == sent
    # the liar answers nothing useful: each answer frees one slot, and nothing changes
    for req in requests:
        node.stream_result(1.0, req.token, True, codec.encode_blobs([]))
    more = [r for r in node.take_stream_requests() if r.kind is StreamKind.CERTS]
    assert len(more) <= cfg.cert_fetches
    assert node.num_live() == 1 and len(node.members()) == 1
    assert not node.refused


def test_fetch_bookkeeping_asks_once_per_reference_and_keeps_the_newest_statement() -> None:
    fetches = CertFetches(dataclasses.replace(lan(), cert_fetches=1, cert_batch=2,
                                              cert_pending=2))
    meta = make_meta(1)
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    fetches.miss(Statement(State.ALIVE, 1, meta, b"p1", b"r1"), a)
    fetches.miss(Statement(State.ALIVE, 2, meta, b"p2", b"r1"), b)  # same reference: once
    fetches.miss(Statement(State.ALIVE, 1, make_meta(2), b"p", b"r2"), a)
    batches = fetches.batches()
    assert batches == [(a, [b"r1", b"r2"])]
    fetches.started(10, [b"r1", b"r2"])
    fetches.miss(Statement(State.ALIVE, 1, make_meta(3), b"p", b"r3"), b)
    assert fetches.batches() == []  # one fetch in flight at most
    assert fetches.dropped == 1 and len(fetches) == 2  # the oldest waiting statement went
    assert fetches.finished(10) == [b"r1", b"r2"]
    ready = fetches.ready(lambda ref: ref == b"r2")
    assert [s.meta.name for s in ready] == ["n00002"]
    fetches.forget([b"r1"])
    assert fetches.batches() == [(b, [b"r3"])]


def test_a_lie_naming_another_certificate_does_not_displace_a_waiting_statement() -> None:
    fetches = CertFetches(lan())
    meta = make_meta(1)
    honest = Statement(State.ALIVE, 1, meta, b"p", b"real")
    fetches.miss(honest, ("10.0.0.1", 1))
    fetches.miss(Statement(State.ALIVE, 9, meta, b"q", b"made-up"), ("10.66.0.1", 1))
    assert len(fetches) == 2
    assert fetches.ready(lambda ref: ref == b"real") == [honest]
