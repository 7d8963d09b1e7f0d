"""Membership state and the messages that carry it (frozen dataclasses, no I/O).

A member is in one of four states. Each carries the member's *incarnation*: a counter only the
member itself raises, to refute news about itself. The merge rules (see ``core``) are
memberlist's: an ``Alive`` beats anything with a lower incarnation, a ``Suspect`` beats ``Alive``
at the same incarnation, a ``Dead``/``Left`` beats both at the same incarnation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Addr = tuple[str, int]
"""An ``(ip, port)`` pair."""


class State(enum.IntEnum):
    """A member's state as this node believes it; the values go on the wire."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3
    """Left gracefully: like dead, but announced by the member itself."""


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """Who a member is and how to reach it; gossiped with every ``Alive``.

    Attributes:
        name: unique in the mesh; the name in the member's certificate.
        address: the IP peers use for both UDP and TCP.
        udp_port: gossip datagrams.
        tcp_port: mTLS streams (push-pull, TCP ping).
        tags: labels that placement policies select on.
        version: the agent's software version.
        cert_fingerprint: SHA-256 of the member's certificate (DER), empty if unknown.
        config_version: version of the mesh-wide configuration the member runs.
        sync_urls: aggregator URLs the member advertises (``[sync] advertise``); hints for
            agents without their own, which still check that the server is an aggregator.
    """

    name: str
    address: str
    udp_port: int
    tcp_port: int
    tags: tuple[str, ...] = ()
    version: str = ""
    cert_fingerprint: bytes = b""
    config_version: int = 0
    sync_urls: tuple[str, ...] = ()

    @property
    def udp_addr(self) -> Addr:
        """Where to send datagrams."""
        return (self.address, self.udp_port)

    @property
    def tcp_addr(self) -> Addr:
        """Where to open streams."""
        return (self.address, self.tcp_port)


@dataclass(frozen=True, slots=True)
class Ping:
    """A direct probe; ``target`` guards against an address now used by another node."""

    seq: int
    target: str
    source: str


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to ping ``target`` for us and relay the ack (SWIM's ping-req)."""

    seq: int
    target: str
    target_addr: Addr
    nack: bool
    """Lifeguard: answer with a ``Nack`` if the target stays silent, proving we are alive."""
    source: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a ``Ping`` (or a relayed ``IndirectPing``)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: an intermediary could not reach the target (but we can reach it)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """The member is alive at this incarnation, with this metadata."""

    incarnation: int
    meta: NodeMeta
    proof: bytes = b""
    """The member's proof that it made this statement itself (see ``auth``)."""


@dataclass(frozen=True, slots=True)
class Suspect:
    """``source`` suspects ``node`` at this incarnation."""

    incarnation: int
    node: str
    source: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``source`` declares ``node`` dead; ``source == node`` means a graceful leave.

    A leave carries the leaver's metadata and its proof that it left (see ``auth``); a leave
    without a valid proof changes nothing.
    """

    incarnation: int
    node: str
    source: str
    meta: NodeMeta | None = None
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class UserData:
    """An opaque application payload; a higher ``version`` of ``key`` replaces a lower one."""

    key: str
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UserNotice:
    """A payload too large for a datagram exists at this version: pull it from ``holder``."""

    key: str
    version: int
    holder: str


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | UserData | UserNotice
"""Everything that may appear in a datagram."""


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as carried in a push-pull state exchange."""

    meta: NodeMeta
    incarnation: int
    state: State
    proof: bytes = b""
    """For ALIVE and LEFT: the member's own proof of that statement (else empty)."""


@dataclass(frozen=True, slots=True)
class PushPullState:
    """A node's full view, exchanged over TCP."""

    join: bool
    members: tuple[MemberState, ...]
    user: tuple[UserData, ...]
