"""Datagram sealing: round trip, tampering, replay, sender binding, revocation, rotation, fuzz."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon import pki
from meshmon.wire import MAX_DATAGRAM, MAX_PLAINTEXT, OVERHEAD, Keyring, SealConfig, SealError
from meshmon.wire.seal import REASONS
from tests.conftest import Mesh

NOW = time.time() + 3600
"""A fixed clock for the keyrings: an hour past collection, so certificates the fixtures issue
later (valid from five minutes before their issue) are valid at NOW however long the suite takes
to get here."""


def _rings(mesh: Mesh, *names: str) -> dict[str, Keyring]:
    rings = {}
    for name in names:
        identity, trust = mesh.identity(mesh.node(name))
        rings[name] = Keyring(identity, trust)
    for ring in rings.values():
        for other in rings.values():
            if other is not ring:
                ring.add_peer(other.identity.certificate, NOW)
    return rings


@pytest.fixture(scope="module")
def trio_rings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keyring]:
    root = tmp_path_factory.mktemp("seal")
    pki.init_ca(root / "ca")
    return _rings(Mesh(root / "ca", root), "a", "b", "c")


def test_round_trip_and_overhead(trio_rings: dict[str, Keyring]) -> None:
    a, b = trio_rings["a"], trio_rings["b"]
    for size in (0, 1, 100, MAX_PLAINTEXT):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        sealed = a.seal("b", data, NOW, purpose=7)
        assert len(sealed) == size + OVERHEAD <= MAX_DATAGRAM < 1400
        opened = b.open(sealed, NOW)
        assert (opened.sender.name, opened.purpose, opened.plaintext) == ("a", 7, data)
    with pytest.raises(SealError):
        a.seal("b", bytes(MAX_PLAINTEXT + 1), NOW)
    with pytest.raises(SealError):
        a.seal("nobody", b"x", NOW)


def test_every_tampered_byte_is_rejected(trio_rings: dict[str, Keyring]) -> None:
    a, b = trio_rings["a"], trio_rings["b"]
    sealed = a.seal("b", b"hello mesh" * 5, NOW)
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= flip
            with pytest.raises(SealError):
                b.open(bytes(bad), NOW)
    assert b.open(sealed, NOW).plaintext == b"hello mesh" * 5  # untouched state: still accepted


def test_replay_and_window(trio_rings: dict[str, Keyring]) -> None:
    a, c = trio_rings["a"], trio_rings["c"]
    first = [a.seal("c", bytes([i]), NOW) for i in range(10)]
    for d in reversed(first):  # out of order within the window is fine
        c.open(d, NOW)
    for d in first:
        with pytest.raises(SealError) as err:
            c.open(d, NOW)
        assert err.value.reason == "replay"
    slow = a.seal("c", b"slow", NOW + 1)
    c.open(a.seal("c", b"fast", NOW + 3.5), NOW)
    with pytest.raises(SealError) as err:
        c.open(slow, NOW)  # lags a newer datagram by more than `reorder` (2 s)
    assert err.value.reason == "replay"


def test_window_cap_raises_the_floor(mesh: Mesh) -> None:
    rings = _rings(mesh, "w1", "w2")
    w1 = rings["w1"]
    w2 = Keyring(rings["w2"].identity, rings["w2"].trust, SealConfig(window=8))
    w2.add_peer(w1.identity.certificate, NOW)
    burst = [w1.seal("w2", b"%d" % i, NOW) for i in range(20)]
    for d in burst[10:]:
        w2.open(d, NOW)
    with pytest.raises(SealError):
        w2.open(burst[0], NOW)  # older than everything remembered
    for d in burst[10:]:
        with pytest.raises(SealError):
            w2.open(d, NOW)


def test_stale_and_future_datagrams(trio_rings: dict[str, Keyring]) -> None:
    a, b = trio_rings["a"], trio_rings["b"]
    old = a.seal("b", b"x", NOW)
    with pytest.raises(SealError) as err:
        b.open(old, NOW + 600)
    assert err.value.reason in {"stale", "epoch"}


def test_member_cannot_forge_another_member(trio_rings: dict[str, Keyring]) -> None:
    a, b, c = trio_rings["a"], trio_rings["b"], trio_rings["c"]
    # b builds a datagram to c claiming a's sender id, with every key b can derive.
    genuine = a.seal("c", b"from a", NOW)
    header = genuine[:22]
    for peer_name in ("a", "c"):
        forged_body = b.seal(peer_name, b"evil!!", NOW)[22:]
        with pytest.raises(SealError) as err:
            c.open(header + forged_body, NOW)
        assert err.value.reason == "auth"
    # b's own datagram to a, redirected to c, is refused too (keys are per direction and pair).
    with pytest.raises(SealError):
        c.open(b.seal("a", b"to a", NOW), NOW)
    assert c.open(genuine, NOW).sender.name == "a"


def test_outsider_from_another_ca_cannot_join(make_mesh: object, mesh: Mesh) -> None:
    rings = _rings(mesh, "a2", "b2")
    other = make_mesh("other")  # type: ignore[operator]
    identity, trust = other.identity(other.node("evil"))
    evil = Keyring(identity, trust)
    with pytest.raises(pki.CertificateError):
        rings["a2"].add_peer(evil.identity.certificate, NOW)
    with pytest.raises(SealError) as err:
        rings["a2"].open(bytes(60), NOW)
    assert err.value.reason in {"version", "unknown_sender"}


def test_revoked_sender_rejected_after_crl_update(mesh: Mesh) -> None:
    rings = _rings(mesh, "x", "y", "z")
    x, y = rings["x"], rings["y"]
    before = x.seal("y", b"ok", NOW)
    after = x.seal("y", b"still ok?", NOW)
    assert y.open(before, NOW).plaintext == b"ok"
    pki.revoke(mesh.ca_dir, "x")
    newer = pki.Trust.from_files(mesh.ca_cert, mesh.crl).crl
    assert y.trust.update_crl(newer)
    with pytest.raises(SealError) as err:
        y.open(after, NOW)
    assert err.value.reason == "revoked"
    assert y.prune(NOW) == ["x"]
    assert y.peer("x") is None
    with pytest.raises(SealError) as err:
        y.open(after, NOW)
    assert err.value.reason == "unknown_sender"
    with pytest.raises(SealError):
        y.seal("x", b"bye", NOW)
    with pytest.raises(pki.CertificateError):
        y.add_peer(x.identity.certificate, NOW)


def test_rotation_keeps_traffic_flowing(mesh: Mesh) -> None:
    cfg = SealConfig(rotation=10.0, max_age=30.0)
    rings = _rings(mesh, "r1", "r2")
    r1, r2 = (Keyring(r.identity, r.trust, cfg) for r in rings.values())
    r1.add_peer(r2.identity.certificate, NOW)
    r2.add_peer(r1.identity.certificate, NOW)
    epochs = set()
    for step in range(0, 200, 3):  # 20 epochs, one clock 4 s ahead of the other
        d = r1.seal("r2", b"tick", NOW + step + 4)
        epochs.add(d[2:6])
        assert r2.open(d, NOW + step).plaintext == b"tick"
    assert len(epochs) >= 19


def test_expired_peer_pruned(mesh: Mesh) -> None:
    rings = _rings(mesh, "e1", "e2")
    later = NOW + 40 * 86400  # certificates last 30 days
    assert sorted(rings["e1"].prune(later)) == ["e2"]


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=1500),
    cut=st.integers(0, 1500),
    pos=st.integers(0, 1500),
    val=st.integers(0, 255),
    mode=st.integers(0, 2),
)
def test_fuzz_open_raises_only_seal_error(
    trio_rings: dict[str, Keyring], data: bytes, cut: int, pos: int, val: int, mode: int
) -> None:
    a, b = trio_rings["a"], trio_rings["b"]
    if mode == 0:
        sample = data
    else:
        sample = bytearray(a.seal("b", data[:MAX_PLAINTEXT], NOW))
        if mode == 1 and sample:
            sample[pos % len(sample)] = val
        sample = bytes(sample[:cut]) if mode == 2 else bytes(sample)
    try:
        b.open(sample, NOW)
    except SealError as exc:
        assert exc.reason in REASONS
