"""Views shared copy-on-write with a snapshot, and push-pull merges that skip what agrees.

The shared structures must behave exactly as the plain dict and list they stand for, and a
merge that leaves out the entries equal to the receiver's must change the receiver exactly as
decoding every entry would.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import cbor2
import pytest

from meshmon.membership import Member, codec, lan
from meshmon.membership.core import Membership
from meshmon.membership.messages import (
    Alive,
    Dead,
    MemberState,
    Message,
    NodeMeta,
    PushPullState,
    State,
    Suspect,
    UserData,
)
from meshmon.membership.view import MemberMap, ProbeOrder, Snapshot


def _meta(i: int) -> NodeMeta:
    return NodeMeta(f"n{i}", f"10.0.{i >> 8}.{i & 255}", 7946, 7946, (), "t")


def _member(i: int, inc: int = 0, state: State = State.ALIVE) -> Member:
    return Member(_meta(i), state, inc, 0.0)


@pytest.mark.parametrize("seed", range(8))
def test_member_map_iterates_and_answers_as_a_dict(seed: int) -> None:
    rng = random.Random(seed)
    base = {f"n{i}": _member(i) for i in range(rng.choice([0, 1, 5, 40]))}
    view, plain = MemberMap(base), dict(base)
    for step in range(400):
        name = f"n{rng.randrange(60)}"
        if rng.random() < 0.35 and name in plain:
            del plain[name]
            del view[name]
        else:
            m = _member(int(name[1:]), step)
            plain[name] = m
            view[name] = m
        assert list(view.items()) == list(plain.items())
        assert list(view) == list(plain) and list(view.values()) == list(plain.values())
        assert len(view) == len(plain)
        probe = f"n{rng.randrange(60)}"
        assert view.get(probe) == plain.get(probe) and (probe in view) == (probe in plain)
    assert base == {f"n{i}": _member(i) for i in range(len(base))}  # never modified
    with pytest.raises(KeyError):
        del view["absent"]


@pytest.mark.parametrize("hole", [None, 0, 7, 19])
def test_probe_order_is_the_snapshot_names_but_ours_as_a_list(hole: int | None) -> None:
    rng = random.Random(hole)
    names = tuple(f"n{i}" for i in range(20))
    order = ProbeOrder(names, hole)
    plain = [n for i, n in enumerate(names) if i != hole]
    for step in range(200):
        order.append(f"x{step}")  # what the core does with a new member
        plain.append(f"x{step}")
        i = rng.randrange(len(plain))
        order[i], order[-1] = order[-1], order[i]
        plain[i], plain[-1] = plain[-1], plain[i]
        assert len(order) == len(plain) and list(order) == plain
        assert [order[j] for j in range(-len(plain), len(plain))] == plain + plain
    with pytest.raises(IndexError):
        order[len(plain)] = "nope"


@pytest.mark.parametrize("count", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_state_encoding_is_cbor_of_the_whole(count: int) -> None:
    members = tuple(MemberState(_meta(i % 300), i, State(i % 4), b"p" * (i % 3))
                    for i in range(count))
    user = (UserData("k", 1, b"v"), UserData("crl", 2, b""))
    for join in (False, True):
        state = PushPullState(join, members, user)
        expected = cbor2.dumps([codec.VERSION, join,
                                [[m.state.value, m.incarnation,
                                  [m.meta.name, m.meta.address, m.meta.udp_port,
                                   m.meta.tcp_port, list(m.meta.tags), m.meta.version,
                                   m.meta.cert_fingerprint, m.meta.config_version], m.proof]
                                 for m in members],
                                [[u.key, u.version, u.payload] for u in user]])
        assert codec.encode_state(state) == expected


# -- merges ----------------------------------------------------------------------------------

N = 30


def _datagram(core: Membership, now: float, msgs: list[Message]) -> None:
    core.handle_datagram(now, ("10.9.9.9", 7946), codec.encode_datagram(msgs))


def _core(seed: int, warm: bool) -> Membership:
    """A node that knows N members, then heard of changes (the same for the same seed)."""
    rng = random.Random(seed)
    config = dataclasses.replace(lan(), reconnect_interval=0.5, reconnect_timeout=0.5)
    core = Membership(config, _meta(0), random.Random(seed), 0.0)
    if warm:
        core.preload(Snapshot({f"n{i}": _member(i) for i in range(N)}))
    else:
        _datagram(core, 0.0, [Alive(0, _meta(i)) for i in range(1, N)])
    for step in range(rng.randrange(12)):
        i = rng.randrange(1, N + 6)
        kind = rng.choice([Alive, Suspect, Dead])
        msg: Message = (Alive(rng.randrange(3), _meta(i)) if kind is Alive
                        else kind(rng.randrange(3), f"n{i}", f"n{rng.randrange(N)}"))
        _datagram(core, 1.0 + step / 10, [msg])
    core.tick(2.5)  # forgets (reaps) who was dead or left for half a second
    core.take_events()
    return core


def _remote(seed: int, state: PushPullState) -> bytes:
    """A peer's state: ours with entries changed, reordered, dropped, added and repeated."""
    rng = random.Random(seed)
    members = list(state.members)
    for _ in range(rng.randrange(8)):
        op = rng.randrange(6)
        i = rng.randrange(len(members))
        m = members[i]
        if op == 0:
            members[i] = MemberState(m.meta, m.incarnation + rng.randrange(2),
                                     State(rng.randrange(4)), m.proof)
        elif op == 1:
            j = rng.randrange(len(members))
            members[i], members[j] = members[j], members[i]
        elif op == 2:
            del members[i]
        elif op == 3:
            members.insert(i, MemberState(_meta(N + rng.randrange(9)), rng.randrange(2),
                                          State.ALIVE))
        elif op == 4:
            members.insert(rng.randrange(len(members) + 1), m)
        else:
            members.insert(i, MemberState(m.meta, m.incarnation + 1, State.DEAD))
    user = (UserData("k", rng.randrange(3), b"v"),) if rng.random() < 0.5 else ()
    return codec.encode_state(PushPullState(rng.random() < 0.5, tuple(members), user))


