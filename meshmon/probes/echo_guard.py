"""What keeps the agent's UDP echo responder from being a reflector: sealing and rate limits.

Theory of operation
-------------------
A UDP service that answers anyone can be aimed at a victim: the attacker spoofs the victim's
address as the source, and the service sends its answers there. Three rules keep the echo
responder (:class:`~meshmon.probes.echo_responder.UdpEchoResponder`) out of that game:

1. **Sealed** (:func:`mesh_codec`): in an agent, echo requests and replies are sealed with the
   mesh's datagram keys (:class:`meshmon.wire.Keyring`, the transport's own keyring, purpose
   ``PURPOSE_ECHO``), exactly like gossip. A datagram that does not open — anyone without a mesh
   certificate, a replay, a forgery, gossip aimed at the wrong port — gets no answer at all. A
   reply is sealed to the member that sealed the request, so only that member can read it.
2. **Never larger than the request**: a reply carries the request's own bytes, so it is the same
   size; the responder drops any reply that would be larger (no amplification, whatever the
   codec).
3. **Rate limited** (:class:`EchoLimiter`): token buckets per source address and in total bound
   what anyone can make the responder send (defence in depth: even a member's bug, or a flood of
   datagrams that cost an AES-GCM check each, stays cheap).

The prober finds the key of the agent it probes from the address: the responder listens on the
agent's gossip port + 1 (``ECHO_PORT_OFFSET``), so the transport's address book (the members it
exchanges gossip with) names it. Probing an address that is not a member this agent knows fails
with an error saying so; the plain codec (library users, tests) is unchanged.

Pure except for reading the wall clock in :func:`mesh_codec` (the keyring needs ``now``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshmon.probes.base import ProbeError, UdpCodec
from meshmon.wire import Keyring, SealError

Address = tuple[str, int]


@dataclass(frozen=True)
class EchoLimits:
    """Answer budgets of the echo responder."""

    per_source_rate: float = 100.0
    """Answers per second to one IP address: 20 echo checks of 5 datagrams a second each."""
    per_source_burst: float = 200.0
    """Answers one address may get at once (checks falling due together)."""
    total_rate: float = 1000.0
    """Answers per second in total: a 1000-agent mesh probing this one every second."""
    total_burst: float = 2000.0
    """Answers at once in total."""
    max_sources: int = 4096
    """Source addresses tracked; beyond it, those that used the least are forgotten first."""


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class EchoLimiter:
    """Token buckets per source address and in total. Sans-IO: ``now`` is passed in."""

    def __init__(self, limits: EchoLimits | None = None) -> None:
        self.limits = limits or EchoLimits()
        self._total = _Bucket(self.limits.total_burst, 0.0)
        self._sources: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self.refused = 0
        """Requests refused by a limit."""

    def allow(self, source: str, now: float) -> bool:
        """Whether to answer one request from ``source`` at ``now`` (takes a token if so)."""
        lim = self.limits
        bucket = self._sources.get(source)
        if bucket is None:
            self._make_room(now)
            bucket = self._sources[source] = _Bucket(lim.per_source_burst, now)
        else:
            self._sources.move_to_end(source)
        if not bucket.take(now, lim.per_source_rate, lim.per_source_burst):
            self.refused += 1
            return False
        if not self._total.take(now, lim.total_rate, lim.total_burst):
            bucket.tokens += 1.0  # not answered: the source keeps its token
            self.refused += 1
            return False
        return True

    def _make_room(self, now: float) -> None:
        lim = self.limits
        if len(self._sources) < lim.max_sources:
            return
        # Forget sources that used at most one token (forgetting them costs at most one extra
        # answer each); if that frees too little, the least recently seen, down to 3/4 full.
        # Either way a purge frees many slots at once, so the scan is paid rarely.
        light = lim.per_source_burst - 1.0
        for source in [s for s, b in self._sources.items()
                       if b.tokens + (now - b.stamp) * lim.per_source_rate >= light]:
            del self._sources[source]
        while len(self._sources) > lim.max_sources * 3 // 4:
            self._sources.popitem(last=False)

    @property
    def tracked(self) -> int:
        """Source addresses currently tracked."""
        return len(self._sources)


def mesh_codec(keyring: Keyring, name_at: Callable[[Address], str | None], purpose: int,
               port_offset: int, clock: Callable[[], float] = time.time) -> UdpCodec:  # fmt: skip
    """A :class:`UdpCodec` sealing echo datagrams with the mesh's keys.

    Args:
        keyring: the transport's keyring (its peers are the members this node exchanged keys
            with; sharing it also shares the replay window with gossip).
        name_at: the node name at a gossip UDP address, if known (the transport's address book).
        purpose: the datagram purpose reserved for echo (gossip on the echo port is refused).
        port_offset: echo port = gossip port + ``port_offset``.
        clock: wall clock, for the keyring's epochs and freshness.
    """
    replies: collections.OrderedDict[Address, str] = collections.OrderedDict()

    def seal(data: bytes, peer: Address) -> bytes:
        name = replies.get(peer) or name_at((peer[0], peer[1] - port_offset))
        if name is None:
            raise ProbeError(f"{peer[0]}:{peer[1]} is not the echo port of a mesh member this "
                             f"node knows (echo datagrams are sealed with the mesh keys; the "
                             f"responder answers members only)")  # fmt: skip
        try:
            return keyring.seal(name, data, clock(), purpose)
        except SealError as exc:
            raise ProbeError(f"cannot seal an echo datagram for {name}: {exc}") from exc

    def open_(data: bytes, peer: Address) -> bytes | None:
        try:
            opened = keyring.open(data, clock())
        except SealError:
            return None
        if opened.purpose != purpose:
            return None
        replies[peer] = opened.sender.name  # the reply goes back sealed to this member
        replies.move_to_end(peer)
        if len(replies) > 4096:
            replies.popitem(last=False)
        return opened.plaintext

    return UdpCodec(seal=seal, open=open_, name="mesh")
