"""Members that announce an identity they were not certified for (simulator, seeded).

A member holding a valid certificate for ``evil`` runs the normal protocol but announces
another name, an unknown name, or tags it was not certified for. Every node must refuse it,
the real member must keep its place and never be suspected because of it, and joins,
refutations, restarts with a lower incarnation and leaves must keep working.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest

from meshmon.membership import EventKind, Member, Membership, NodeMeta, State, codec, lan
from meshmon.membership.messages import Alive, Dead
from meshmon.sim import PROOF_SIZE, Simulation, make_meta, node_name
from tests.test_sim_membership import mesh, states

SEED = (make_meta(0).tcp_addr,)
EVIL_IP = "10.66.0.1"


def _refused(sim: Simulation, but: str = "evil") -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for name, node in sim.nodes.items():
        if node.alive and name != but:
            total.update(node.core.refused)
    return total


def _start_liar(sim: Simulation, meta: NodeMeta, incarnation: int = 0,
                tags: tuple[str, ...] = ()) -> None:
    sim.identities.certify("evil", tags)
    sim.add_node(lan(), meta, seeds=SEED, slot="evil", incarnation=incarnation)


def _honest(sim: Simulation) -> list[str]:
    return [name for name, node in sim.nodes.items() if node.alive and name != "evil"]


def test_member_announcing_a_live_members_name_is_refused_everywhere() -> None:
    sim, names, rec = mesh(20, seed=21)
    victim = names[4]
    real = make_meta(4)
    # evil's certificate is valid, but it announces victim's name at a high incarnation.
    _start_liar(sim, dataclasses.replace(real, address=EVIL_IP), incarnation=1000)
    sim.run_for(30.0)
    # Nobody relays a refused statement, so make sure every node hears the lie first-hand.
    evil = sim.core("evil")
    lie = codec.encode_message(Alive(1001, evil.local.meta, evil._auth.prove(
        State.ALIVE, 1001, evil.local.meta)))
    for name in _honest(sim):
        evil._send(sim.nodes[name].meta.udp_addr, [lie])
    sim._after(sim.nodes["evil"])
    sim.run_for(30.0)
    for name in _honest(sim):
        member = sim.core(name).member(victim)
        assert member is not None and member.meta == real, name
        assert member.state is State.ALIVE and member.incarnation == 0
    assert rec.first[(EventKind.SUSPECT, victim)] == {}
    assert rec.first[(EventKind.UPDATED, victim)] == {}
    assert sim.core(victim).stats["refutations"] == 0  # the real member never had to fight
    assert rec.count(EventKind.FAILED) == 0
    refused = _refused(sim)
    assert set(refused) == {"name-mismatch"}
    assert all(sim.core(n).refused["name-mismatch"] > 0 for n in _honest(sim))


@pytest.mark.parametrize("lie", ["ghost", "tags"])
def test_unknown_name_or_uncertified_tags_never_enter_the_view(lie: str) -> None:
    sim, names, rec = mesh(16, seed=22)
    if lie == "ghost":
        meta = make_meta(900, address=EVIL_IP, name="ghost")
        _start_liar(sim, meta)
        listed, reason = "ghost", "name-mismatch"
    else:  # its own name, but a tag the CA did not grant (placement would make it a prober)
        meta = make_meta(900, address=EVIL_IP, name="evil", tags=("probe", "dc-east"))
        _start_liar(sim, meta, tags=("dc-east",))
        listed, reason = "evil", "tags-mismatch"
    sim.run_for(60.0)
    for name in _honest(sim):
        assert sim.core(name).member(listed) is None, name
        assert sim.core(name).num_live() == 16
    assert set(_refused(sim)) == {reason}
    assert rec.count(EventKind.JOINED) == 0 or all(
        subject in names for (kind, subject) in rec.first if kind is EventKind.JOINED)
    assert rec.count(EventKind.SUSPECT) == 0


def test_leave_claimed_for_someone_else_changes_nothing() -> None:
    sim, _names, rec = mesh(16, seed=23)
    target = make_meta(6)
    _start_liar(sim, make_meta(901, address=EVIL_IP, name="evil"))
    sim.run_for(20.0)
    assert states(sim, "evil") == {State.ALIVE}  # an honest evil is a normal member
    evil = sim.core("evil")
    forged = [
        Dead(0, target.name, target.name),  # unsigned leave (an old-style one)
        Dead(0, target.name, target.name, target,
             evil._auth.prove(State.LEFT, 0, target)),  # signed, by the wrong member
    ]
    for i, msg in enumerate(forged):
        evil._queue.put(f"forged{i}", codec.encode_message(msg))
    sim._after(sim.nodes["evil"])
    sim.run_for(30.0)
    assert states(sim, target.name) == {State.ALIVE}
    assert rec.first[(EventKind.LEFT, target.name)] == {}
    assert sim.core(target.name).stats["refutations"] == 0
    assert set(_refused(sim)) == {"missing-proof", "name-mismatch"}


def test_forged_alive_about_a_member_relayed_by_gossip_is_refused() -> None:
    sim, _names, rec = mesh(16, seed=24)
    target = make_meta(7)
    _start_liar(sim, make_meta(902, address=EVIL_IP, name="evil"))
    sim.run_for(20.0)
    evil = sim.core("evil")
    hijack = dataclasses.replace(target, address=EVIL_IP, udp_port=9)
    evil._queue.put("forged", codec.encode_message(
        Alive(77, hijack, evil._auth.prove(State.ALIVE, 77, hijack))))
    real_proof = sim.core(target.name)._proof_of(target.name)  # of another statement
    evil._queue.put("copied", codec.encode_message(Alive(78, hijack, real_proof)))
    sim._after(sim.nodes["evil"])
    sim.run_for(30.0)
    for name in _honest(sim):
        assert sim.core(name).member(target.name).meta == target  # type: ignore[union-attr]
    assert rec.first[(EventKind.SUSPECT, target.name)] == {}
    assert set(_refused(sim)) == {"name-mismatch", "bad-signature"}


def test_honest_life_cycle_with_proofs_refutation_restart_and_leave() -> None:
    sim, names, rec = mesh(20, seed=25)
    assert sum(_refused(sim).values()) == 0  # honest statements always verify
    assert sim.max_datagram <= lan().max_datagram_plaintext
    # refutation: a suspicion is answered with a higher, proven incarnation
    victim = names[5]
    accuser = sim.core(names[9])
    accuser._on_suspect(sim.now, 0, victim, accuser.name)
    sim._after(sim.nodes[names[9]])
    sim.run_for(20.0)
    assert states(sim, victim) == {State.ALIVE}
    inc = sim.core(victim).local.incarnation
    assert inc >= 1
    # restart with a wiped data dir: incarnation 0, and it outbids its own older life
    sim.kill(victim)
    sim.run_for(60.0)
    assert states(sim, victim) == {State.DEAD}
    restarted = sim.add_node(lan(), make_meta(5), seeds=SEED)
    sim.run_for(15.0)
    assert states(sim, victim) == {State.ALIVE}
    assert restarted.local.incarnation > inc
    # a proven leave is "left", relayed by gossip and carried in push-pull
    leaver = sim.core(names[3])
    leaver.leave(sim.now)
    sim._after(sim.nodes[names[3]])
    sim.run_for(2.0, stop=lambda: leaver.leave_done)
    sim.kill(names[3])
    sim.run_for(40.0)
    assert states(sim, names[3]) == {State.LEFT}
    # a node that missed the leave learns it from a push-pull (the leave's proof rides along)
    sim.identities.certify(node_name(50))
    late = Membership(lan(), make_meta(50), 1, sim.now,
                      auth=sim.identities.authenticator(node_name(50)))
    late.preload({names[3]: Member(make_meta(3), State.ALIVE, 0, 0.0)})
    late.merge_remote_state(sim.now, sim.core(names[0]).local_state())
    assert late.member(names[3]).state is State.LEFT  # type: ignore[union-attr]
    assert sum(late.refused.values()) == 0
    assert sum(_refused(sim).values()) == 0
    assert rec.first[(EventKind.FAILED, names[3])] == {}


def test_sim_proofs_weigh_what_real_ones_do() -> None:
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from meshmon import pki
    from meshmon.membership.identity import CertAuthenticator

    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki.init_ca(root / "ca")
        pki.issue_cert(root / "ca", node_name(1), root / "n", tags=("dc-east", "probe"),
                       ips=("10.0.0.1",))
        ident, trust = pki.load_identity(root / "ca" / pki.CA_CERT, root / "n" / pki.NODE_CERT,
                                         root / "n" / pki.NODE_KEY, root / "ca" / pki.CRL_FILE)
        meta = make_meta(1, tags=ident.peer.tags,
                         cert_fingerprint=bytes.fromhex(ident.peer.fingerprint))
        real = len(CertAuthenticator(ident, trust).prove(State.ALIVE, 1, meta))
    assert abs(real - PROOF_SIZE) < 0.1 * real
