"""Timing and sizing of the membership protocol: one frozen dataclass, three profiles.

The defaults are hashicorp/memberlist's ``DefaultLANConfig``; :func:`wan` and :func:`local` derive
its WAN and loopback variants with :func:`dataclasses.replace`, so a test or an operator starts
from a profile and overrides only what it must.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAX_DATAGRAM = 1400
"""Bytes on the wire we never exceed: a 1500-byte Ethernet MTU less IP/UDP headers and tunnels."""

SEAL_OVERHEAD = 100
"""Bytes the sealing layer adds (header, sender id, nonce, AEAD tag), rounded up generously."""


@dataclass(frozen=True)
class MembershipConfig:
    """SWIM + Lifeguard parameters (seconds unless a name says otherwise)."""

    probe_interval: float = 1.0
    """Time between failure probes; each probes one member (randomized round-robin)."""
    probe_timeout: float = 0.5
    """Wait for a direct ack before asking ``indirect_checks`` members: about the p99 RTT."""
    indirect_checks: int = 3
    """Members asked to ping a silent target for us (SWIM's k)."""
    gossip_interval: float = 0.2
    """Time between gossip rounds; a round sends queued news to ``gossip_nodes`` members."""
    gossip_nodes: int = 3
    """Random members per gossip round (fan-out)."""
    gossip_to_the_dead_time: float = 30.0
    """Dead members still receive gossip this long, so they can learn of and refute their death."""
    retransmit_mult: int = 4
    """Each update is sent ``retransmit_mult * ceil(log10(N + 1))`` times (see ``timing``)."""
    suspicion_mult: int = 4
    """Minimum suspicion timeout = ``suspicion_mult * max(1, log10(N)) * probe_interval``."""
    suspicion_max_timeout_mult: int = 6
    """Maximum suspicion timeout = this * the minimum; Lifeguard starts there and shrinks."""
    awareness_max_multiplier: int = 8
    """Lifeguard: a node in poor local health stretches its probe interval/timeout up to this *."""
    push_pull_interval: float = 30.0
    """Full-state anti-entropy over TCP, scaled up with log2(N) beyond 32 members (memberlist)."""
    tcp_timeout: float = 10.0
    """A periodic push-pull reported later than this counts as failed (a TCP ping has until
    the end of its probe round)."""
    join_timeout: float = 30.0
    """A join's push-pull with a seed may take this long (at least ``tcp_timeout``): a one-off
    exchange that must not fail because the seed's machine is busy, as when many agents start
    at once on a few cores (a seed handshaking with 49 joiners while every process imports
    gets a fiftieth of the CPU). Giving up would only repeat the same work later; a seed that
    refuses or is gone fails at once. Failure detection never waits on it."""
    first_contact_grace: float = 10.0
    """A probe of a member we never had a datagram from, and that entered our view less than
    this long ago, gives no verdict when unanswered (no indirect probes, no TCP ping, no
    suspicion). Datagrams are sealed per pair, so a member cannot answer us before it has
    learned our certificate (from gossip and a certificate fetch, or a push-pull); right after
    a join, or when many agents start at once, that is the rule rather than a failure. The
    ping still carries gossip, and makes the member pull our view (``catch_up_interval``).
    One that has spoken to us knows us; any other is probed as usual after the grace."""
    catch_up_interval: float = 2.0
    """At most this often, a node that had a datagram from a member it does not know yet (it
    could not open it: datagrams are sealed per pair) pulls that member's full state with a
    push-pull, rather than waiting for gossip from members it knows or the next periodic
    push-pull: after a mass start, early joiners otherwise miss what later ones tell them."""
    tcp_ping: bool = True
    """Fall back to a TCP ping when UDP probes fail, so blocked UDP does not flap a node."""
    dead_node_reclaim_time: float = 0.0
    """After this long dead/left, a name may come back at any incarnation (0: only by refuting)."""
    reconnect_interval: float = 30.0
    """How often a node retries its seeds (when alone) and one recently dead member (partitions)."""
    reconnect_timeout: float = 6 * 3600.0
    """Dead/left members are remembered, and retried, this long; then forgotten."""
    lifeguard: bool = True
    """Lifeguard on (memberlist's behaviour). Off: fixed suspicion timeout (the minimum), no
    awareness scaling, no nacks, no buddy rule: plain SWIM, kept for the benchmark comparison."""
    max_datagram_plaintext: int = MAX_DATAGRAM - SEAL_OVERHEAD - 50
    """Plaintext budget per datagram: 1400 on the wire - sealing overhead - 50 bytes of slack."""
    max_user_inline: int = 900
    """User payloads up to this size ride in datagrams; larger ones are announced and pulled."""
    cert_fetches: int = 4
    """Certificate fetches in flight at once. A gossiped announcement names its author's
    certificate by fingerprint; a node that does not hold it asks the sender for it (and for
    up to ``cert_batch`` more). Bounds the work a lying sender can cause as well."""
    cert_batch: int = 32
    """Certificates asked for in one fetch (each ~540 bytes in the answer). A fetch may take
    ``join_timeout``, like a join: a one-off exchange that a busy peer must not fail."""
    cert_pending: int = 128
    """Announcements kept while their certificate is fetched, retried when it arrives (the
    oldest dropped beyond this: gossip and push-pull bring them again anyway)."""
    max_queue: int = 4096
    """Broadcast queue cap: with no peers or in a long partition the oldest news is dropped."""
    max_events: int = 65536
    """Undrained events kept before the oldest are dropped (and counted)."""

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "gossip_interval", "push_pull_interval",
                     "tcp_timeout", "join_timeout", "reconnect_interval", "catch_up_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"membership.{name} must be greater than zero")
        if self.first_contact_grace < 0:
            raise ValueError("membership.first_contact_grace must not be negative")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("membership.probe_timeout must be shorter than probe_interval")
        for name in ("indirect_checks", "gossip_nodes", "retransmit_mult", "suspicion_mult",
                     "suspicion_max_timeout_mult", "awareness_max_multiplier", "cert_fetches",
                     "cert_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"membership.{name} must be at least 1")
        if not 300 <= self.max_datagram_plaintext <= MAX_DATAGRAM:
            raise ValueError("membership.max_datagram_plaintext must be in 300..1400 bytes")
        if self.max_user_inline > self.max_datagram_plaintext - 64:
            raise ValueError("membership.max_user_inline must leave 64 bytes for framing")


def lan() -> MembershipConfig:
    """memberlist's ``DefaultLANConfig``: one data centre, sub-millisecond to few-ms RTTs."""
    return MembershipConfig()


def wan() -> MembershipConfig:
    """memberlist's ``DefaultWANConfig``: slower probes, longer suspicion, wider gossip."""
    return dataclasses.replace(
        lan(),
        tcp_timeout=30.0,
        suspicion_mult=6,
        push_pull_interval=60.0,
        probe_timeout=3.0,
        probe_interval=5.0,
        gossip_nodes=4,
        gossip_interval=0.5,
        gossip_to_the_dead_time=60.0,
        first_contact_grace=30.0,
    )


def local() -> MembershipConfig:
    """memberlist's ``DefaultLocalConfig``: loopback or one host; fast and less redundant."""
    return dataclasses.replace(
        lan(),
        # memberlist's 1 s is for plain TCP between Go processes; an mTLS exchange between
        # Python agents sharing a few cores with dozens of others (benchmarks/startup: 50 on 2)
        # needs more, and a push-pull given up on is only repeated later: LAN's value
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3,
        push_pull_interval=15.0,
        probe_timeout=0.2,
        probe_interval=1.0,
        gossip_interval=0.1,
        gossip_to_the_dead_time=15.0,
    )


PROFILES = {"lan": lan, "wan": wan, "local": local}
"""Profile name (as in the agent's ``mesh.profile``) → factory."""
