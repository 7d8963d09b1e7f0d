"""Lifeguard's dynamic suspicion timer for one suspected member (memberlist's ``suspicion.go``).

A suspicion starts at ``max_timeout`` and shrinks towards ``min_timeout`` as independent members
confirm it (see :func:`meshmon.membership.timing.remaining_suspicion_time`). It holds no clock:
the owner asks for :attr:`deadline` after creating it and after each :meth:`confirm`.
"""

from __future__ import annotations

from meshmon.membership import timing


class Suspicion:
    """The timer state for one suspect.

    Args:
        incarnation: the incarnation the member is suspected at.
        source: the first accuser (never counted as a confirmation).
        start: when the suspicion began.
        k: confirmations expected before the timeout reaches its minimum (0: fixed minimum).
        min_timeout: the timeout with ``k`` confirmations.
        max_timeout: the timeout with none.
    """

    __slots__ = ("_accusers", "deadline", "incarnation", "k", "max_timeout", "min_timeout",
                 "start")

    def __init__(self, incarnation: int, source: str, start: float, k: int,
                 min_timeout: float, max_timeout: float) -> None:
        self.incarnation = incarnation
        self.start = start
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout if k > 0 else min_timeout
        self._accusers = {source}
        self.deadline = start + timing.remaining_suspicion_time(
            0, k, 0.0, min_timeout, self.max_timeout)

    @property
    def confirmations(self) -> int:
        """Independent confirmations so far."""
        return len(self._accusers) - 1

    def confirm(self, source: str) -> bool:
        """Count ``source`` as confirming; True if it was new (and the deadline moved)."""
        accusers = self._accusers
        if len(accusers) > self.k or source in accusers:  # enough already, or not new
            return False
        self._accusers.add(source)
        self.deadline = self.start + timing.remaining_suspicion_time(
            self.confirmations, self.k, 0.0, self.min_timeout, self.max_timeout)
        return True
