"""Failure detection: SWIM's probe rounds with Lifeguard's nacks, and the datagrams they send.

Every ``probe_interval`` (stretched by the awareness score) :class:`Prober` pings the next member
of a shuffled list (randomized round-robin). No ack within ``probe_timeout``: it asks
``indirect_checks`` random members to ping the target for it (``IndirectPing``; with Lifeguard
they answer ``Nack`` if the target stays silent too, which proves that *we* can reach them) and
asks the driver for a TCP ping. Still nothing by the end of the interval: the target is
suspected and the awareness score rises by the nacks that did not come. A direct ack lowers it.
A member never heard from and new to our view gets no verdict during ``first_contact_grace``:
it may not know our certificate yet.

The other side: a ``Ping`` is acked (with a ``Dead`` for a sender we hold dead, so that it
refutes) and an ``IndirectPing`` relayed (a :class:`Relay` with a timer for its nack).

Every datagram goes out through :meth:`Prober._send`, which piggybacks queued news on it.
"""

from __future__ import annotations

import random

from meshmon.membership import codec, timing
from meshmon.membership.auth import Authenticator
from meshmon.membership.config import MembershipConfig
from meshmon.membership.events import Member, StreamKind
from meshmon.membership.exchange import Exchanges
from meshmon.membership.messages import Addr, Dead, IndirectPing, NodeMeta, Ping, Suspect
from meshmon.membership.state import GONE, LIVE, SUSPECT, T_RELAY

_RELAY_NACK_FRACTION = 0.8


class ProbeRound:
    """One failure-detection round: its target, deadlines, and what came back."""


    __slots__ = ("end_at", "expected_nacks", "first_contact", "indirect", "nacks", "seq",
                 "started_at", "target", "tcp_ok", "tcp_token", "timeout_at")

    def __init__(self, seq: int, target: Member, started_at: float, timeout_at: float,
                 end_at: float, first_contact: bool = False) -> None:  # fmt: skip
        self.seq = seq
        self.started_at = started_at
        self.first_contact = first_contact
        """The target never spoke to us and is new: it may not know us yet (no verdict)."""
        self.target = target
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.indirect = False
        self.expected_nacks = 0
        self.nacks = 0
        self.tcp_token = -1
        self.tcp_ok = False


class Relay:
    """An indirect ping this node runs for another member (SWIM ping-req)."""


    __slots__ = ("deadline", "nack", "requester", "seq")

    def __init__(self, seq: int, requester: Addr, nack: bool, deadline: float) -> None:
        self.seq = seq
        self.requester = requester
        self.nack = nack
        self.deadline = deadline


class Prober(Exchanges):
    """Stream work plus probe rounds, relayed pings and the datagram send path.

    Args: as :class:`~meshmon.membership.state.MemberTable`.
    """

    _next_probe: float
    """Set by ``Membership.__init__``, which draws the first phase of every periodic task."""

    def __init__(self, config: MembershipConfig, local: NodeMeta, rng: random.Random | int,
                 now: float, incarnation: int = 0, auth: Authenticator | None = None) -> None:
        super().__init__(config, local, rng, now, incarnation, auth)
        self._probe: ProbeRound | None = None
        self._relays: dict[int, Relay] = {}
        self._datagrams: list[tuple[Addr, bytes]] = []
        self._heard: set[Addr] = set()
        """UDP addresses we had a datagram from: the members there know our certificate."""

    def take_datagrams(self) -> list[tuple[Addr, bytes]]:
        """Datagrams to send now: ``[(udp_addr, plaintext)]``; each is within the budget."""
        out, self._datagrams = self._datagrams, []
        return out

    # -- ping, ack, ping-req -------------------------------------------------------------------

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
        first = (now - target.since < cfg.first_contact_grace
                 and target.meta.udp_addr not in self._heard)  # fmt: skip
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
