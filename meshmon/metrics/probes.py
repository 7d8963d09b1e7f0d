"""Probe outcomes per check x target, counted on the hot path for ``/metrics``.

Theory of operation
-------------------
An agent stores about a thousand results a second within a budget of ~50 us of CPU per probe,
so the exporter may add about 1 us per result. ``prometheus_client``'s own ``Histogram.observe``
takes a lock and walks its buckets (several us), and a labelled child costs a dict lookup on a
tuple of label values per call. Instead, :meth:`ProbeSeries.record` takes the scheduler's batch
as the agent hands it to the store (one call per stored batch), finds each assignment's series
once, and per result does a ``bisect`` into the RTT bounds and a few integer increments on a
plain list. Nothing here builds a metric: :meth:`ProbeSeries.snapshot` copies the numbers on the
trio thread at scrape time, and the exposition is built from that copy in a worker thread
(:mod:`meshmon.metrics.agent`).

Bounded label sets: at most ``max_series`` check x target pairs get a series of their own.
Results for pairs beyond that are counted (``dropped_results``), and every result, tracked pair
or not, still counts in its check's totals (a handful of checks: always complete). Series of
assignments this agent no longer runs are removed at the next scrape (:meth:`prune`), which
frees their room for new ones.

Degraded results (taken while the agent's loop lagged, see :mod:`meshmon.scheduler`) say more
about this host than about the target: they are counted per check and leave the per-target
series (success, RTT) alone, as the alert rules do.

A result is either a :class:`~meshmon.results.MonitoringResult` (``is_successful()`` and
``response_time_ms()`` methods) or a result in its stored form with ``success`` and
``response_time_ms`` attributes; both are read without decoding anything. The RTT histogram
holds successful results' ``response_time_ms`` (a failed ping has none; a failed HTTP check's
time would mix two distributions).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

RTT_BOUNDS_MS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
                 2500.0, 5000.0)  # fmt: skip
"""Upper bounds of the RTT buckets (ms; exposed in seconds): a LAN hop (~0.1-1 ms) to a
timeout (5 s default), about 2x apart; +Inf is added. Fixed, so that series of every agent
aggregate with ``sum by (le)``."""

# A series is one flat list (indexing a list beats attribute access on the hot path):
SUCCESS, FAILURE, LAST_OK, LAST_TS, SUM_MS, BUCKETS = 0, 1, 2, 3, 4, 5
_EMPTY = [0, 0, 0, 0.0, 0.0] + [0] * (len(RTT_BOUNDS_MS) + 1)

# per check: successful, failed, degraded results
C_SUCCESS, C_FAILURE, C_DEGRADED = 0, 1, 2


@dataclass(frozen=True)
class Snapshot:
    """The numbers of one scrape, copied on the trio thread."""

    series: list[tuple[str, str, list[Any]]]
    """(check, target, copy of the series list)."""
    checks: dict[str, tuple[int, int, int]]
    """check → (successful, failed, degraded) results."""
    dropped_results: int
    limit: int


class _Check:
    """One check's totals and its tracked series by target."""

    __slots__ = ("series", "totals")

    def __init__(self) -> None:
        self.totals = [0, 0, 0]
        self.series: dict[str, list[Any]] = {}


class ProbeSeries:
    """Per check x target success, RTT histogram and counters; per check totals."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._checks: dict[str, _Check] = {}
        self._count = 0
        """Series held, over every check."""
        self.dropped_results = 0
        """Results of pairs that found no room for a series of their own."""

    def record(self, items: Iterable[tuple[Any, Sequence[Any], bool]]) -> None:
        """Count one stored batch: (assignment, results, degraded) as the scheduler sinks them."""
        bounds, last, entry = RTT_BOUNDS_MS, None, _Check()
        for a, results, degraded in items:
            if a.check is not last:  # a batch is mostly one check: look it up once
                last = a.check
                entry = self._checks.get(last) or self._checks.setdefault(last, _Check())
            if not results:
                continue
            totals = entry.totals
            if degraded:
                totals[C_DEGRADED] += len(results)
                continue
            s = entry.series.get(a.target)
            if s is None:
                s = self._add(entry, a.target, len(results))
            ok = 0
            for one in results:
                rtt = one.response_time_ms
                if callable(rtt):  # a result object; else its stored form
                    success, rtt = one.is_successful(), rtt()
                else:
                    success = one.success
                if success:
                    ok += 1
                    if rtt is not None:
                        s[BUCKETS + bisect_left(bounds, rtt)] += 1
                        s[SUM_MS] += rtt
            s[SUCCESS] += ok
            s[FAILURE] += len(results) - ok
            s[LAST_OK] = 1 if success else 0
            s[LAST_TS] = results[-1].started_at
            totals[C_SUCCESS] += ok
            totals[C_FAILURE] += len(results) - ok

    def _add(self, entry: _Check, target: str, results: int) -> list[Any]:
        """A new series for ``target``, or a scratch one (counted, never shown) when full."""
        if self._count >= self.max_series:
            self.dropped_results += results
            return list(_EMPTY)
        self._count += 1
        s = entry.series[target] = list(_EMPTY)
        return s

    def prune(self, current: Iterable[tuple[str, str]]) -> int:
        """Forget series whose (check, target) is not in ``current``; how many went."""
        keep = set(current)
        gone = 0
        for check, entry in self._checks.items():
            for target in [t for t in entry.series if (check, t) not in keep]:
                del entry.series[target]
                gone += 1
        self._count -= gone
        return gone

    def forget_checks(self, names: Iterable[str]) -> None:
        """Keep per-check totals only for ``names`` (checks removed by a reload go)."""
        keep = set(names)
        for check in [c for c in self._checks if c not in keep]:
            self._count -= len(self._checks.pop(check).series)

    def snapshot(self) -> Snapshot:
        """A copy of every number (on the trio thread; cheap: one list copy per series)."""
        return Snapshot(
            series=[(check, target, s[:]) for check, entry in self._checks.items()
                    for target, s in entry.series.items()],
            checks={check: (e.totals[0], e.totals[1], e.totals[2])
                    for check, e in self._checks.items()},
            dropped_results=self.dropped_results, limit=self.max_series,
        )  # fmt: skip
