"""Fuzz the membership datagram and state decoders with hostile inputs: one exception type.

Marked slow: hypothesis generates CBOR documents shaped like membership messages
(right type codes, wrong fields), raw bytes, and mutations of valid datagrams.
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshmon.membership import codec
from meshmon.membership.messages import (
    Alive,
    MemberState,
    NodeMeta,
    Ping,
    PushPullState,
    State,
    Suspect,
    UserData,
)

_VALID = codec.encode_datagram([
    Ping(1, "n1", "n2"),
    Alive(3, NodeMeta("n1", "10.0.0.1", 7946, 7946, ("a",), "v", b"f" * 32, 1)),
    Suspect(2, "n3", "n1"),
    UserData("crl", 4, b"payload"),
])

_scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats(allow_nan=True),
    st.text(max_size=70), st.binary(max_size=70), st.sampled_from(["n1", "10.0.0.1", "::1"]),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=9)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=30)
_message = st.builds(lambda kind, rest: [kind, *rest], st.integers(0, 9),
                     st.lists(_values, max_size=7))


_OURS = [MemberState(NodeMeta(f"n{i}", "10.0.0.1", 7946, 7946, ("a",), "v", b"f" * 32, 1), i,
                     State(i % 4), b"p" * (i % 2)) for i in range(6)]
_ENTRIES = [codec.encode_member_state(m) for m in _OURS]
_LAYOUT = (b"".join(_ENTRIES), [sum(map(len, _ENTRIES[:i])) for i in range(7)],
           [m.meta.name for m in _OURS], {2}, {f"n{i}": i for i in range(6)}.get)
_STATE = codec.encode_state(PushPullState(False, (*_OURS[:3], _OURS[4], _OURS[3], *_OURS[5:]),
                                          (UserData("crl", 4, b"x"),)))


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[: max(1, len(buf) - cut)])


_inputs = st.one_of(
    st.builds(lambda msgs: cbor2.dumps([1, *msgs]), st.lists(_message, min_size=1, max_size=4)),
    st.builds(lambda v: cbor2.dumps([1, *v]) if isinstance(v, list) else cbor2.dumps(v), _values),
    st.builds(lambda members: cbor2.dumps([1, False, members, []]), st.lists(_values, max_size=4)),
    st.binary(max_size=1400),
    st.builds(_mutate, st.just(_VALID),
              st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
              st.integers(0, 20)),
    st.builds(_mutate, st.just(_STATE),
              st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
              st.integers(0, 40)),
)


def _check(data: Any) -> None:
    with contextlib.suppress(codec.MalformedMessage):
        codec.decode_datagram(data)
    with contextlib.suppress(codec.MalformedMessage):
        codec.decode_state(data)
    # the quick merge's decoder never raises, and takes only what the full one accepts
    if codec.decode_state_changes(data, *_LAYOUT) is not None:
        codec.decode_state(data)


@pytest.mark.slow
@settings(max_examples=5_000, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck), phases=["generate"])
@given(_inputs)
def test_decoders_raise_only_malformed_message(data: bytes) -> None:
    _check(data)
