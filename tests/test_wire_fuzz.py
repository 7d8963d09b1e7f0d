"""Fuzz the whole receive path: Keyring.open then the membership decoder; one error type each."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon import pki
from meshmon.membership.codec import MalformedMessage, decode_datagram, encode_datagram
from meshmon.membership.messages import Ping
from meshmon.wire import MAX_PLAINTEXT, Keyring, SealError
from tests.conftest import Mesh

NOW = time.time() + 3600
"""A fixed clock for the keyrings: an hour past collection, so certificates the fixtures issue
later (valid from five minutes before their issue) are valid at NOW however long the suite takes
to get here."""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keyring, Keyring]:
    root = tmp_path_factory.mktemp("fuzz")
    pki.init_ca(root / "ca")
    mesh = Mesh(root / "ca", root)
    rings = [Keyring(*mesh.identity(mesh.node(name))) for name in ("s", "r")]
    rings[0].add_peer(rings[1].identity.certificate, NOW)
    rings[1].add_peer(rings[0].identity.certificate, NOW)
    return rings[0], rings[1]


def receive(receiver: Keyring, data: bytes) -> str:
    """What the transport + membership driver do with one datagram."""
    try:
        decode_datagram(receiver.open(data, NOW).plaintext)
    except SealError as exc:
        return exc.reason
    except MalformedMessage:
        return "malformed"
    return "decoded"


@settings(max_examples=300, deadline=None)
@given(plain=st.binary(max_size=MAX_PLAINTEXT), edits=st.lists(
    st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=4))  # fmt: skip
def test_hostile_member_plaintext(pair: tuple[Keyring, Keyring], plain: bytes,
                                  edits: list[tuple[int, int]]) -> None:  # fmt: skip
    sender, receiver = pair
    data = bytearray(plain or encode_datagram([Ping(1, "r", "s")]))
    for pos, val in edits:
        data[pos % len(data)] = val
    assert receive(receiver, sender.seal("r", bytes(data), NOW)) in {"decoded", "malformed"}


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1,
                      max_size=4), cut=st.integers(0, 200))  # fmt: skip
def test_mutated_sealed_datagrams(pair: tuple[Keyring, Keyring], edits: list[tuple[int, int]],
                                  cut: int) -> None:  # fmt: skip
    sender, receiver = pair
    good = sender.seal("r", encode_datagram([Ping(7, "r", "s")]), NOW)
    data = bytearray(good)
    for pos, val in edits:
        data[pos % len(data)] = val
    outcome = receive(receiver, bytes(data)[:cut] if cut < len(data) else bytes(data))
    if bytes(data) != good or cut < len(good):
        assert outcome != "decoded"
    assert receive(receiver, good) == "decoded" or outcome == "decoded"
