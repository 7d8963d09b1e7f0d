"""Identity benchmark: the cost of proving and verifying members' statements about themselves.

Every ``Alive`` (and leave) carries its author's certificate and signature
(:mod:`meshmon.membership.identity`); a receiver verifies it before its view changes. This
measures, with real certificates from a fresh mesh CA:

* verify, cold: a certificate never seen (CA signature check + statement signature check);
* verify, new statement: certificate cached, a new incarnation (one signature check);
* verify, cached: the same statement relayed again (a hash and two dictionary lookups);
* prove: signing one statement (each refutation, metadata change or leave);
* verify, compact: a gossiped proof that names a held certificate by reference, new statement;
* learn: checking a fetched certificate against the CA (once per member per node);
* sizes: certificate, proof (full and compact), an ``Alive`` without a proof, with the full
  one (push-pull) and with the compact one (gossip), and the push-pull state per member.

Baseline, measured in the same run: opening one sealed membership datagram of the largest size
(``Keyring.open``: header checks, replay window, AES-GCM), the work every received datagram
costs anyway (after a warm-up: a burst of datagrams from one peer into an empty replay
window costs up to ~30 µs each until the window first trims). ``ratio`` = cold verify / open.
Run: ``python -m benchmarks.identity [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from meshmon import pki
from meshmon.membership import NodeMeta, State, codec, lan
from meshmon.membership.identity import CertAuthenticator
from meshmon.membership.messages import Alive, MemberState, PushPullState
from meshmon.wire import Keyring

ALIVE = State.ALIVE


def _identity(ca: Path, root: Path, name: str) -> tuple[pki.NodeIdentity, pki.Trust]:
    pki.issue_cert(ca, name, root / name, tags=("dc-east", "probe"), ips=("10.0.0.1",))
    return pki.load_identity(ca / pki.CA_CERT, root / name / pki.NODE_CERT,
                             root / name / pki.NODE_KEY, ca / pki.CRL_FILE)


def _meta(identity: pki.NodeIdentity) -> NodeMeta:
    return NodeMeta(identity.name, "10.0.0.1", 7946, 7946, identity.peer.tags, "0.1.0",
                    bytes.fromhex(identity.peer.fingerprint))


def _us(fn: Callable[[int], object], n: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``fn(i)``, i in 0..n-1."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (seconds)")
    args = parser.parse_args(argv)
    n = 200 if args.quick else 2000
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = root / "ca"
        pki.init_ca(ca)
        authors = [_identity(ca, root, f"node-{i}") for i in range(8)]
        receiver, trust = _identity(ca, root, "receiver")
    author, author_trust = authors[0]
    signer = CertAuthenticator(author, author_trust)
    meta = _meta(author)

    # -- baseline: open a sealed datagram of the largest size ----------------------------------
    sender_ring, receiver_ring = Keyring(author, author_trust), Keyring(receiver, trust)
    now = time.time()
    sender_ring.add_peer(receiver.certificate, now)
    receiver_ring.add_peer(author.certificate, now)
    plaintext = b"\x00" * lan().max_datagram_plaintext
    warmup = 1500  # fills the replay window past its trim point: the steady state of a peer
    sealed = iter([sender_ring.seal("receiver", plaintext, now) for _ in range(n * 5 + warmup)])
    for _ in range(warmup):
        receiver_ring.open(next(sealed), now)
    open_us = _us(lambda i: receiver_ring.open(next(sealed), now), n)  # never a replay

    # -- proving and verifying -------------------------------------------------------------------
    prove_us = _us(lambda i: signer.prove(ALIVE, i, meta), n)
    proofs = [signer.prove(ALIVE, i, meta) for i in range(n)]
    others = [(_meta(ident), CertAuthenticator(ident, t)) for ident, t in authors]
    other_proofs = [(m, a.prove(ALIVE, 1, m)) for m, a in others]

    def cold(i: int) -> object:  # a fresh receiver, an unknown certificate
        m, proof = other_proofs[i % len(other_proofs)]
        return CertAuthenticator(None, trust).verify(ALIVE, 1, m, proof)

    warm = CertAuthenticator(None, trust)
    warm.verify(ALIVE, 10**6, meta, signer.prove(ALIVE, 10**6, meta))  # the certificate is known
    rounds_new: list[float] = []
    for _ in range(3):
        fresh = CertAuthenticator(None, trust)
        fresh.verify(ALIVE, 10**6, meta, signer.prove(ALIVE, 10**6, meta))
        start = time.perf_counter()
        for i in range(n):
            assert fresh.verify(ALIVE, i, meta, proofs[i]) is None
        rounds_new.append((time.perf_counter() - start) / n * 1e6)
    new_statement_us = statistics.median(rounds_new)
    cold_us = _us(cold, max(20, n // 4))
    cached_us = _us(lambda i: warm.verify(ALIVE, i % 16, meta, proofs[i % 16]), n * 10)
    for i in range(16):
        assert warm.verify(ALIVE, i, meta, proofs[i]) is None

    compact = [signer.for_gossip(p) for p in proofs]
    rounds_compact: list[float] = []
    for _ in range(3):
        fresh = CertAuthenticator(None, trust)
        der = author.certificate.public_bytes(Encoding.DER)
        assert fresh.learn(der) is None
        start = time.perf_counter()
        for i in range(n):
            assert fresh.verify(ALIVE, i, meta, compact[i]) is None
        rounds_compact.append((time.perf_counter() - start) / n * 1e6)
    compact_us = statistics.median(rounds_compact)
    ders = [ident.certificate.public_bytes(Encoding.DER) for ident, _ in authors]
    learn_us = _us(lambda i: CertAuthenticator(None, trust).learn(ders[i % len(ders)]),
                   max(20, n // 4))

    # -- sizes -------------------------------------------------------------------------------------
    cert_bytes = len(author.certificate.public_bytes(Encoding.DER))
    proof_bytes = len(proofs[0])
    alive_plain = len(codec.encode_message(Alive(1, meta)))
    alive_proven = len(codec.encode_message(Alive(1, meta, proofs[0])))
    alive_compact = len(codec.encode_message(Alive(1, meta, compact[0])))
    budget = lan().max_datagram_plaintext - codec.FRAME_OVERHEAD
    members = 1000
    states = [MemberState(dataclasses.replace(meta, name=f"node-{i:04d}"), 1, ALIVE, proofs[0])
              for i in range(members)]
    bare = [dataclasses.replace(s, proof=b"") for s in states]
    pp_proven = len(codec.encode_state(PushPullState(False, tuple(states), ())))
    pp_plain = len(codec.encode_state(PushPullState(False, tuple(bare), ())))

    ratio = round(cold_us / open_us, 2)
    out = {
        "bench": "identity",
        "metric": "verify_cold_us",
        "value": round(cold_us, 1),
        "unit": "microseconds to verify one Alive from an unseen certificate",
        "baseline": "Keyring.open of one sealed membership datagram of the largest size",
        "baseline_value": round(open_us, 1),
        "ratio": ratio,
        "verify_new_statement_us": round(new_statement_us, 1),
        "verify_cached_us": round(cached_us, 2),
        "verify_cached_ratio": round(cached_us / open_us, 3),
        "prove_us": round(prove_us, 1),
        "verify_compact_new_statement_us": round(compact_us, 1),
        "learn_fetched_cert_us": round(learn_us, 1),
        "compact_proof_bytes": len(compact[0]),
        "alive_bytes_with_compact_proof": alive_compact,
        "alives_per_datagram_with_compact_proof": budget // alive_compact,
        "cert_bytes": cert_bytes,
        "proof_bytes": proof_bytes,
        "alive_bytes_without_proof": alive_plain,
        "alive_bytes_with_proof": alive_proven,
        "alives_per_datagram_without_proof": budget // alive_plain,
        "alives_per_datagram_with_proof": budget // alive_proven,
        "push_pull_bytes_per_member_without_proof": round(pp_plain / members, 1),
        "push_pull_bytes_per_member_with_proof": round(pp_proven / members, 1),
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - wall, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
