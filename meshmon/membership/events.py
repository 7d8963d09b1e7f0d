"""What the membership core hands to its driver: member snapshots, events, stream requests."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from meshmon.membership.messages import Addr, NodeMeta, State


class Member(NamedTuple):
    """One member as this node sees it (immutable; shared freely)."""

    meta: NodeMeta
    state: State
    incarnation: int
    since: float
    """When the member entered ``state`` (the core's clock)."""

    @property
    def name(self) -> str:
        """The member's name."""
        return self.meta.name


class EventKind(enum.Enum):
    """Membership changes, for the rest of the agent."""

    JOINED = "joined"
    """A member appeared, or came back after being dead or having left."""
    UPDATED = "updated"
    """A live member's metadata (address, tags, version...) changed."""
    SUSPECT = "suspect"
    """A member is suspected; it is still counted as a member."""
    ALIVE = "alive"
    """A suspected member refuted the suspicion."""
    FAILED = "failed"
    """A member was declared dead (or expelled)."""
    LEFT = "left"
    """A member left gracefully."""
    REAPED = "reaped"
    """A dead or departed member was forgotten after ``reconnect_timeout``."""


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A member changed state."""

    kind: EventKind
    member: Member
    time: float


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A newer version of an application payload arrived (see ``Membership.publish``)."""

    key: str
    version: int
    payload: bytes
    time: float


Event = MemberEvent | UserEvent


class StreamKind(enum.Enum):
    """What a stream request asks the driver to do over mTLS TCP."""

    PUSH_PULL = "push_pull"
    """Send ``payload`` (our state), read the peer's state, report it as ``data``."""
    PING = "ping"
    """Ask the peer whether it is ``node`` (a TCP fallback probe); report ok or not."""
    CERTS = "certs"
    """Fetch certificates: ``addr`` is the UDP address of the node whose datagram named them
    (reach its TCP side), ``payload`` the encoded fingerprints
    (:func:`~meshmon.membership.codec.encode_blobs`); report the peer's answer as ``data``."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Ask the driver to run one TCP exchange and report it with ``Membership.stream_result``.

    Attributes:
        token: pass back to ``stream_result``.
        kind: push-pull or ping.
        addr: the peer's TCP address (for ``CERTS``: its UDP address, see there).
        node: the peer's expected name, or None for a seed whose name we don't know yet.
        payload: for push-pull, our encoded state to send; for a certificate fetch, the
            encoded fingerprints; empty for a ping.
        join: a push-pull made to join (the peer should also answer with its full state).
        deadline: after this the core counts the request as failed; results that come later
            are ignored.
    """

    token: int
    kind: StreamKind
    addr: Addr
    node: str | None
    payload: bytes
    join: bool
    deadline: float
