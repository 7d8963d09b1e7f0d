"""The membership wire codec and the broadcast queue: round trips, strict rejection, bounds."""

from __future__ import annotations

import contextlib
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon.membership import codec, lan
from meshmon.membership.core import Membership
from meshmon.membership.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Nack,
    NodeMeta,
    Ping,
    PushPullState,
    State,
    Suspect,
    UserData,
    UserNotice,
)
from meshmon.membership.queue import BroadcastQueue

META = NodeMeta("node-1", "10.0.0.1", 7946, 7947, ("dc1", "web"), "0.1.0", b"\x01" * 32, 3)
V = codec.VERSION
ALL = [
    Ping(1, "node-1", "node-2"),
    IndirectPing(2**40, "node-3", ("::1", 7946), True, "node-2"),
    Ack(7),
    Nack(8),
    Alive(5, META),
    Suspect(3, "node-1", "node-2"),
    Dead(4, "node-1", "node-1"),
    Alive(6, META, b"\x02" * 610),  # a self-statement with its proof
    Dead(6, "node-1", "node-1", META, b"\x03" * 610),  # a proven leave
    UserData("crl", 12, b"\x00" * 300),
    UserNotice("crl", 13, "node-2"),
]


def test_every_message_round_trips() -> None:
    data = codec.encode_datagram(ALL)
    assert codec.decode_datagram(data) == ALL
    for msg in ALL:
        assert codec.decode_datagram(codec.frame([codec.encode_message(msg)])) == [msg]


def test_hot_path_encoders_write_what_encode_message_writes() -> None:
    for seq in (0, 23, 24, 2**40):
        assert codec.encode_ping(seq, "node-1", "node-2") == codec.encode_message(
            Ping(seq, "node-1", "node-2"))
        assert codec.encode_ack(seq) == codec.encode_message(Ack(seq))


@pytest.mark.parametrize("kind", [5, 6])  # suspect, dead: decoded once, then remembered
def test_remembered_news_is_only_served_for_exact_types(kind: int) -> None:
    good = codec.decode_datagram(cbor2.dumps([V, [kind, 3, "n00001", "n00002"]]))
    assert good == codec.decode_datagram(cbor2.dumps([V, [kind, 3, "n00001", "n00002"]]))
    for bad in ([kind, True, "n00001", "n00002"], [kind, 3.0, "n00001", "n00002"],
                [kind, 3, "n00001", "bad name!"], [kind, -3, "n00001", "n00002"]):
        with pytest.raises(codec.MalformedMessage):
            codec.decode_datagram(cbor2.dumps([V, bad]))


def test_state_round_trips() -> None:
    state = PushPullState(True, (MemberState(META, 9, State.SUSPECT),
                                 MemberState(META, 9, State.ALIVE, b"proof")),
                          (UserData("k", 1, b"v"),))
    assert codec.decode_state(codec.encode_state(state)) == state


def test_alive_is_compact() -> None:
    assert len(codec.encode_message(Alive(5, META))) < 100
    assert len(codec.encode_message(Ping(123456, "n00001", "n00002"))) < 24


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        cbor2.dumps([V + 1, [2, 1]]),  # another version
        cbor2.dumps([1]),  # no messages
        cbor2.dumps({"a": 1}),
        cbor2.dumps([V, [99, 1]]),  # unknown type
        cbor2.dumps([V, [2, -1]]),  # negative seq
        cbor2.dumps([V, [2, True]]),  # bool is not an int
        cbor2.dumps([V, [2, 2**64]]),
        cbor2.dumps([V, [0, 1, "bad name!", "x"]]),
        cbor2.dumps([V, [0, 1, "a" * 64, "x"]]),
        cbor2.dumps([V, [4, 1, ["n", "not-an-ip", 1, 1, [], "", b"", 0], b""]]),
        cbor2.dumps([V, [4, 1, ["n", "10.0.0.1", 70000, 1, [], "", b"", 0], b""]]),
        cbor2.dumps([V, [4, 1, ["n", "10.0.0.1", 1, 1, ["x"] * 65, "", b"", 0], b""]]),
        cbor2.dumps([V, [1, 1, "t", ["10.0.0.1", 1], "yes", "s"]]),
        cbor2.dumps([V, [2, 1], [7, "k", 1, "not bytes"]]),  # one bad message spoils all
        cbor2.dumps([V, [2, 1]])[:-1],  # truncated
        b"\x9f" + bytes([V]) + b"\x81" * 5000,  # deep nesting
        b"\xd9\xd9\xf7" + cbor2.dumps([V, [2, 1]]) + b"\x00",  # trailing junk after a tag
    ],
)
def test_malformed_datagrams_raise_one_exception_type(data: bytes) -> None:
    with pytest.raises(codec.MalformedMessage):
        codec.decode_datagram(data)


@pytest.mark.parametrize(
    "data",
    [b"", cbor2.dumps([V, True, [[0, 0, ["n"]]], []]), cbor2.dumps([V, 1, [], []]),
     cbor2.dumps([V, False, [[7, 0, META and ["n", "10.0.0.1", 1, 1, [], "", b"", 0]]], []]),
     cbor2.dumps([V + 1, False, [], []])],
)
def test_malformed_states_are_rejected(data: bytes) -> None:
    with pytest.raises(codec.MalformedMessage):
        codec.decode_state(data)


