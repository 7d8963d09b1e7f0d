"""Scatter-gather bookkeeping: who to ask next, who is late, what the outcome is. Sans-IO.

Theory of operation
-------------------
A :class:`Gather` is fed the agents to ask, the current time, a deadline for the whole
question, a per-request limit and a fan-out bound. It never reads a clock or touches a socket:
the driver (:mod:`meshmon.query.service`) asks :meth:`Gather.take_starts` which agents to ask
now, reports each :meth:`~Gather.answered` or :meth:`~Gather.failed`, calls
:meth:`~Gather.tick` at :meth:`~Gather.next_deadline` and cancels the requests it returns, and
stops when :attr:`~Gather.done`.

The rules it keeps:

* At most ``fanout`` requests are in flight; a finished one frees its slot for the next agent,
  in the order given.
* A request started at ``t`` expires at ``min(t + request_timeout, deadline)``; an expired one
  is ``timeout``. At the deadline every agent still in flight or never started is ``timeout``
  (the latter "not asked": the fan-out bound and slow peers used the time up).
* Each agent ends in exactly one of ``answers`` or ``missing``; reports about an agent that
  already ended (a late answer after its timeout) change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = "timeout"
REFUSED = "refused"
UNREACHABLE = "unreachable"
ERROR = "error"
REASONS = (TIMEOUT, REFUSED, UNREACHABLE, ERROR)
"""Why an agent is missing from an outcome."""


@dataclass(frozen=True)
class Missing:
    """An agent that did not answer: a reason of :data:`REASONS` and a sentence."""

    reason: str
    detail: str


@dataclass
class Outcome:
    """What a gather collected."""

    asked: list[str]
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, Missing] = field(default_factory=dict)

    @property
    def truncated(self) -> list[str]:
        """Agents whose answer was cut to fit the size limit."""
        return sorted(n for n, a in self.answers.items() if a.get("truncated") is True)

    @property
    def partial(self) -> bool:
        """True if some agent is missing or its answer truncated."""
        return bool(self.missing) or bool(self.truncated)


class Gather:
    """One question's scatter-gather state (see the module doc for the rules).

    Args:
        agents: who to ask, in order (duplicates are asked once).
        now: the driver's clock.
        timeout: seconds for the whole question.
        request_timeout: seconds for one request (at most ``timeout``).
        fanout: requests in flight at most (at least 1).
    """

    def __init__(self, agents: Iterable[str], now: float, timeout: float,
                 request_timeout: float | None = None, fanout: int = 16) -> None:  # fmt: skip
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        names = list(dict.fromkeys(agents))
        self.deadline = now + timeout
        self.request_timeout = timeout if request_timeout is None else min(request_timeout,
                                                                           timeout)
        self.fanout = fanout
        self.outcome = Outcome(asked=names)
        self._waiting = list(reversed(names))  # popped from the end: first given, first asked
        self._flight: dict[str, float] = {}  # name -> expiry
        self._now = now

    @property
    def done(self) -> bool:
        """True once every agent answered or is missing."""
        return not self._waiting and not self._flight

    @property
    def in_flight(self) -> list[str]:
        """Agents asked whose answer is awaited."""
        return list(self._flight)

    def take_starts(self, now: float) -> list[str]:
        """Agents to ask now: as many as free slots allow, none at or after the deadline."""
        self._now = now
        if now >= self.deadline:
            return []
        starts = []
        expiry = min(now + self.request_timeout, self.deadline)
        while self._waiting and len(self._flight) < self.fanout:
            name = self._waiting.pop()
            self._flight[name] = expiry
            starts.append(name)
        return starts

    def answered(self, name: str, data: dict[str, Any]) -> None:
        """``name`` answered with ``data`` (ignored unless it was in flight)."""
        if self._flight.pop(name, None) is not None:
            self.outcome.answers[name] = data

    def failed(self, name: str, reason: str, detail: str) -> None:
        """``name`` could not answer (ignored unless it was in flight)."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        if self._flight.pop(name, None) is not None:
            self.outcome.missing[name] = Missing(reason, detail)

    def tick(self, now: float) -> list[str]:
        """Expire late requests; returns the agents whose requests the driver must cancel."""
        self._now = now
        late = [name for name, expiry in self._flight.items() if now >= expiry]
        for name in late:
            expiry = self._flight.pop(name)
            limit = self.request_timeout if expiry < self.deadline else None
            self.outcome.missing[name] = Missing(
                TIMEOUT, f"no answer within {limit:g}s" if limit is not None
                else "no answer before the question's deadline")  # fmt: skip
        if now >= self.deadline:
            while self._waiting:
                self.outcome.missing[self._waiting.pop()] = Missing(
                    TIMEOUT, "not asked: the deadline passed while other agents held every "
                    f"one of the {self.fanout} request slots")  # fmt: skip
        return late

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (infinity when done)."""
        if self.done:
            return float("inf")
        if not self._flight:
            return self.deadline if not self._waiting else self._now
        return min(self._flight.values())
