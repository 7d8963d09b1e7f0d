"""The Prometheus exposition of a service: captured on its loop, written in a worker thread.

Theory of operation
-------------------
A service's numbers live in objects its trio loop mutates, so they are read on the loop; but
writing a few thousand lines of exposition there would stall probes for milliseconds. A scrape
therefore has two phases. :data:`Capture` runs on the loop and copies what it needs (plain
numbers, small dicts: about a millisecond for a thousand probe series) into a closure; that
closure, a :data:`Build`, runs in a worker thread and turns the copy into metric families,
which ``prometheus_client`` encodes there too, with the process collectors' families. A build
may also yield text already in the exposition format (the bulky probe series, see
:mod:`meshmon.metrics.text`), appended as it is; so the answer is always Prometheus text
0.0.4, which every Prometheus accepts, whatever the scraper's ``Accept``. Reads that are
thread-safe by themselves (the store's counters under its own mutex, ``/proc``) are left to the
build. One scrape is built at a time; another one waits for it rather than doubling the CPU.

Nothing here keeps state between scrapes, so no label value outlives what the service reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import trio
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from meshmon.metrics.http import Response

Build = Callable[[], Iterable[Metric | str]]
"""Makes the families from captured numbers (in a worker thread); a ``str`` is exposition text."""
Capture = Callable[[], Awaitable[Build]]
"""Copies the numbers (on the service's loop; it may await a database query)."""


def gauge(name: str, doc: str, value: float | None = None, labels: Sequence[str] = (),
          rows: Iterable[tuple[Sequence[str], float]] = ()) -> GaugeMetricFamily:  # fmt: skip
    """A gauge family: one ``value``, or ``rows`` of (label values, value)."""
    family = GaugeMetricFamily(name, doc, value=value, labels=labels or None)
    for values, v in rows:
        family.add_metric(list(values), v)
    return family


def counter(name: str, doc: str, value: float | None = None, labels: Sequence[str] = (),
            rows: Iterable[tuple[Sequence[str], float]] = ()) -> CounterMetricFamily:  # fmt: skip
    """A counter family (``name`` ends in ``_total``)."""
    family = CounterMetricFamily(name, doc, value=value, labels=labels or None)
    for values, v in rows:
        family.add_metric(list(values), v)
    return family


def by_reason(name: str, doc: str, counts: dict[str, int], known: Iterable[str] = (),
              label: str = "reason") -> CounterMetricFamily:  # fmt: skip
    """A counter by ``label`` from a dict of counts; ``known`` values start at 0, so a rate
    exists before the first event."""
    merged = dict.fromkeys(known, 0) | counts
    return counter(name, doc, labels=[label], rows=(([k], v) for k, v in sorted(merged.items())))


def histogram(name: str, doc: str, labels: Sequence[str], bounds: Sequence[float],
              rows: Iterable[tuple[Sequence[str], Sequence[int], float]]) -> HistogramMetricFamily:
    """A histogram from per-bucket (not cumulative) counts: ``len(bounds) + 1`` per row, the
    last one for +Inf; ``bounds`` are in the unit of the name (seconds)."""
    family = HistogramMetricFamily(name, doc, labels=labels or None)
    les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    for values, counts, total in rows:
        running, buckets = 0, []
        for le, n in zip(les, counts, strict=True):
            running += n
            buckets.append((le, running))
        family.add_metric(list(values), buckets, total)
    return family


class _Scrape(Collector):
    """One scrape's families: the process collectors', then the service's."""

    def __init__(self, registry: CollectorRegistry, families: list[Metric]) -> None:
        self.registry, self.families = registry, families

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.families


class Exposition:
    """``/metrics`` for one service: ``process_*``, ``python_*`` and what ``capture`` gives."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._lock = trio.Lock()

    async def render(self) -> bytes:
        """The exposition, as ``/metrics`` answers it."""
        async with self._lock:
            build = await self.capture()
            return await trio.to_thread.run_sync(self._encode, build)

    async def handle(self, request: Any) -> Response:
        """The ``/metrics`` route (:mod:`meshmon.metrics.http`)."""
        return Response(200, await self.render(), CONTENT_TYPE_PLAIN_0_0_4)

    def _encode(self, build: Build) -> bytes:
        families: list[Metric] = []
        texts: list[str] = []
        for item in build():
            if isinstance(item, str):
                texts.append(item)
            else:
                families.append(item)
        return generate_latest(_Scrape(self.registry, families)) + "".join(texts).encode()
