"""A deterministic discrete-event simulator that runs many sans-IO membership nodes.

Theory of operation
-------------------
Virtual time advances through a heap of events: *deliver* a datagram, *wake* a node at its
``next_deadline()``, *finish* a stream (push-pull or TCP ping) request. After every call into a
node the simulator drains its outputs: datagrams go through the link model (delay + jitter,
loss, duplication, directed partitions between groups, blocked UDP), stream requests are carried
out against the peer's core directly (``merge_remote_state`` / ``local_state`` / ``answers_to``)
after a round trip, and events go to an optional observer. Each node has at most one valid wake
in the heap, at its next deadline (a generation counter voids older ones, also when the deadline
moved later), so an idle node costs nothing and no node is woken with nothing to do. The wakes
wait in a heap of their own (N entries), so the datagrams in flight pop from a small one.

Datagrams are the real encoded bytes from the codec: nothing is re-encoded, and every receive
exercises the decoder. A CPU-starved node processes each incoming datagram and stream result
late by a random stall (in order), and answers streams late, while its timers still fire: the
receive path of an overloaded process falls behind, as the Lifeguard paper models a slow member.

Every node proves its statements about itself with its own simulated certificate
(:class:`~meshmon.sim.identities.SimIdentities`): a node added under its own name is certified
for the name and tags it announces; :meth:`Simulation.add_node` with another ``slot`` runs a
member whose metadata lies about who it is.

Everything random comes from one ``random.Random(seed)``, and ties in the heap break by
insertion order, so a run is a pure function of its seed and its script.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshmon.membership import (
    Addr,
    Event,
    MalformedMessage,
    Membership,
    MembershipConfig,
    NodeMeta,
    State,
    StreamKind,
    StreamRequest,
)
from meshmon.membership.view import Snapshot
from meshmon.sim.identities import SimIdentities

_WAKE, _DELIVER, _STREAM = range(3)
_STALLED = 4  # flag on an event kind: already deferred by CPU starvation
_NEVER = float("inf")

Observer = Callable[[float, str, Event], None]
"""Called as ``observer(time, observing_node_name, event)`` for every event a node emits."""


@dataclass
class LinkModel:
    """How the simulated network treats packets (mutable: scripts change it mid-run).

    Attributes:
        delay: one-way base latency in seconds.
        jitter: uniform extra latency in ``[0, jitter)``.
        loss: probability a datagram is lost (each direction independently).
        duplicate: probability a delivered datagram arrives twice.
        blocked: directed ``(from_group, to_group)`` pairs whose datagrams and streams are lost.
        udp_blocked: node names whose UDP (in and out) is dropped while TCP still works.
        starved: node name -> maximum processing stall in seconds (CPU starvation).
    """

    delay: float = 0.0005
    jitter: float = 0.0005
    loss: float = 0.0
    duplicate: float = 0.0
    blocked: set[tuple[str, str]] = field(default_factory=set)
    udp_blocked: set[str] = field(default_factory=set)
    starved: dict[str, float] = field(default_factory=dict)


class SimNode:
    """A node slot in the simulation: its core, group, addresses and certified name."""

    __slots__ = ("alive", "core", "gen", "group", "idx", "last_done", "meta", "name", "wake_at")

    def __init__(self, idx: int, meta: NodeMeta, core: Membership, group: str,
                 name: str) -> None:
        self.idx = idx
        self.name = name
        self.meta = meta
        self.core = core
        self.group = group
        self.alive = True
        self.gen = 0
        self.wake_at = float("inf")
        self.last_done = 0.0


class Simulation:
    """N membership cores over a simulated network in virtual time.

    Args:
        seed: makes the whole run reproducible.
        link: the network model (default: LAN-like 0.5-1 ms one way, no loss).
        observer: receives every event every node emits.
        identities: the simulated CA (default: one derived from ``seed``, real proof sizes).
    """

    def __init__(self, seed: int, link: LinkModel | None = None,
                 observer: Observer | None = None,
                 identities: SimIdentities | None = None) -> None:
        self.rng = random.Random(seed)
        self.identities = identities or SimIdentities(seed)
        self.link = link or LinkModel()
        self.observer = observer
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self._udp: dict[Addr, SimNode] = {}
        self._tcp: dict[Addr, SimNode] = {}
        self._heap: list[tuple[float, int, int, SimNode, Any]] = []  # (when, tie, kind, ..)
        self._wakes: list[tuple[float, int, int, SimNode, Any]] = []  # one heap, split in two:
        # every node's wake waits here, so the deliveries in flight pop from a small heap
        self._counter = itertools.count()
        self.delivered = 0
        self.dropped = 0
        self.malformed = 0
        self.events_processed = 0
        self.max_datagram = 0
        """Largest datagram plaintext any node sent (must stay within the budget)."""
        self.bytes_sent = 0

    # -- building the mesh -------------------------------------------------------------------

    def add_node(self, config: MembershipConfig, meta: NodeMeta, seeds: tuple[Addr, ...] = (),
                 group: str = "", incarnation: int = 0, slot: str | None = None) -> Membership:
        """Start a node now (replacing a dead one of the same slot) and join it via ``seeds``.

        ``slot`` names the node in the simulation and the certificate it holds (default:
        ``meta.name``, certified for ``meta.tags`` unless already certified). A slot other than
        ``meta.name`` makes a member that announces an identity it was not certified for.
        """
        slot = slot or meta.name
        old = self.nodes.get(slot)
        if old is not None and old.alive:
            raise ValueError(f"{slot} is running; kill() it before starting it again")
        if not self.identities.is_certified(slot):
            self.identities.certify(slot, meta.tags)
        core = Membership(config, meta, random.Random(self.rng.random()), self.now,
                          incarnation=incarnation, auth=self.identities.authenticator(slot))
        node = SimNode(len(self.nodes) if old is None else old.idx, meta, core, group, slot)
        if old is not None:
            node.gen = old.gen + 1
            if self._udp.get(old.meta.udp_addr) is old:
                del self._udp[old.meta.udp_addr]
            if self._tcp.get(old.meta.tcp_addr) is old:
                del self._tcp[old.meta.tcp_addr]
        self.nodes[slot] = node
        self._udp[meta.udp_addr] = node
        self._tcp[meta.tcp_addr] = node
        if seeds:
            core.join(self.now, seeds)
        self._after(node)
        return core

    def warm_start(self, config: MembershipConfig, metas: list[NodeMeta],
                   group: str = "") -> None:
        """Start many nodes that already know each other as alive (no join traffic).

        This is how large meshes (N = 10,000) are set up: every view shares one snapshot of
        the members (``membership.view``) and holds only its departures from it, so memory
        grows with N and with what changes, not with N squared.
        """
        from meshmon.membership import Member

        for meta in metas:
            self.identities.certify(meta.name, meta.tags)
        self.identities.warm_up([m.name for m in metas])
        proofs = {m.name: self.identities.authenticator(m.name).prove(State.ALIVE, 0, m)
                  for m in metas}
        snapshot = Snapshot({m.name: Member(m, State.ALIVE, 0, self.now) for m in metas},
                            proofs)
        for meta in metas:
            core = self.add_node(config, meta, group=group)
            core.preload(snapshot)
            core.take_events()
            self._after(self.nodes[meta.name])

    def core(self, name: str) -> Membership:
        """The running core of ``name``."""
        node = self.nodes[name]
        if not node.alive:
            raise KeyError(f"{name} is down")
        return node.core

    def running(self) -> list[Membership]:
        """Cores of all nodes that are up."""
        return [n.core for n in self.nodes.values() if n.alive]

    def kill(self, name: str) -> None:
        """Stop a node abruptly (like ``kill -9``): it no longer sends, receives or wakes."""
        node = self.nodes[name]
        node.alive = False
        node.gen += 1

    def set_group(self, name: str, group: str) -> None:
        """Move a node into a partition group (see ``LinkModel.blocked``)."""
        self.nodes[name].group = group

    def partition(self, a: str, b: str, both_ways: bool = True) -> None:
        """Block traffic from group ``a`` to group ``b`` (and back, unless one-way)."""
        self.link.blocked.add((a, b))
        if both_ways:
            self.link.blocked.add((b, a))

    def heal(self) -> None:
        """Remove every partition."""
        self.link.blocked.clear()

    # -- running -------------------------------------------------------------------------------

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> None:
        """Process events up to virtual time ``t`` (or until ``stop()`` turns true)."""
        heap, wakes = self._heap, self._wakes
        pop = heapq.heappop
        after = self._after
        while True:  # the earlier head of the two heaps (their ties are unique: one counter)
            if wakes and (not heap or wakes[0] < heap[0]):
                if wakes[0][0] > t:
                    break
                when, _, kind, node, item = pop(wakes)
            elif heap and heap[0][0] <= t:
                when, _, kind, node, item = pop(heap)
            else:
                break
            self.now = when
            if not node.alive:
                continue
            if kind == _WAKE:
                if item != node.gen:
                    continue
                node.wake_at = _NEVER
                node.core.tick(when)
            elif kind & ~_STALLED == _DELIVER:
                if kind == _DELIVER and self.link.starved and self._maybe_stall(node, when, kind,
                                                                                item):
                    continue
                self.delivered += 1
                try:
                    node.core.handle_datagram(when, item[0], item[1])
                except MalformedMessage:
                    self.malformed += 1
            else:
                if kind == _STREAM and self.link.starved and self._maybe_stall(node, when, kind,
                                                                               item):
                    continue
                token, ok, reply = item
                node.core.stream_result(when, token, ok, reply)
            after(node)
            self.events_processed += 1
            if stop is not None and stop():
                return
        self.now = max(self.now, t)

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> None:
        """Advance virtual time by ``seconds``."""
        self.run_until(self.now + seconds, stop)

    def _maybe_stall(self, node: SimNode, when: float, kind: int, item: object) -> bool:
        stall = self.link.starved.get(node.name)
        if not stall:
            return False
        # Defer once by a random stall, keeping the node's datagrams in order.
        ready = max(when + self.rng.random() * stall, node.last_done)
        node.last_done = ready
        self._push(ready, kind | _STALLED, node, item)
        return True

    def _push(self, when: float, kind: int, node: SimNode, item: object) -> None:
        heapq.heappush(self._heap, (when, next(self._counter), kind, node, item))

    def _after(self, node: SimNode) -> None:
        """Carry out what a node asked for and schedule its next wake."""
        core = node.core
        datagrams = core.take_datagrams()
        if datagrams:
            self._send(node, datagrams)
        for request in core.take_stream_requests():
            self._stream(node, request)
        events = core.take_events()
        if events and self.observer is not None:
            for event in events:
                self.observer(self.now, node.name, event)
        deadline = core.next_deadline()
        if deadline <= self.now:
            deadline = self.now + 1e-6
            if deadline >= node.wake_at:
                return
        elif deadline == node.wake_at:
            return
        # An earlier deadline, or a later one: a wake before it would find nothing to do.
        node.gen += 1
        node.wake_at = deadline
        heapq.heappush(self._wakes, (deadline, next(self._counter), _WAKE, node, node.gen))

    def _send(self, node: SimNode, datagrams: list[tuple[Addr, bytes]]) -> None:
        link = self.link
        rand = self.rng.random
        src = node.meta.udp_addr
        sender_blocked = node.name in link.udp_blocked
        for addr, data in datagrams:
            size = len(data)
            self.bytes_sent += size
            if size > self.max_datagram:
                self.max_datagram = size
            dst = self._udp.get(addr)
            if (dst is None or sender_blocked or rand() < link.loss
                    or (link.blocked and (node.group, dst.group) in link.blocked)
                    or (link.udp_blocked and dst.name in link.udp_blocked)):
                self.dropped += 1
                continue
            when = self.now + link.delay + rand() * link.jitter
            heapq.heappush(self._heap, (when, next(self._counter), _DELIVER, dst, (src, data)))
            if link.duplicate and rand() < link.duplicate:
                self._push(when + rand() * link.jitter, _DELIVER, dst, (src, data))

    def _stream(self, node: SimNode, request: StreamRequest) -> None:
        link = self.link
        rtt = 2 * link.delay + self.rng.random() * link.jitter * 2
        if request.kind is StreamKind.CERTS:  # addressed by the UDP source of a datagram
            peer = self._udp.get(request.addr)
        else:
            peer = self._tcp.get(request.addr)
        reachable = (peer is not None and peer.alive
                     and (node.group, peer.group) not in link.blocked
                     and (peer.group, node.group) not in link.blocked)
        if not reachable or peer is None:
            # A dead host or a partition: the connect times out at the request's deadline.
            when = max(self.now, min(request.deadline, self.now + 1.0))
            self._push(when, _STREAM, node, (request.token, False, None))
            return
        stall = link.starved.get(peer.name)
        if stall:
            rtt += self.rng.random() * stall  # a starved peer answers late
        if request.kind is StreamKind.CERTS:
            try:
                answer: bytes | None = peer.core.certificates(request.payload)
            except MalformedMessage:
                self.malformed += 1
                answer = None
            self._push(self.now + 2 * rtt, _STREAM, node, (request.token, answer is not None,
                                                            answer))
            return
        if request.kind is StreamKind.PING:
            ok = request.node is None or peer.core.answers_to(request.node)
            self._push(self.now + 2 * rtt, _STREAM, node, (request.token, ok, None))
            return
        if request.node is not None and not peer.core.answers_to(request.node):
            self._push(self.now + rtt, _STREAM, node, (request.token, False, None))
            return
        # Push-pull: the peer merges our state and answers with its own, one RTT later.
        try:
            peer.core.merge_remote_state(self.now, request.payload)
        except MalformedMessage:
            self.malformed += 1
        reply = peer.core.local_state(request.join)
        self._after(peer)
        self._push(self.now + 2 * rtt, _STREAM, node, (request.token, True, reply))