def _outcome(core: Membership) -> object:
    before = (core.next_deadline(), core.local_state(), core.queue_length, core.take_datagrams(),
              [(m.name, m.state, m.incarnation, m.since) for m in core.members()])
    events = []
    for step in range(200):  # when each suspicion times out tells its confirmations
        core.tick(3.0 + step / 4)
        events.append(list(map(repr, core.take_events())))  # timers due together: in order
    return (before, events, sorted(core.stats.items()), core.num_live(),
            [(m.name, m.state, m.incarnation, m.since) for m in core.members()])


@pytest.mark.parametrize("alike", [True, False])
@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("seed", range(30))
def test_a_merge_that_skips_equal_entries_changes_what_a_full_decode_would(
        seed: int, warm: bool, alike: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # the sender heard of the same changes (then its state differs by _remote's edits only),
    # or of others; a warm receiver compares with its snapshot, a plain one with its entries
    sender = _core(seed, not warm) if alike else _core(seed + 1000, warm)
    data = _remote(seed, codec.decode_state(sender.local_state()))
    quick = _core(seed, warm)
    assert codec.decode_state_changes(data, *_layout(quick)) is not None
    quick.merge_remote_state(3.0, data)
    monkeypatch.setattr(codec, "decode_state_changes", lambda *args: None)
    full = _core(seed, warm)
    full.merge_remote_state(3.0, data)
    assert _outcome(quick) == _outcome(full)


def _layout(core: Membership) -> tuple[bytes | memoryview, list[int], list[str], set[int],
                                        Callable[[str], int | None]]:
    from meshmon.membership import view

    return view.state_layout(core._members, core._snapshot, core._entry)  # type: ignore[return-value]


def test_a_peer_that_agrees_costs_no_decode() -> None:
    names = {f"n{i}": _member(i) for i in range(N)}
    snap = Snapshot(names)
    a = Membership(lan(), _meta(1), 1, 0.0)
    b = Membership(lan(), _meta(2), 2, 0.0)
    a.preload(snap)
    b.preload(snap)
    for core in (a, b):
        _datagram(core, 1.0, [Dead(0, "n5", "n7"), Suspect(0, "n9", "n7")])
    state = a.local_state()
    assert b.local_state() is state  # alike views share one encoding
    changes = codec.decode_state_changes(state, *_layout(b))
    assert changes is not None
    assert [m.meta.name for m in changes.members] == ["n5", "n9"]  # its departures only


def test_a_shared_encoding_follows_every_change() -> None:
    snap = Snapshot({f"n{i}": _member(i) for i in range(N)})
    a = Membership(lan(), _meta(1), 1, 0.0)
    a.preload(snap)
    before = a.local_state()
    _datagram(a, 1.0, [Suspect(0, "n4", "n7"), Alive(0, _meta(N + 1))])
    after = a.local_state()
    assert after != before
    assert codec.decode_state(after).members == tuple(
        MemberState(m.meta, m.incarnation, m.state) for m in a.members())


def test_malformed_states_are_left_to_the_full_decoder() -> None:
    core = _core(3, True)
    good = core.local_state()
    layout = _layout(core)
    rng = random.Random(5)
    for _ in range(400):
        buf = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf[:len(buf) - rng.choice([0, 0, 1, 50])])
        changes = codec.decode_state_changes(data, *layout)
        if changes is not None:
            codec.decode_state(data)  # the full decoder accepts whatever the quick one did
    for junk in (b"", b"\x84", b"\x84\x02\xf4", b"\x84\x02\xf4\x9b" + bytes(8), b"\xff" * 9):
        assert codec.decode_state_changes(junk, *layout) is None


