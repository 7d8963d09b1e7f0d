"""Bookkeeping records of the membership core's probe rounds and relayed pings.

Plain mutable records with slots: the core creates one per probe round and per ping-req it
relays, and drops them when the round or relay ends. No behaviour lives here.
"""

from __future__ import annotations

from meshmon.membership.events import Member
from meshmon.membership.messages import Addr


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
