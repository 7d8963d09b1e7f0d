"""Runs this agent's assignments on their intervals: spread, jittered, capped, lag-aware.

Theory of operation
-------------------
* Planning is pure (:func:`phase_offset`, :func:`first_due`, :func:`next_due`, :func:`jitter`):
  an assignment's phase inside its interval comes from a stable hash of (check, target), so
  1000 assignments of a 30 s check start spread over the 30 s rather than together
  (goldpinger #69), and every restart keeps the same phase. Jitter is bounded
  (``jitter_fraction`` of the interval) and deterministic per (assignment, round): a seed
  hashed once per assignment, mixed with the round number (SplitMix64) for each run.
* The driver (:class:`Scheduler`) is one task over a heap of wake times, not a task per
  assignment: a sleeping task per target costs a wake-up, a cancel scope and a context switch
  per probe, which at 1000 probes/s was most of the agent's CPU. The driver wakes at most once
  per ``tick`` and takes every assignment due by then. Due assignments of a *batchable* check
  (``ping``: one ICMP socket serves them all) go to the batch runner together, one task per
  check and tick; the others run one task each. Each run's results go to the sink in one call,
  and the assignment is re-queued for its next slot when its run has finished, so a slow probe
  never overlaps itself.
* :meth:`Scheduler.update` diffs the old and new assignment sets: removed ones are dropped
  (their queued wake-up is ignored, a run in flight is cancelled), new ones queued, unchanged
  ones (same check config, same target address) keep their phase and state.
* A concurrency cap (``trio.CapacityLimiter``) bounds probe tasks in flight; a batch is one task
  on one socket and takes one token.
* Loop lag: each driver wake-up measures how late it is against the time it asked for; an idle
  driver (nothing due) sleeps up to ``lag_tick`` so lag is still sampled. A result is marked
  degraded when the worst lag seen while it was due or in flight exceeds ``degraded_lag``: the
  agent was starved, so its latency numbers say more about this host than about the network.
  Batching lateness (at most one ``tick``) is by design and not counted as lag.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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


BatchRunner = Callable[[CheckConfig, Sequence[Assignment]], Awaitable[Sequence[Any]]]
"""Runs one check against several assignments at once; one result per assignment, in order."""


class Sink(Protocol):
    """Receives the results of one run (one or a batch), each with its degraded flag."""

    async def __call__(self, items: Sequence[tuple[Assignment, Any, bool]]) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler knobs."""

    max_concurrent: int = 64
    """Probe tasks in flight at once; bounds sockets and CPU on a guest host."""
    jitter_fraction: float = 0.05
    """Each run moves by up to this fraction of its interval (bounded jitter)."""
    degraded_lag: float = 0.2
    """Loop lag (s) above which results are marked degraded: 200 ms dwarfs LAN RTTs."""
    lag_tick: float = 1.0
    """Longest an idle driver sleeps, so loop lag is sampled even with nothing due."""
    tick: float = 0.1
    """Driver granularity: assignments due within one tick go out together, so a probe leaves
    at most one tick after its jittered slot. Each tick costs ~0.5 ms of CPU on a busy 2-core
    VM, whatever the batch size (the run loop, the batch and the store run with caches gone
    cold while the process slept), against ~30 us per probe: at 1000 probes/s, 50 ms ticks
    took ~5 % of a core and 100 ms ones ~4.2 % (benchmarks/agent_cost). 100 ms is twice the
    default jitter of a 1 s interval and a small share of any longer one."""
    batch_kinds: frozenset[str] = frozenset({"ping"})
    """Check kinds whose due assignments go to the batch runner together."""


def phase_offset(check: str, target: str, interval: float) -> float:
    """Deterministic offset in [0, interval) for an assignment."""
    return (stable_hash(f"{check}\0{target}") / 2**64) * interval


_M64 = 2**64 - 1


def jitter_seed(check: str, target: str) -> int:
    """An assignment's jitter seed: hashed once, when it is scheduled."""
    return stable_hash(f"{check}\0{target}\0jitter")