def _valid_datagram() -> bytes:
    return codec.encode_datagram(ALL)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1400))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(codec.MalformedMessage):
        codec.decode_datagram(data)
    with contextlib.suppress(codec.MalformedMessage):
        codec.decode_state(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated_datagrams(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_valid_datagram())
    for pos, value in edits:
        data[pos % len(data)] = value
    with contextlib.suppress(codec.MalformedMessage):
        codec.decode_datagram(bytes(data))


def test_bad_input_changes_no_state() -> None:
    core = Membership(lan(), META, random.Random(1), 0.0)
    core.handle_datagram(0.0, ("10.0.0.2", 7946), codec.encode_datagram(
        [Alive(1, NodeMeta("node-2", "10.0.0.2", 7946, 7946))]))
    before = (core.local_state(), core.queue_length, core.next_deadline())
    rng = random.Random(2)
    good = bytearray(codec.encode_datagram([Suspect(1, "node-2", "node-1"),
                                            Alive(9, NodeMeta("node-3", "10.0.0.3", 1, 1))]))
    rejected = 0
    for _ in range(2000):
        data = bytearray(good)
        data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            codec.decode_datagram(bytes(data))
        except codec.MalformedMessage:
            with pytest.raises(codec.MalformedMessage):
                core.handle_datagram(1.0, ("10.0.0.9", 1), bytes(data))
            rejected += 1
    assert rejected > 500
    assert (core.local_state(), core.queue_length, core.next_deadline()) == before
    with pytest.raises(codec.MalformedMessage):
        core.merge_remote_state(1.0, b"\x00junk")
    assert core.local_state() == before[0]


def test_queue_newer_news_replaces_older() -> None:
    q = BroadcastQueue(100)
    q.put("a", b"old-news-a-xxxx")
    q.take(1000, 10)
    q.put("a", b"new-news-a-xxxx")
    assert q.transmits("a") == 0
    assert q.take(1000, 10) == [b"new-news-a-xxxx"]
    assert len(q) == 1


def test_queue_fewest_transmits_first_within_budget_and_limit() -> None:
    q = BroadcastQueue(100)
    q.put("a", b"a" * 20)
    q.take(1000, 3)
    q.put("b", b"b" * 20)
    q.put("c", b"c" * 20)
    assert q.take(45, 3) == [b"c" * 20, b"b" * 20]  # unsent first, newest first
    assert len(q.take(25, 3)) == 1  # the budget holds one
    assert q.transmits("a") == 1 or q.transmits("b") == 1 or q.transmits("c") == 1
    for _ in range(3):
        q.take(1000, 3)
    assert len(q) == 0  # every entry reached the limit
    assert q.take(1000, 3) == []


class _QueueModel:
    """The broadcast queue's rules, entry by entry: fewest sends first, newest first among
    equals (re-filing makes an entry the newest of its count), within the byte budget."""

    def __init__(self, max_size: int) -> None:
        self.entries: dict[str, tuple[int, int, bytes]] = {}  # key -> (sends, filed, data)
        self.filed = 0
        self.max_size = max_size

    def put(self, key: str, data: bytes) -> None:
        self.entries.pop(key, None)
        self.filed += 1
        self.entries[key] = (0, self.filed, data)
        while len(self.entries) > self.max_size:  # the oldest among the most-sent goes
            most = max(c for c, _, _ in self.entries.values())
            oldest = min((f, k) for k, (c, f, _) in self.entries.items() if c == most)[1]
            del self.entries[oldest]

    def take(self, budget: int, limit: int) -> list[bytes]:
        order = sorted(self.entries.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
        out: list[bytes] = []
        sent: list[str] = []
        misses, count = 0, None
        for key, (sends, _, data) in order:
            if sends != count:
                if budget < 12 or misses > 32:
                    break
                count = sends
            elif budget < 12 or misses > 32:
                continue  # the rest of this count is skipped
            if len(data) <= budget:
                out.append(data)
                budget -= len(data)
                sent.append(key)
            else:
                misses += 1
        for key in sent:
            sends, _, data = self.entries.pop(key)
            if sends + 1 < limit:
                self.filed += 1
                self.entries[key] = (sends + 1, self.filed, data)
        return out


@pytest.mark.parametrize("seed", range(40))
def test_queue_takes_what_the_entry_by_entry_rules_take(seed: int) -> None:
    # whole-queue takes (everything fits) and partial ones must agree with the rules
    rng = random.Random(seed)
    q, model = BroadcastQueue(30), _QueueModel(30)
    for _ in range(400):
        if rng.random() < 0.5:
            key, data = f"k{rng.randrange(40)}", bytes(rng.randrange(12, 200))
            q.put(key, data)
            model.put(key, data)
        elif rng.random() < 0.1:
            key = f"k{rng.randrange(40)}"
            q.discard(key)
            model.entries.pop(key, None)
        else:
            budget, limit = rng.choice([1200, 5000, rng.randrange(300)]), rng.randrange(1, 6)
            assert q.take(budget, limit) == model.take(budget, limit)
        assert len(q) == len(model.entries)
        assert all(q.transmits(k) == c for k, (c, _, _) in model.entries.items())


def test_queue_is_bounded() -> None:
    q = BroadcastQueue(10)
    for i in range(5):
        q.put(f"old{i}", b"x" * 20)
    q.take(1000, 100)
    for i in range(20):
        q.put(f"new{i}", b"y" * 20)
    assert len(q) == 10
    assert q.dropped == 15
    assert all(q.transmits(f"old{i}") is None for i in range(5))  # most-sent go first
