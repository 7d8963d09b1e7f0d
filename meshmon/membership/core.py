"""SWIM + Lifeguard membership as a sans-IO state machine (see the package docstring for the API).

Theory of operation
-------------------
Every ``probe_interval`` (stretched by the Lifeguard awareness score) the node pings the next
member of a shuffled list (randomized round-robin). No ack within ``probe_timeout``: it asks
``indirect_checks`` members to ping the target for it (ping-req, with Lifeguard nacks) and asks
the driver for a TCP ping. Still nothing by the end of the interval: the target is *suspected*.
A suspicion becomes *dead* when its timer runs out; the timer starts long and shrinks as other
members independently suspect the same node. A suspected node that hears of it *refutes* by
raising its incarnation. News (alive/suspect/dead/left, user payloads) goes into a
transmit-limited queue and rides on every ping and ack, and on gossip rounds to
``gossip_nodes`` random members every ``gossip_interval``. Push-pull state exchanges over TCP
(requested from the driver) repair whatever gossip missed, and periodic reconnect attempts to
seeds and recently dead members heal partitions.

The view and its merge rules live in :mod:`meshmon.membership.state`. A remote *dead* from a
push-pull only makes us *suspect* (the member gets a chance to refute). Gossip rounds run at
most once per ``gossip_interval`` and only while there is news: a node with an empty queue
sleeps, and news that arrives after a quiet spell goes out at once rather than on a fixed grid.

The core never reads a clock, never sleeps, and never raises on remote input other than
:class:`~meshmon.membership.codec.MalformedMessage` from the two decoding entry points, before
any state changed.

The layers, one module each: :mod:`~meshmon.membership.state` (the view and its merge rules,
refutation, awareness, the broadcast queue), :mod:`~meshmon.membership.exchange` (stream
requests: push-pull, application data, certificate fetches), :mod:`~meshmon.membership.probe`
(probe rounds, relayed pings, the datagram send path), and this one: the public driver API,
dispatch of datagrams, stream results and timers, and gossip rounds.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import random

from meshmon.membership import codec, timing
from meshmon.membership.auth import Authenticator
from meshmon.membership.config import MembershipConfig
from meshmon.membership.events import Event, EventKind, Member, StreamKind
from meshmon.membership.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Nack,
    NodeMeta,
    Ping,
    Suspect,
    UserData,
)
from meshmon.membership.probe import Prober
from meshmon.membership.state import DEAD, LEFT, LIVE, SUSPECT, T_RELAY, T_SUSPECT


class Membership(Prober):
    """One node's membership protocol state machine (see the package docstring for its use).

    Args:
        config: protocol timing (``meshmon.membership.config.lan()`` etc.).
        local: this node's metadata.
        rng: a seeded ``random.Random`` (or a seed); all randomness comes from it.
        now: the current time in seconds on the driver's monotonic clock.
        incarnation: starting incarnation (0 for a fresh start; refutation raises it as needed).
        auth: proves this node's statements about itself and verifies everyone else's
            (:mod:`meshmon.membership.auth`); the default checks nothing.
    """

    def __init__(self, config: MembershipConfig, local: NodeMeta, rng: random.Random | int,
                 now: float, *, incarnation: int = 0, auth: Authenticator | None = None) -> None:
        super().__init__(config, local, rng, now, incarnation, auth)
        self.declared: collections.Counter[str] = collections.Counter()
        """Members this node itself declared dead (its suspicion timed out), by name."""
        rand = self._rng.random  # every periodic task starts at a random phase, in this order
        self._next_probe = now + rand() * config.probe_interval
        self._next_gossip = now + rand() * config.gossip_interval
        self._next_push_pull = now + config.push_pull_interval * (1 + rand())
        self._next_reconnect = now + config.reconnect_interval * (1 + rand())

    # -- public API --------------------------------------------------------------------------

    @property
    def leave_done(self) -> bool:
        """After :meth:`leave`: the departure was gossiped (or there is nobody to tell)."""
        if not self._leaving:
            return False
        sent = self._queue.transmits(self._name)
        return self._live <= 0 or sent is None or sent >= self.config.gossip_nodes

    def leave(self, now: float) -> None:
        """Leave gracefully: gossip our departure and stop probing. Keep ticking until
        :attr:`leave_done` (or a deadline of the driver's choosing)."""
        if self._leaving:
            return
        self._leaving = True
        me = self._members[self._name]
        proof = self._auth.prove(LEFT, me.incarnation, me.meta)
        self._proofs[self._name] = proof
        self._set(Member(me.meta, LEFT, me.incarnation, now))
        self._enqueue(self._name, Dead(me.incarnation, self._name, self._name, me.meta,
                                       self._auth.for_gossip(proof)))
        self._probe = None

    def update_meta(self, now: float, meta: NodeMeta) -> None:
        """Change this node's metadata (tags, config version...) and gossip it."""
        if meta.name != self._name:
            raise ValueError("update_meta cannot rename a node; start a new one instead")
        me = self._members[self._name]
        self._set(Member(meta, me.state, me.incarnation + 1, now))
        self._broadcast_alive(self._members[self._name])

    def expel(self, now: float, name: str) -> None:
        """Ban ``name`` (e.g. its certificate was revoked): mark it dead, never take it back."""
        if name == self._name:
            raise ValueError("a node cannot expel itself; call leave() instead")
        self._banned.add(name)
        m = self._members.get(name)
        if m is not None and m.state in LIVE:
            self._suspicions.pop(name, None)
            self._set(Member(m.meta, DEAD, m.incarnation, now))
            self._enqueue(name, Dead(m.incarnation, name, self._name))
            self._emit(EventKind.FAILED, name, now)

    def handle_datagram(self, now: float, src: Addr, data: bytes) -> None:
        """Feed one datagram's plaintext, received from UDP address ``src``.

        Raises:
            MalformedMessage: the datagram was not valid; nothing changed.
        """
        try:
            msgs = codec.decode_datagram(data)
        except codec.MalformedMessage:
            self.stats["malformed"] += 1
            raise
        self.stats["datagrams_received"] += 1
        if src not in self._heard:
            if len(self._heard) >= 4 * len(self._members) + 1024:
                self._heard.clear()  # bounded; forgetting only delays a first probe
            self._heard.add(src)
        self._source = src  # whom to ask for a certificate a proof names (see certs)
        try:
            for msg in msgs:
                self._dispatch(now, src, msg)
        finally:
            self._source = None
        if self._certs.wanted:
            self._fetch_certs(now)

    def tick(self, now: float) -> None:
        """Run everything due at ``now``; call it at :meth:`next_deadline` (early is harmless)."""
        if self._timers and self._timers[0][0] <= now:
            self._run_timers(now)
        self._step_probe(now)
        if now >= self._next_gossip and self._queue:
            self._gossip(now)
            self._next_gossip = now + self.config.gossip_interval
        if now >= self._next_push_pull:
            self._periodic_push_pull(now)
        if now >= self._next_reconnect:
            self._reconnect(now)
        if self._catch_up_from is not None and now >= self._next_catch_up:
            self.catch_up(now, self._catch_up_from)

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        deadline = self._next_reconnect
        if self._next_push_pull < deadline:
            deadline = self._next_push_pull
        probe = self._probe
        if probe is not None:
            due = probe.end_at if probe.indirect else probe.timeout_at
            deadline = due if due < deadline else deadline
        elif not self._leaving and self._next_probe < deadline:
            deadline = self._next_probe
        if self._next_gossip < deadline and self._queue:
            deadline = self._next_gossip
        if self._catch_up_from is not None and self._next_catch_up < deadline:
            deadline = self._next_catch_up
        timers = self._timers  # the first valid timer, if sooner (later ones may stay stale)
        while timers and timers[0][0] < deadline:
            if self._timer_valid(timers[0]):
                return timers[0][0]
            heapq.heappop(timers)
        return deadline

    def take_events(self) -> list[Event]:
        """Membership and user-payload events since the last call, oldest first."""
        if not self._events:
            return []
        out = list(self._events)
        self._events.clear()
        return out

    def stream_result(self, now: float, token: int, ok: bool, data: bytes | None = None) -> None:
        """Report a stream request: ``ok`` and, for a push-pull, the peer's state bytes.

        Late or unknown tokens are ignored; a malformed peer state is counted and ignored.
        """
        entry = self._streams.pop(token, None)
        if entry is None:
            self.stats["stream_late"] += 1
            return
        request, pull_key = entry
        if request.kind is StreamKind.CERTS:
            self._on_certs(now, token, data if ok else None)
            return
        if request.kind is StreamKind.PING:
            probe = self._probe
            if probe is not None and probe.tcp_token == token:
                probe.tcp_ok = ok
            return
        if pull_key is not None:
            self._pulling.pop(pull_key, None)
        if not ok or data is None:
            self.stats["push_pull_failed"] += 1
            return
        with contextlib.suppress(codec.MalformedMessage):  # counted by merge_remote_state
            self.merge_remote_state(now, data)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, now: float, src: Addr, msg: Message) -> None:
        if isinstance(msg, Suspect):  # the most frequent first
            self._on_suspect(now, msg.incarnation, msg.node, msg.source)
        elif isinstance(msg, Ping):
            self._on_ping(src, msg)
        elif isinstance(msg, Ack):
            self._on_ack(now, msg.seq)
        elif isinstance(msg, Dead):
            self._on_dead(now, msg.incarnation, msg.node, msg.source, msg.meta, msg.proof)
        elif isinstance(msg, Alive):
            self._on_alive(now, msg.incarnation, msg.meta, msg.proof)
        elif isinstance(msg, IndirectPing):
            self._on_indirect(now, src, msg)
        elif isinstance(msg, Nack):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq:
                probe.nacks += 1
        elif isinstance(msg, UserData):
            self._on_user(now, msg.key, msg.version, msg.payload)
        else:
            self._on_notice(now, src, msg)

    def _gossip(self, now: float) -> None:
        cfg = self.config
        limit = timing.retransmit_limit(cfg.retransmit_mult, self._live)
        budget = cfg.max_datagram_plaintext - codec.FRAME_OVERHEAD
        dead_cutoff = now - cfg.gossip_to_the_dead_time
        for m in self._random_members(cfg.gossip_nodes, dead_after=dead_cutoff):
            msgs = self._queue.take(budget, limit)
            if not msgs:
                break
            self._emit_datagram(m.meta.udp_addr, codec.frame(msgs))

    # -- timers --------------------------------------------------------------------------------

    def _timer_valid(self, entry: tuple[float, int, int, object]) -> bool:
        deadline, _, kind, key = entry
        if kind == T_SUSPECT:
            s = self._suspicions.get(key)  # type: ignore[call-overload]
            return s is not None and s.deadline == deadline
        if kind == T_RELAY:
            relay = self._relays.get(key)  # type: ignore[call-overload]
            return relay is not None and relay.deadline == deadline
        return key in self._streams

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if not self._timer_valid(entry):
                continue
            kind, key = entry[2], entry[3]
            if kind == T_SUSPECT:
                assert isinstance(key, str)
                suspicion = self._suspicions.pop(key)
                m = self._members[key]
                if m.state is SUSPECT and m.incarnation == suspicion.incarnation:
                    self.declared[key] += 1
                    self._on_dead(now, m.incarnation, key, self._name)
            elif kind == T_RELAY:
                assert isinstance(key, int)
                relay = self._relays.pop(key)
                if relay.nack:
                    self._send(relay.requester, [codec.encode_message(Nack(relay.seq))])
            else:
                assert isinstance(key, int)
                self.stream_result(now, key, False)