def _entry(i: int, inc: int = 0, state: State = State.ALIVE) -> MemberState:
    return MemberState(_meta(i), inc, state, b"proof" if state is State.ALIVE else b"")


OURS = [_entry(i) for i in range(10)]


@pytest.mark.parametrize(("remote", "unmatched", "returned"), [
    (OURS, (), []),
    (OURS, (3, 7), [3, 7]),  # suspects: merged even when the same
    ([*OURS[:5], _entry(20), *OURS[5:]], (), [20]),  # an insertion
    (OURS[:2] + OURS[3:], (), [3]),  # one we hold and the peer does not: the next is out of step
    ([*OURS[:4], _entry(4, 1), *OURS[5:]], (), [4]),  # a change
    (OURS[::-1], (), list(range(9, -1, -1))),  # another order: none is in step with ours
    # a member repeated after it was merged is merged again, even where it equals ours
    ([_entry(5, 2), _entry(4, 1), OURS[5], *OURS[6:]], (), [5, 4, 5]),
    ([*OURS, OURS[3]], (), [3]),
    # out of step (a member listed early), then a suspect: merged even when the same
    ([OURS[5], *OURS[:5], *OURS[6:]], (7,), [5, 0, 6, 7]),
])
def test_only_what_differs_from_ours_in_step_is_decoded(
        remote: list[MemberState], unmatched: tuple[int, ...], returned: list[int]) -> None:
    entries = [codec.encode_member_state(m) for m in OURS]
    offsets = [0]
    for entry in entries:
        offsets.append(offsets[-1] + len(entry))
    names = [m.meta.name for m in OURS]
    data = codec.encode_state(PushPullState(False, tuple(remote), ()))
    changes = codec.decode_state_changes(data, b"".join(entries), offsets, names,
                                         set(unmatched), {n: i for i, n in enumerate(names)}.get)
    assert changes is not None
    assert [m.meta.name for m in changes.members] == [f"n{i}" for i in returned]
    full = {(m.meta.name, m.incarnation, m.state) for m in codec.decode_state(data).members}
    assert {(m.meta.name, m.incarnation, m.state) for m in changes.members} <= full
