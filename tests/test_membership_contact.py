"""First contact (sans-IO core, synchronous): a member we never heard from is not probed during
``first_contact_grace``, and a seed still being asked for a join is not asked again."""

from __future__ import annotations

import dataclasses
import random

from meshmon.membership import Membership, NodeMeta, StreamKind, codec, local
from meshmon.membership.messages import Addr, Ping

CONFIG = dataclasses.replace(local(), first_contact_grace=10.0)


def _node(name: str, host: int, now: float = 0.0) -> Membership:
    meta = NodeMeta(name, f"127.0.0.{host}", 7946, 7946, (), "test")
    return Membership(CONFIG, meta, random.Random(host), now)


def _pings_to(node: Membership, addr: Addr) -> int:
    return sum(isinstance(msg, Ping)
               for to, data in node.take_datagrams() if to == addr
               for msg in codec.decode_datagram(data))  # fmt: skip


def _run(node: Membership, start: float, end: float, addr: Addr) -> int:
    """Tick ``node`` every 0.1 s from ``start`` to ``end``; pings sent to ``addr``."""
    pings, now = 0, start
    while now < end:
        node.tick(now)
        pings += _pings_to(node, addr)
        node.take_stream_requests()
        now += 0.1
    return pings


def test_a_member_never_heard_from_is_probed_only_after_the_grace() -> None:
    a, b = _node("a", 2), _node("b", 3)
    a.merge_remote_state(0.0, b.local_state(join=True))  # b reached us only through a state
    assert {m.name for m in a.members()} == {"a", "b"}
    b_addr = b.local.meta.udp_addr
    assert _run(a, 0.0, 9.5, b_addr) == 0  # b may not know a yet: its answers could not come
    assert a.stats["probe_deferred"] > 0
    assert _run(a, 9.5, 13.0, b_addr) >= 1  # after the grace it is probed like anyone


def test_a_member_that_spoke_to_us_is_probed_at_once() -> None:
    a, b = _node("a", 2), _node("b", 3)
    a.merge_remote_state(0.0, b.local_state(join=True))
    b.merge_remote_state(0.0, a.local_state())
    b_addr = b.local.meta.udp_addr
    b.tick(0.0)
    b.publish(0.0, "k", 1, b"news")  # something for b to gossip
    sent = 0
    for now in (0.1, 0.2, 0.3):
        b.tick(now)
        for to, data in b.take_datagrams():
            if to == a.local.meta.udp_addr:
                a.handle_datagram(now, b_addr, data)
                sent += 1
    assert sent >= 1
    assert _run(a, 0.3, 2.5, b_addr) >= 1  # well within the grace


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