def jitter_share(seed: int, round_no: int) -> float:
    """Round ``round_no``'s share of the jitter window, in [0, 1): the SplitMix64 output for
    ``(seed, round)``, a few integer operations instead of a hash per probe."""
    x = (seed + (round_no + 1) * 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return float(((x ^ (x >> 31)) >> 11) * 2.0**-53)


def jitter(check: str, target: str, round_no: int, interval: float, fraction: float) -> float:
    """Deterministic jitter in [0, fraction * interval) for one round."""
    return jitter_share(jitter_seed(check, target), round_no) * fraction * interval


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


@dataclass(eq=False, slots=True)
class _Job:
    check: CheckConfig
    assignment: Assignment
    interval: float = 0.0
    """``check.interval`` in seconds."""
    seed: int = 0
    """:func:`jitter_seed` of the assignment."""
    due: float = 0.0
    """The current slot (without jitter)."""
    wake: float = 0.0
    """When it should run: ``due`` plus this round's jitter."""
    runs: int = 0
    active: bool = True
    """False once removed by an update; its queued wake-up is then ignored."""
    scope: trio.CancelScope | None = None
    """The cancel scope of its run in flight (a batch's shared one), ``None`` between runs."""

    def __post_init__(self) -> None:
        self.interval = float(self.check.interval)
        self.seed = jitter_seed(self.assignment.check, self.assignment.target)


class Scheduler:
    """trio driver: ``await nursery.start(sched.run)``, then ``sched.update(checks, view)``."""

    def __init__(
        self,
        me: str,
        runner: Runner,
        sink: Sink,
        config: SchedulerConfig | None = None,
        batch_runner: BatchRunner | None = None,
        **placement_args: Any,
    ) -> None:
        """Create a scheduler for agent ``me`` (its name in the view)."""
        self.me = me
        self.config = config or SchedulerConfig()
        self._runner = runner
        self._batch_runner = batch_runner
        self._sink = sink
        self._limiter = trio.CapacityLimiter(self.config.max_concurrent)
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._nursery: trio.Nursery | None = None
        self._kick = trio.Event()
        self._placement_args = placement_args
        self.placement: Placement | None = None
        self.max_lag = 0.0
        """Worst loop lag seen since start (s)."""
        self.last_lag = 0.0
        """Lag of the latest driver wake-up (s)."""
        self._lag_events: list[tuple[float, float]] = []  # (time, lag) over the recent window
        self._asked: float | None = None  # when the driver asked to wake (None: not sleeping)
        self.started = 0
        """Assignments started since creation (restarts included)."""

    @property
    def assignments(self) -> list[Assignment]:
        """What this agent currently runs."""
        return [j.assignment for j in self._jobs.values()]

    @property
    def in_flight(self) -> int:
        """Probe tasks running now."""
        return int(self._limiter.borrowed_tokens)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; probe tasks live in this nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = trio.current_time()
            for job in self._jobs.values():
                self._start(job, now)
            task_status.started()
            await self._drive()

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
                job.active = False
                if job.scope is not None:
                    job.scope.cancel()
                del self._jobs[key]
        for key, (check, assignment) in new.items():
            if key not in self._jobs:
                job = _Job(check, assignment)
                self._jobs[key] = job
                if self._nursery is not None:
                    self._start(job, trio.current_time())

    # --- the driver -------------------------------------------------------------------------

    def _start(self, job: _Job, now: float) -> None:
        a, interval = job.assignment, job.interval
        self.started += 1
        job.due = first_due(now, interval, phase_offset(a.check, a.target, interval))
        self._queue(job)

    def _queue(self, job: _Job) -> None:
        job.wake = job.due + (jitter_share(job.seed, job.runs)
                              * self.config.jitter_fraction * job.interval)  # fmt: skip
        heapq.heappush(self._heap, (job.wake, next(self._order), job))
        if self._asked is not None and job.wake < self._asked:
            self._kick.set()

    def _record_lag(self, now: float, lag: float) -> None:
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        if lag > self.config.degraded_lag:  # only starved wake-ups matter; keeps this tiny
            self._lag_events.append((now, lag))
            horizon = now - 600.0  # no probe stays due or in flight for 10 minutes
            while self._lag_events and self._lag_events[0][0] < horizon:
                self._lag_events.pop(0)

    def _lag_since(self, since: float) -> float:
        """Worst lag recorded since ``since``, including the driver's pending overdue wake-up
        (a probe that just blocked the loop finishes before the driver notices)."""
        seen = max((lag for t, lag in self._lag_events if t >= since), default=0.0)
        if self._asked is not None:
            seen = max(seen, trio.current_time() - self._asked)
        return seen

    async def _drive(self) -> None:
        assert self._nursery is not None
        tick, last = self.config.tick, -math.inf
        while True:
            now = trio.current_time()
            while self._heap and not self._heap[0][2].active:
                heapq.heappop(self._heap)
            nxt = self._heap[0][0] if self._heap else math.inf
            asked = min(max(nxt, last + tick), now + self.config.lag_tick)
            if asked > now:
                self._asked = asked
                self._kick = trio.Event()
                with trio.move_on_at(asked):
                    await self._kick.wait()
                self._asked = None
                now = trio.current_time()
                if now >= asked:  # woke on time or late, not kicked: that lateness is lag
                    self._record_lag(now, now - asked)
            last = now
            heap, batches = self._heap, dict[str, list[_Job]]()
            batch_kinds = self.config.batch_kinds if self._batch_runner is not None else ()
            while heap and heap[0][0] <= now:
                job = heapq.heappop(heap)[2]
                if not job.active:
                    continue
                if job.check.kind in batch_kinds:
                    batches.setdefault(job.check.name, []).append(job)
                else:
                    self._nursery.start_soon(self._run_one, job)
            for jobs in batches.values():
                self._nursery.start_soon(self._run_batch, jobs)

    async def _run_one(self, job: _Job) -> None:
        a, check = job.assignment, job.check
        result = None
        if not job.active:  # dropped by an update before it started
            return
        with trio.CancelScope() as job.scope:
            async with self._limiter:
                try:
                    with trio.fail_after(float(check.timeout) * 2):
                        result = await self._runner(a, check)
                except trio.TooSlowError:
                    log.warning("probe %s -> %s overran twice its timeout", a.check, a.target)
                except Exception:  # a broken probe must not stop the others
                    log.exception("probe %s -> %s raised; fix the probe or its params",
                                  a.check, a.target)  # fmt: skip
        if job.active:
            await self._finish([job], [result])

    async def _run_batch(self, jobs: list[_Job]) -> None:
        assert self._batch_runner is not None
        check, limiter = jobs[0].check, self._limiter
        results: Sequence[Any] = [None] * len(jobs)
        # One scope serves both ends: an update that drops any of the jobs cancels it (the
        # batch must not wait), and its deadline cuts a batch off at twice the timeout. The
        # limiter is taken without a checkpoint when a token is free: each trio checkpoint is
        # one more pass of the run loop per tick.
        with trio.CancelScope() as scope:
            for job in jobs:
                job.scope = scope
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                scope.deadline = trio.current_time() + float(check.timeout) * 2
                results = await self._batch_runner(check, [j.assignment for j in jobs])
            except Exception:
                log.exception("probe batch %s raised; fix the probe or its params",
                              check.name)  # fmt: skip
            finally:
                limiter.release()
        if scope.cancelled_caught:  # dropped (re-run the others on their next slot) or late
            if all(job.active for job in jobs):
                log.warning("probe batch %s (%d targets) overran twice its timeout",
                            check.name, len(jobs))  # fmt: skip
            results = [None] * len(jobs)
        await self._finish(jobs, results)

    async def _finish(self, jobs: Sequence[_Job], results: Sequence[Any]) -> None:
        now = trio.current_time()
        # The jobs of one run were taken on the same tick: the lag since the earliest wake-up
        # among them covers each one's due-and-in-flight window (one scan, not one per job).
        degraded = self._lag_since(min(job.wake for job in jobs)) > self.config.degraded_lag
        items = [(job.assignment, result, degraded)
                 for job, result in zip(jobs, results, strict=True)
                 if result is not None and job.active]  # fmt: skip
        if items:
            try:
                await self._sink(items)
            except Exception:
                log.exception("storing %d result(s) failed", len(items))
        for job in jobs:
            job.scope = None
            if job.active:
                job.runs += 1
                job.due = next_due(job.due, job.interval, now)
                self._queue(job)
