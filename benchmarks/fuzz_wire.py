"""Fuzz the datagram receive path (opener + membership decoder); count escaped exceptions.

Every input goes through what the transport does with a received datagram:
``Keyring.open`` and, if it authenticates, ``membership.codec.decode_datagram``. The only
exceptions allowed are :class:`meshmon.wire.SealError` and the codec's ``MalformedMessage``;
anything else is an escape (goal: 0). Inputs, from a seeded RNG:

* random bytes of random length (0..1500);
* valid sealed membership datagrams with 1-4 random byte changes;
* valid sealed datagrams cut at a random length;
* replays of valid datagrams already opened;
* datagrams sealed by a genuine member around hostile plaintext (random bytes, mutated CBOR):
  these pass the seal and exercise the decoder, as a compromised member would.

Baseline: one plain AES-GCM decrypt of an equally sized ciphertext per input (the floor for
any AEAD receive path). ``ratio`` = our microseconds per input / the baseline's.
Run: ``python -m benchmarks.fuzz_wire [--quick]`` (quick: 100,000 inputs; full: 1,000,000).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshmon import pki
from meshmon.membership.codec import MalformedMessage, decode_datagram, encode_datagram
from meshmon.membership.messages import Ping
from meshmon.wire import MAX_PLAINTEXT, Keyring, SealError


def make_rings(folder: Path) -> tuple[Keyring, Keyring]:
    pki.init_ca(folder / "ca")
    rings = []
    for name in ("sender", "receiver"):
        pki.issue_cert(folder / "ca", name, folder / name)
        identity, trust = pki.load_identity(
            folder / "ca" / pki.CA_CERT, folder / name / pki.NODE_CERT,
            folder / name / pki.NODE_KEY, folder / "ca" / pki.CRL_FILE,
        )  # fmt: skip
        rings.append(Keyring(identity, trust))
    sender, receiver = rings
    now = time.time()
    sender.add_peer(receiver.identity.certificate, now)
    receiver.add_peer(sender.identity.certificate, now)
    return sender, receiver


def make_inputs(sender: Keyring, n: int, now: float, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    inputs: list[tuple[str, bytes]] = []
    valid: list[bytes] = []
    for i in range(n):
        kind = rng.randrange(5)
        msg = encode_datagram([Ping(i, "receiver", "sender")])
        if kind == 0:
            inputs.append(("random", rng.randbytes(rng.randrange(1501))))
        elif kind == 1:
            data = bytearray(sender.seal("receiver", msg, now))
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            inputs.append(("mutated", bytes(data)))
        elif kind == 2:
            data = sender.seal("receiver", msg, now)
            inputs.append(("truncated", data[: rng.randrange(len(data))]))
        elif kind == 3 and valid:
            inputs.append(("replay", rng.choice(valid)))
        else:
            if rng.random() < 0.5:
                plain = rng.randbytes(rng.randrange(MAX_PLAINTEXT + 1))
            else:
                plain = bytearray(msg)
                for _ in range(rng.randrange(1, 4)):
                    plain[rng.randrange(len(plain))] = rng.randrange(256)
                plain = bytes(plain)
            data = sender.seal("receiver", plain, now)
            valid.append(data)
            inputs.append(("hostile_member", data))
    return inputs


def run_ours(receiver: Keyring, inputs: list[tuple[str, bytes]], now: float
             ) -> tuple[float, collections.Counter[str], list[str]]:  # fmt: skip
    outcomes: collections.Counter[str] = collections.Counter()
    escaped: list[str] = []
    t0 = time.perf_counter()
    for _, data in inputs:
        try:
            opened = receiver.open(data, now)
            decode_datagram(opened.plaintext)
            outcomes["decoded"] += 1
        except SealError as exc:
            outcomes[exc.reason] += 1
        except MalformedMessage:
            outcomes["malformed"] += 1
        except Exception as exc:  # the whole point: count what escapes
            escaped.append(f"{type(exc).__name__}: {exc}")
    return time.perf_counter() - t0, outcomes, escaped


def run_baseline(inputs: list[tuple[str, bytes]]) -> float:
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    t0 = time.perf_counter()
    for _, data in inputs:
        try:  # noqa: SIM105 - try/except is the cheapest form; contextlib.suppress adds cost
            aead.decrypt(nonce, data[22:] if len(data) >= 38 else bytes(16), data[:22])
        except InvalidTag:
            pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 inputs instead of 1M")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    rounds = 3
    with tempfile.TemporaryDirectory() as tmp:
        sender, _ = make_rings(Path(tmp))
        now = time.time()
        inputs = make_inputs(sender, n, now, args.seed)
        ours, base = [], []
        outcomes: collections.Counter[str] = collections.Counter()
        escaped: list[str] = []
        for _ in range(rounds):  # a fresh receiver per round: replays behave alike
            receiver = Keyring(_receiver_identity(Path(tmp)), sender.trust)
            receiver.add_peer(sender.identity.certificate, now)
            secs, outcomes, escaped = run_ours(receiver, inputs, now)
            ours.append(secs)
            base.append(run_baseline(inputs))
    us_ours = statistics.median(ours) / n * 1e6
    us_base = statistics.median(base) / n * 1e6
    kinds = collections.Counter(k for k, _ in inputs)
    print(json.dumps({"inputs": n, "by_input": dict(kinds), "outcomes": dict(outcomes),
                      "escaped_examples": escaped[:5]}))  # fmt: skip
    print(json.dumps({
        "bench": "fuzz_wire", "metric": "us_per_input", "value": round(us_ours, 3), "unit": "us",
        "baseline": "plain AESGCM.decrypt per input", "baseline_value": round(us_base, 3),
        "ratio": round(us_ours / us_base, 2), "inputs": n,
        "inputs_per_s": round(n / statistics.median(ours)), "escaped": len(escaped),
        "rounds": rounds, "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }))  # fmt: skip


def _receiver_identity(folder: Path) -> pki.NodeIdentity:
    identity, _ = pki.load_identity(
        folder / "ca" / pki.CA_CERT, folder / "receiver" / pki.NODE_CERT,
        folder / "receiver" / pki.NODE_KEY, folder / "ca" / pki.CRL_FILE,
    )  # fmt: skip
    return identity


if __name__ == "__main__":
    main()
