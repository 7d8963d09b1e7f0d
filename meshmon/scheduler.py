"""Runs this agent's assignments on their intervals: spread, jittered, capped, lag-aware.

Theory of operation
-------------------
* Planning is pure (:func:`phase_offset`, :func:`first_due`, :func:`next_due`, :func:`jitter`):
  an assignment's phase inside its interval comes from a stable hash of (check, target), so
  1000 assignments of a 30 s check start spread over the 30 s rather than together
  (goldpinger #69), and every restart keeps the same phase. Jitter is bounded
  (``jitter_fraction`` of the interval) and deterministic per (assignment, round).
* The driver (:class:`Scheduler`) keeps one trio task per assignment. :meth:`Scheduler.update`
  diffs the old and new assignment sets: removed ones are cancelled, new ones started, unchanged
  ones (same check config, same target address) keep running with their phase and state.
* A concurrency cap (``trio.CapacityLimiter``) bounds probes in flight.
* Loop lag: a monitor task sleeps ``lag_tick`` and measures how late it wakes; each probe's own
  wakeup lateness is measured too. A result is marked degraded when the worst lag seen while it
  was due or in flight exceeds ``degraded_lag``: the agent was starved, so its latency numbers
  say more about this host than about the network.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from meshmon.config import CheckConfig
from meshmon.placement import AgentInfo, Assignment, Placement, stable_hash

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs one probe for an assignment and returns its result.

    The check is passed along because the runner needs its kind, params and timeout; the
    scheduler cancels a run that overruns twice the check's timeout (no result is sunk then).
    """

    async def __call__(self, assignment: Assignment, check: CheckConfig) -> Any: ...


