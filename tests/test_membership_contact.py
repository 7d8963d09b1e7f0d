"""First contact (sans-IO core, synchronous): an unanswered probe of a new member we never heard
from gives no verdict during ``first_contact_grace``; catching up pulls the view of a member
that knows us; a seed still being asked for a join is not asked again."""

from __future__ import annotations

import dataclasses
import random

from meshmon.membership import Membership, NodeMeta, State, StreamKind, codec, local
from meshmon.membership.messages import Addr, Ping

CONFIG = dataclasses.replace(local(), first_contact_grace=10.0)


def _node(name: str, host: int, now: float = 0.0) -> Membership:
    meta = NodeMeta(name, f"127.0.0.{host}", 7946, 7946, (), "test")
    return Membership(CONFIG, meta, random.Random(host), now)


def _run(node: Membership, start: float, end: float, addr: Addr) -> tuple[int, int]:
    """Tick ``node`` every 0.1 s from ``start`` to ``end``, answering nothing: the pings it
    sent to ``addr`` and the TCP pings it asked for."""
    pings = tcp = 0
    now = start
    while now < end:
        node.tick(now)
        pings += sum(isinstance(msg, Ping)
                     for to, data in node.take_datagrams() if to == addr
                     for msg in codec.decode_datagram(data))  # fmt: skip
        tcp += sum(r.kind is StreamKind.PING for r in node.take_stream_requests())
        now += 0.1
    return pings, tcp


def _state(node: Membership, name: str) -> State:
    return next(m.state for m in node.members() if m.name == name)


def test_an_unanswered_first_contact_gives_no_verdict_until_the_grace_is_over() -> None:
    a, b = _node("a", 2), _node("b", 3)
    a.merge_remote_state(0.0, b.local_state(join=True))  # b reached us only through a state
    b_addr = b.local.meta.udp_addr
    pings, tcp = _run(a, 0.0, 9.5, b_addr)
    # b may not know a yet, so it could not answer: pinged (the ping carries news and makes
    # b pull a's view), but neither suspected nor chased with indirect or TCP pings
    assert pings >= 5 and tcp == 0
    assert _state(a, "b") is State.ALIVE and a.stats["probe_first_contact"] >= 5
    pings, tcp = _run(a, 9.5, 12.0, b_addr)  # after the grace: probed as anyone
    assert pings >= 1 and tcp >= 1
    assert _state(a, "b") is State.SUSPECT


def test_a_member_that_spoke_to_us_is_suspected_when_it_stops_answering() -> None:
    a, b = _node("a", 2), _node("b", 3)
    a.merge_remote_state(0.0, b.local_state(join=True))
    b.merge_remote_state(0.0, a.local_state())
    b_addr = b.local.meta.udp_addr
    b.publish(0.0, "k", 1, b"news")  # something for b to gossip to a
    heard = 0
    for now in (0.1, 0.2, 0.3):
        b.tick(now)
        for to, data in b.take_datagrams():
            if to == a.local.meta.udp_addr:
                a.handle_datagram(now, b_addr, data)
                heard += 1
    assert heard >= 1
    pings, tcp = _run(a, 0.3, 3.0, b_addr)  # well within the grace, and b falls silent
    assert pings >= 1 and tcp >= 1
    assert _state(a, "b") is State.SUSPECT


def test_a_seed_still_being_asked_is_not_asked_again() -> None:
    a = _node("a", 2)
    seed = ("127.0.0.9", 7946)
    a.join(0.0, [seed])
    a.join(1.0, [seed])  # the seed watch retrying while the first join is still in flight
    first = a.take_stream_requests()
    assert [(r.kind, r.addr, r.join) for r in first] == [(StreamKind.PUSH_PULL, seed, True)]
    a.stream_result(2.0, first[0].token, False)  # the seed did not answer
    a.join(3.0, [seed])
    assert [r.addr for r in a.take_stream_requests()] == [seed]  # asked again, once


def test_catching_up_pulls_from_the_unknown_sender_at_most_once_per_interval() -> None:
    a = _node("a", 2)
    x, y = ("127.0.0.7", 7946), ("127.0.0.8", 7946)
    assert a.catch_up(1.0, x)
    assert not a.catch_up(1.5, y)  # within catch_up_interval: remembered, not asked yet
    assert [(r.kind, r.addr, r.join) for r in a.take_stream_requests()] == [
        (StreamKind.PUSH_PULL, x, False)]
    assert a.next_deadline() <= 1.0 + CONFIG.catch_up_interval
    a.tick(1.0 + CONFIG.catch_up_interval)
    assert [r.addr for r in a.take_stream_requests() if r.kind is StreamKind.PUSH_PULL] == [y]
    assert a.stats["catch_up"] == 2
