"""Event-loop lag: how late a task that asked to wake at a time actually runs.

One task sleeps :data:`INTERVAL` at a time and records how much later than asked it woke: the
time the loop was busy with something else (a probe burst, a slow callback, a blocking call by
mistake, a starved host). One wake-up a second costs ~0.25 ms of CPU, and the task runs only
while the metrics listener is on.
"""

from __future__ import annotations

import collections
from bisect import bisect_left

import trio

INTERVAL = 1.0
"""Seconds between samples."""
WINDOW = 60
"""Samples the ``max`` gauge looks back over (one minute)."""
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram bounds (s): a healthy loop answers within a millisecond; the scheduler marks
results degraded from 200 ms."""


class LoopLag:
    """Samples the loop's lag; read by the exposition."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def observe(self, lag: float) -> None:
        """Record one sample (s)."""
        self.counts[bisect_left(BOUNDS, lag)] += 1
        self.total += lag
        self.recent.append(lag)

    @property
    def max_recent(self) -> float:
        """The largest lag over the last :data:`WINDOW` samples."""
        return max(self.recent, default=0.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled."""
        task_status.started()
        while True:
            asked = trio.current_time() + INTERVAL
            await trio.sleep_until(asked)
            self.observe(max(0.0, trio.current_time() - asked))