class Sink(Protocol):
    """Receives every result, with the degraded flag."""

    async def __call__(self, assignment: Assignment, result: Any, degraded: bool) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler knobs."""

    max_concurrent: int = 64
    """Probes in flight at once; bounds sockets and CPU on a guest host."""
    jitter_fraction: float = 0.05
    """Each run moves by up to this fraction of its interval (bounded jitter)."""
    degraded_lag: float = 0.2
    """Loop lag (s) above which results are marked degraded: 200 ms dwarfs LAN RTTs."""
    lag_tick: float = 0.1
    """How often the lag monitor wakes; ~10 wakeups/s is negligible CPU."""


def phase_offset(check: str, target: str, interval: float) -> float:
    """Deterministic offset in [0, interval) for an assignment."""
    return (stable_hash(f"{check}\0{target}") / 2**64) * interval


def jitter(check: str, target: str, round_no: int, interval: float, fraction: float) -> float:
    """Deterministic jitter in [0, fraction * interval) for one round."""
    return (stable_hash(f"{check}\0{target}\0{round_no}") / 2**64) * fraction * interval


def first_due(now: float, interval: float, offset: float) -> float:
    """The first time >= now that is ``offset`` past a multiple of ``interval``."""
    base = math.floor((now - offset) / interval) * interval + offset
    return base if base >= now else base + interval


def next_due(previous: float, interval: float, now: float) -> float:
    """The next slot after ``previous``, skipping slots already missed (no catch-up bursts)."""
    due = previous + interval
    if due < now:
        due += math.ceil((now - due) / interval) * interval
    return due


@dataclass
class _Job:
    check: CheckConfig
    assignment: Assignment
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    runs: int = 0
    last_lag: float = 0.0


class Scheduler:
    """trio driver: ``await nursery.start(sched.run)``, then ``sched.update(checks, view)``."""

    def __init__(
        self,
        me: str,
        runner: Runner,
        sink: Sink,
        config: SchedulerConfig | None = None,
        **placement_args: Any,
    ) -> None:
        """Create a scheduler for agent ``me`` (its name in the view)."""
        self.me = me
        self.config = config or SchedulerConfig()
        self._runner = runner
        self._sink = sink
        self._limiter = trio.CapacityLimiter(self.config.max_concurrent)
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._nursery: trio.Nursery | None = None
        self._placement_args = placement_args
        self.placement: Placement | None = None
        self.max_lag = 0.0
        """Worst loop lag seen since start (s)."""
        self.last_lag = 0.0
        """Lag of the latest monitor wakeup (s)."""
        self._lag_events: list[tuple[float, float]] = []  # (time, lag) over the recent window
        self._monitor_due: float | None = None  # when the monitor should wake next
        self.started = 0
        """Assignment tasks started since creation (restarts included)."""

    @property
    def assignments(self) -> list[Assignment]:
        """What this agent currently runs."""
        return [j.assignment for j in self._jobs.values()]

    @property
    def in_flight(self) -> int:
        """Probes running now."""
        return int(self._limiter.borrowed_tokens)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; assignment tasks live in this nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._monitor)
            for job in self._jobs.values():
                self.started += 1
                nursery.start_soon(self._loop, job)
            task_status.started()

    def update(self, checks: Sequence[CheckConfig], view: Sequence[AgentInfo]) -> Placement:
        """Recompute placement and start/stop only the assignments that changed."""
        placement = Placement(view, checks, **self._placement_args)
        self.placement = placement
        by_name = {c.name: c for c in checks}
        wanted = {(a.check, a.target): a for a in placement.assignments(self.me)}
        self.set_assignments([(by_name[a.check], a) for a in wanted.values()])
        return placement

    def set_assignments(self, pairs: Sequence[tuple[CheckConfig, Assignment]]) -> None:
        """Apply an explicit assignment set (the diff logic behind :meth:`update`)."""
        new = {(a.check, a.target): (c, a) for c, a in pairs}
        for key, job in list(self._jobs.items()):
            if key not in new or new[key] != (job.check, job.assignment):
                job.scope.cancel()
                del self._jobs[key]
        for key, (check, assignment) in new.items():
            if key not in self._jobs:
                job = _Job(check, assignment)
                self._jobs[key] = job
                if self._nursery is not None:
                    self.started += 1
                    self._nursery.start_soon(self._loop, job)

    def _lag_since(self, since: float) -> float:
        """Worst lag recorded since ``since``, including the monitor's pending overdue wakeup."""
        seen = max((lag for t, lag in self._lag_events if t >= since), default=0.0)
        if self._monitor_due is not None:
            seen = max(seen, trio.current_time() - self._monitor_due)
        return seen

    async def _monitor(self) -> None:
        tick = self.config.lag_tick
        while True:
            expected = trio.current_time() + tick
            self._monitor_due = expected
            await trio.sleep_until(expected)
            now = trio.current_time()
            lag = max(0.0, now - expected)
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
            if lag > self.config.degraded_lag:  # only starved wakeups matter; keeps this tiny
                self._lag_events.append((now, lag))
                horizon = now - 600.0  # no probe stays due or in flight for 10 minutes
                while self._lag_events and self._lag_events[0][0] < horizon:
                    self._lag_events.pop(0)

    async def _loop(self, job: _Job) -> None:
        a, check = job.assignment, job.check
        interval = float(check.interval)
        with job.scope:
            offset = phase_offset(a.check, a.target, interval)
            due = first_due(trio.current_time(), interval, offset)
            while True:
                wake = due + jitter(a.check, a.target, job.runs, interval,
                                    self.config.jitter_fraction)
                await trio.sleep_until(wake)
                started = trio.current_time()
                job.last_lag = max(0.0, started - wake)
                async with self._limiter:
                    try:
                        with trio.fail_after(float(check.timeout) * 2):
                            result = await self._runner(a, check)
                    except trio.TooSlowError:
                        log.warning("probe %s -> %s overran twice its timeout", a.check, a.target)
                        result = None
                    except Exception:  # a broken probe must not stop the others
                        log.exception("probe %s -> %s raised; fix the probe or its params",
                                      a.check, a.target)
                        result = None
                lag = max(job.last_lag, self._lag_since(wake))
                degraded = lag > self.config.degraded_lag
                if result is not None:
                    await self._sink(a, result, degraded)
                job.runs += 1
                due = next_due(due, interval, trio.current_time())
