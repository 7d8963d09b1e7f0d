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
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import random
from collections.abc import Callable, Iterable

from meshmon.membership import codec, timing, view
from meshmon.membership.auth import Authenticator
from meshmon.membership.config import MembershipConfig
from meshmon.membership.events import (
    Event,
    EventKind,
    Member,
    StreamKind,
    StreamRequest,
    UserEvent,
)
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
    UserNotice,
)
from meshmon.membership.rounds import ProbeRound, Relay
from meshmon.membership.state import (
    ALIVE,
    DEAD,
    GONE,
    LEFT,
    LIVE,
    SUSPECT,
    T_RELAY,
    T_STREAM,
    T_SUSPECT,
    MemberTable,
)

_USER_PREFIX = "\x00"  # queue keys: a member's name, or this prefix + a user key (names can't)
_MAX_USER_KEYS = 16384  # the CRL and one alert digest per member (meshmon.alerts)
_RELAY_NACK_FRACTION = 0.8


class Membership(MemberTable):
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
        self._seq = 0
        self._probe: ProbeRound | None = None
        self._relays: dict[int, Relay] = {}
        self._streams: dict[int, tuple[StreamRequest, str | None]] = {}
        self._seeds: tuple[Addr, ...] = ()
        self._user: dict[str, tuple[int, bytes]] = {}
        self.user_filter: Callable[[str, int, bytes], bool] | None = None
        """Accepts or refuses application data from peers before it is kept or passed on."""
        self._pulling: dict[str, int] = {}
        self._datagrams: list[tuple[Addr, bytes]] = []
        self._stream_out: list[StreamRequest] = []
        self._heard: set[Addr] = set()
        """UDP addresses we had a datagram from: the members there know our certificate."""
        self._next_catch_up = now
        self._catch_up_from: Addr | None = None
        self.declared: collections.Counter[str] = collections.Counter()
        """Members this node itself declared dead (its suspicion timed out), by name."""
        rand = self._rng.random
        self._next_probe = now + rand() * config.probe_interval
        self._next_gossip = now + rand() * config.gossip_interval
        self._next_push_pull = now + config.push_pull_interval * (1 + rand())
        self._next_reconnect = now + config.reconnect_interval * (1 + rand())

    # -- public API --------------------------------------------------------------------------

    def user_data(self, key: str) -> tuple[int, bytes] | None:
        """The newest ``(version, payload)`` known for an application key."""
        return self._user.get(key)

    @property
    def leave_done(self) -> bool:
        """After :meth:`leave`: the departure was gossiped (or there is nobody to tell)."""
        if not self._leaving:
            return False
        sent = self._queue.transmits(self._name)
        return self._live <= 0 or sent is None or sent >= self.config.gossip_nodes

    def join(self, now: float, seeds: Iterable[Addr]) -> None:
        """Join through seeds (TCP addresses): asks the driver for a push-pull with each.

        The seeds are remembered and retried every ``reconnect_interval`` while this node
        knows no other live member.
        """
        self._seeds = tuple(s for s in seeds if s != self.local.meta.tcp_addr)
        deadline = now + max(self.config.tcp_timeout, self.config.join_timeout)
        asked = {r.addr for r, _ in self._streams.values() if r.join}  # still waiting: no twice
        for seed in self._seeds:
            if seed not in asked:
                self._request_stream(now, StreamKind.PUSH_PULL, seed, None, join=True,
                                     deadline=deadline)

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

    def publish(self, now: float, key: str, version: int, payload: bytes) -> bool:
        """Disseminate an application payload; a higher ``version`` of ``key`` replaces a lower.

        Payloads up to ``max_user_inline`` bytes ride in datagrams; larger ones are announced
        and peers pull them with a push-pull. Returns False if ``version`` is not newer.
        """
        codec.encode_message(UserData(key, version, payload))  # validates types cheaply
        if not key or len(key) > 64:
            raise ValueError("user keys are 1-64 characters")
        return self._on_user(now, key, version, payload, local=True)

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

    def catch_up(self, now: float, addr: Addr) -> bool:
        """The driver could not open a datagram from TCP address ``addr``'s node: it knows us,
        we do not know it yet. Pull its full state (push-pull over mTLS, so only a member
        answers), at most every ``catch_up_interval``: one asked for sooner waits for the end
        of the interval (the newest such address); True if a push-pull was requested now."""
        if self._leaving:
            return False
        if now < self._next_catch_up:
            self._catch_up_from = addr
            return False
        self._catch_up_from = None
        self._next_catch_up = now + self.config.catch_up_interval
        self.stats["catch_up"] += 1
        self._request_stream(now, StreamKind.PUSH_PULL, addr, None, join=False)
        return True

    def tick(self, now: float) -> None:
        """Run everything due at ``now``; call it at :meth:`next_deadline` (early is harmless)."""
        if self._timers and self._timers[0][0] <= now:
            self._run_timers(now)
        self._step_probe(now)
        if self._queue and now >= self._next_gossip:
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
        deadline = min(self._next_reconnect, self._next_push_pull)
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
        timers = self._timers
        while timers and not self._timer_valid(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers and timers[0][0] < deadline else deadline

    def take_datagrams(self) -> list[tuple[Addr, bytes]]:
        """Datagrams to send now: ``[(udp_addr, plaintext)]``; each is within the budget."""
        out, self._datagrams = self._datagrams, []
        return out

    def take_stream_requests(self) -> list[StreamRequest]:
        """TCP work for the driver; report each with :meth:`stream_result`."""
        out, self._stream_out = self._stream_out, []
        return out

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

    def local_state(self, join: bool = False) -> bytes:
        """This node's full view, encoded for a push-pull exchange."""
        user = tuple(UserData(k, v, p) for k, (v, p) in self._user.items())
        return view.encode_state(self._members, self._snapshot, self._entry, join, user)

    def merge_remote_state(self, now: float, data: bytes) -> None:
        """Merge a peer's push-pull state (the server side calls this, then sends ours).

        Only entries that differ from ours are decoded (see ``view``): an equal one changes
        nothing, except a suspect's, whose merge confirms the suspicion.

        Raises:
            MalformedMessage: the state was not valid; nothing changed.
        """
        layout = view.state_layout(self._members, self._snapshot, self._entry)
        state = codec.decode_state_changes(data, *layout)
        if state is None:
            try:
                state = codec.decode_state(data)
            except codec.MalformedMessage:
                self.stats["malformed_state"] += 1
                raise
        self.stats["push_pull_merged"] += 1
        for ms in state.members:
            if ms.state is ALIVE:
                self._on_alive(now, ms.incarnation, ms.meta, ms.proof)
            elif ms.state is LEFT:
                self._on_dead(now, ms.incarnation, ms.meta.name, ms.meta.name, ms.meta, ms.proof)
            else:  # a remote "dead" only makes us suspect: the member may still refute
                self._on_suspect(now, ms.incarnation, ms.meta.name, self._name)
        for u in state.user:
            self._on_user(now, u.key, u.version, u.payload)

    def answers_to(self, name: str) -> bool:
        """Server side of a TCP ping: whether this node is ``name``."""
        return name == self._name

    # -- message handlers ----------------------------------------------------------------------

    def _dispatch(self, now: float, src: Addr, msg: Message) -> None:
        if isinstance(msg, Ping):
            self._on_ping(src, msg)
        elif isinstance(msg, Ack):
            self._on_ack(now, msg.seq)
        elif isinstance(msg, Alive):
            self._on_alive(now, msg.incarnation, msg.meta, msg.proof)
        elif isinstance(msg, Suspect):
            self._on_suspect(now, msg.incarnation, msg.node, msg.source)
        elif isinstance(msg, Dead):
            self._on_dead(now, msg.incarnation, msg.node, msg.source, msg.meta, msg.proof)
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

    def _on_ping(self, src: Addr, msg: Ping) -> None:
        if msg.target != self._name:  # the address now belongs to someone else: stay silent
            self.stats["misdirected_ping"] += 1
            return
        if msg.source in self._banned:
            return
        primary = [codec.encode_ack(msg.seq)]
        them = self._members.get(msg.source)
        if them is not None and them.state in GONE:
            # It was declared dead (perhaps before a restart): tell it, so it refutes.
            primary.append(codec.encode_message(Dead(them.incarnation, msg.source, self._name)))
        self._send(src, primary)

    def _on_ack(self, now: float, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            if not probe.indirect:  # a direct answer: its delay is this member's round trip
                self._change_awareness(-1)
                self.rtt[probe.target.meta.name] = now - probe.started_at
            self._probe = None
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.requester, [codec.encode_ack(relay.seq)])

    def _on_indirect(self, now: float, src: Addr, msg: IndirectPing) -> None:
        if msg.source in self._banned or msg.target in self._banned:
            return
        self._seq += 1
        # The requester asked us probe_timeout into its probe interval and gives up at the end
        # of it; nack a little before then so that the nack still counts (Lifeguard).
        deadline = now + _RELAY_NACK_FRACTION * self.config.probe_timeout
        self._relays[self._seq] = Relay(msg.seq, src, msg.nack, deadline)
        self._schedule(deadline, T_RELAY, self._seq)
        self._send(msg.target_addr, [codec.encode_ping(self._seq, msg.target, self._name)])

    def _on_user(self, now: float, key: str, version: int, payload: bytes,
                 local: bool = False) -> bool:
        current = self._user.get(key)
        if current is not None and version <= current[0]:
            return False
        if not local and self.user_filter is not None and not self.user_filter(key, version,
                                                                               payload):
            self.stats["user_refused"] += 1  # e.g. an alert digest its prober did not sign
            return False
        if current is None and len(self._user) >= _MAX_USER_KEYS:
            self.stats["user_keys_full"] += 1
            return False
        self._user[key] = (version, payload)
        if self._pulling.get(key, -1) <= version:
            self._pulling.pop(key, None)
        inline = len(payload) <= self.config.max_user_inline
        msg = UserData(key, version, payload) if inline else UserNotice(key, version, self._name)
        self._enqueue(_USER_PREFIX + key, msg)
        if not local:
            self._events.append(UserEvent(key, version, payload, now))
        return True

    def _on_notice(self, now: float, src: Addr, msg: UserNotice) -> None:
        current = self._user.get(msg.key)
        if (current is not None and msg.version <= current[0]) or (
                self._pulling.get(msg.key, -1) >= msg.version):
            return
        sender = self._members.get(msg.holder)
        if sender is None or sender.state not in LIVE:
            return
        self._pulling[msg.key] = msg.version
        self._request_stream(now, StreamKind.PUSH_PULL, sender.meta.tcp_addr, sender.meta.name,
                             join=False, pull_key=msg.key)

    # -- sending -------------------------------------------------------------------------------

    def _send(self, addr: Addr, primary: list[bytes]) -> None:
        if self._queue:  # piggyback news
            used = codec.FRAME_OVERHEAD + sum(map(len, primary))
            limit = timing.retransmit_limit(self.config.retransmit_mult, self._live)
            primary = primary + self._queue.take(self.config.max_datagram_plaintext - used, limit)
        self._emit_datagram(addr, codec.frame(primary))

    def _emit_datagram(self, addr: Addr, data: bytes) -> None:
        self._datagrams.append((addr, data))
        self.stats["datagrams_sent"] += 1
        self.stats["bytes_sent"] += len(data)

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

    def _request_stream(self, now: float, kind: StreamKind, addr: Addr, node: str | None,
                        join: bool, pull_key: str | None = None,
                        deadline: float | None = None, payload: bytes = b"") -> int:
        self._seq += 1
        token = self._seq
        if deadline is None:
            deadline = now + self.config.tcp_timeout
        if kind is StreamKind.PUSH_PULL:
            payload = self.local_state(join)
        request = StreamRequest(token, kind, addr, node, payload, join, deadline)
        self._streams[token] = (request, pull_key)
        self._stream_out.append(request)
        self._schedule(deadline, T_STREAM, token)
        return token

    # -- certificates named by reference (see certs) -------------------------------------------

    def _fetch_certs(self, now: float) -> None:
        # a one-off exchange, as patient as a join: a busy peer must not make it fail
        deadline = now + max(self.config.tcp_timeout, self.config.join_timeout)
        for source, refs in self._certs.batches():
            token = self._request_stream(now, StreamKind.CERTS, source, None, join=False,
                                         deadline=deadline, payload=codec.encode_blobs(refs))
            self._certs.started(token, refs)
            self.stats["cert_fetches"] += 1

    def _on_certs(self, now: float, token: int, answer: bytes | None) -> None:
        refs = self._certs.finished(token)
        assert refs is not None
        self._learn_fetched(now, refs, answer)
        self._fetch_certs(now)

    # -- probing -------------------------------------------------------------------------------

    def _step_probe(self, now: float) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.indirect and now >= probe.timeout_at:
                self._probe_indirect(now, probe)
            if now >= probe.end_at:
                self._probe_end(now, probe)
        if self._probe is None and now >= self._next_probe and not self._leaving:
            self._start_probe(now)

    def _next_target(self) -> Member | None:
        lst = self._probe_list
        for _ in range(len(lst) + 1):
            if self._probe_index >= len(lst):
                if not isinstance(lst, list):  # a preloaded order: now this view's own
                    lst = self._probe_list = list(lst)
                self._rng.shuffle(lst)
                self._probe_index = 0
                if not lst:
                    return None
            name = lst[self._probe_index]
            self._probe_index += 1
            m = self._members.get(name)
            if m is not None and m.state in LIVE and name not in self._banned:
                return m
        return None

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        interval = timing.scale_by_awareness(cfg.probe_interval, self._awareness)
        self._next_probe = now + interval
        target = self._next_target()
        if target is None:
            return
        self._seq += 1
        timeout = timing.scale_by_awareness(cfg.probe_timeout, self._awareness)
        first = (target.meta.udp_addr not in self._heard
                 and now - target.since < cfg.first_contact_grace)  # fmt: skip
        self._probe = ProbeRound(self._seq, target, now, now + timeout, now + interval, first)
        primary = [codec.encode_ping(self._seq, target.meta.name, self._name)]
        if target.state is SUSPECT and cfg.lifeguard:  # the buddy rule: tell it, so it refutes
            primary.append(codec.encode_message(Suspect(target.incarnation, target.meta.name,
                                                        self._name)))
        self.stats["probes"] += 1
        self._send(target.meta.udp_addr, primary)

    def _probe_indirect(self, now: float, probe: ProbeRound) -> None:
        cfg = self.config
        probe.indirect = True
        if probe.first_contact:  # helpers may not know us either; the ping itself was the news
            return
        target = probe.target.meta
        helpers = self._random_members(cfg.indirect_checks, exclude=target.name)
        request = codec.encode_message(IndirectPing(probe.seq, target.name, target.udp_addr,
                                                    cfg.lifeguard, self._name))
        for helper in helpers:
            self._send(helper.meta.udp_addr, [request])
        probe.expected_nacks = len(helpers) if cfg.lifeguard else 0
        if cfg.tcp_ping:
            probe.tcp_token = self._request_stream(now, StreamKind.PING, target.tcp_addr,
                                                   target.name, join=False, deadline=probe.end_at)

    def _probe_end(self, now: float, probe: ProbeRound) -> None:
        self._probe = None
        if probe.first_contact:
            # no verdict: sealed per pair, a member that has not learned our certificate yet
            # cannot answer (it pulls our view when our ping reaches it: see catch_up)
            self.stats["probe_first_contact"] += 1
            return
        if probe.tcp_ok:
            self.stats["tcp_fallback_ok"] += 1  # UDP is broken on some path; don't flap
            return
        if probe.expected_nacks > 0:
            self._change_awareness(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._change_awareness(1)
        current = self._members.get(probe.target.meta.name)
        if current is not None:
            self.stats["probe_failed"] += 1
            self._on_suspect(now, current.incarnation, current.meta.name, self._name)

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

    def _periodic_push_pull(self, now: float) -> None:
        cfg = self.config
        self._next_push_pull = now + timing.push_pull_scale(cfg.push_pull_interval, self._live)
        peers = self._random_members(1)
        if peers:
            m = peers[0]
            self._request_stream(now, StreamKind.PUSH_PULL, m.meta.tcp_addr, m.meta.name,
                                 join=False)

    def _reconnect(self, now: float) -> None:
        """Heal partitions (memberlist #222): retry seeds when alone, else a dead member."""
        cfg = self.config
        self._next_reconnect = now + cfg.reconnect_interval
        expired = [n for n, since in self._gone.items() if now - since > cfg.reconnect_timeout]
        if expired:
            self._reap(now, expired)
        if self._leaving:
            return
        if self._live <= 1 and self._seeds:
            seed = self._seeds[self._rng.randrange(len(self._seeds))]
            self._request_stream(now, StreamKind.PUSH_PULL, seed, None, join=True)
            return
        dead = [n for n in self._gone if self._members[n].state is DEAD
                and n not in self._banned]
        # serf's reconnect: try with probability failed/alive, so big meshes don't storm.
        if dead and self._rng.random() < len(dead) / max(1, self._live):
            m = self._members[dead[self._rng.randrange(len(dead))]]
            self.stats["reconnect_attempts"] += 1
            self._request_stream(now, StreamKind.PUSH_PULL, m.meta.tcp_addr, m.meta.name,
                                 join=False)
