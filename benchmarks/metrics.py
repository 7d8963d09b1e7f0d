"""Metrics: CPU per result on the agent's hot path, and what a scrape costs, for 1000 targets.

The agent stores ~1000 results/s within ~50 us of CPU per probe, so counting a result for
``/metrics`` may cost about 1 us. Measured in the same run:

* meshmon: :meth:`meshmon.metrics.probes.ProbeSeries.record` once per stored batch of 1000
  results (one per target), in the stored form the ping batches hand over and as result objects;
* baseline: what a user of ``prometheus_client`` would write per result: a labelled
  ``Histogram.observe``, ``Gauge.set`` and ``Counter.inc`` (``.labels(check, target)`` each).

Extra fields: the part of a scrape that runs on the agent's loop (pruning and copying 1000
series), the part in the worker thread (:mod:`meshmon.metrics.text`), the same series built as
``prometheus_client`` families and encoded by it (what that writer replaced), and the size.
Run: ``python -m benchmarks.metrics [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from meshmon.metrics.exposition import counter, gauge, histogram
from meshmon.metrics.probes import (
    BUCKETS,
    FAILURE,
    LAST_OK,
    LAST_TS,
    RTT_BOUNDS_MS,
    SUCCESS,
    SUM_MS,
    ProbeSeries,
    Snapshot,
)
from meshmon.metrics.text import probe_text
from meshmon.placement import Assignment
from meshmon.results.model import Ping
from meshmon.results.ping import PingResult

TARGETS = 1000


class Stored(NamedTuple):
    """A ping result in its stored form (the fields :class:`ProbeSeries` reads)."""

    started_at: float
    success: bool
    response_time_ms: float | None


def _ping(rtt: float | None) -> Ping:
    result = PingResult(successes=int(rtt is not None), failures=int(rtt is None),
                        success_latencies=(rtt,) if rtt is not None else (), errors=(),
                        avg_response_time_ms=rtt, resolved_ip="10.0.0.1", samples=(rtt,))
    return Ping(agent="a", check="ping", target="t", family=4, started_at=time.time(),
                duration_ms=1.0, result=result)  # fmt: skip


def _best(fn: Any, rounds: int, repeat: int) -> float:
    """Best seconds per call of ``fn`` over ``repeat`` timings of ``rounds`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under a minute)")
    args = parser.parse_args()
    rounds, repeat = (20, 5) if args.quick else (100, 9)
    rng = random.Random(1)
    assignments = [Assignment("ping", f"10.0.{i // 256}.{i % 256}", f"10.0.{i // 256}.{i % 256}")
                   for i in range(TARGETS)]  # fmt: skip
    rtts = [rng.uniform(0.1, 30.0) if rng.random() > 0.02 else None for _ in range(TARGETS)]
    stored = [(a, [Stored(time.time(), r is not None, r)], False)
              for a, r in zip(assignments, rtts, strict=True)]  # fmt: skip
    objects = [(a, [_ping(r)], False) for a, r in zip(assignments, rtts, strict=True)]

    series = ProbeSeries(TARGETS)
    series.record(stored)
    ours_stored = _best(lambda: series.record(stored), rounds, repeat) / TARGETS
    ours_objects = _best(lambda: series.record(objects), rounds, repeat) / TARGETS

    registry = CollectorRegistry()
    hist = Histogram("probe_rtt_seconds", "", ["check", "target"], registry=registry,
                     buckets=[b / 1000 for b in RTT_BOUNDS_MS])  # fmt: skip
    success = Gauge("probe_success", "", ["check", "target"], registry=registry)
    results = Counter("probe_results", "", ["check", "target", "result"], registry=registry)

    def baseline() -> None:
        for a, (one,), _ in stored:
            if one.success:
                hist.labels(a.check, a.target).observe(one.response_time_ms / 1000)
            success.labels(a.check, a.target).set(1 if one.success else 0)
            results.labels(a.check, a.target, "success" if one.success else "failure").inc()

    baseline()
    base = _best(baseline, rounds, repeat) / TARGETS

    keys = [(a.check, a.target) for a in assignments]
    on_loop = _best(lambda: (series.prune(keys), series.snapshot()), rounds, repeat)
    snap = series.snapshot()
    text = probe_text(snap).encode()
    in_thread = _best(lambda: probe_text(snap).encode(), max(2, rounds // 10), repeat)
    via_client = _best(lambda: generate_latest(_Families(snap)), 2, max(2, repeat // 3))
    print(json.dumps({
        "bench": "metrics", "metric": "cpu_per_result_us", "value": round(ours_stored * 1e6, 3),
        "unit": "us/result", "baseline": "prometheus_client labelled observe+set+inc",
        "baseline_value": round(base * 1e6, 3), "ratio": round(ours_stored / base, 3),
        "result_objects_us": round(ours_objects * 1e6, 3), "targets": TARGETS,
        "scrape_on_loop_ms": round(on_loop * 1e3, 3),
        "scrape_in_thread_ms": round(in_thread * 1e3, 2), "exposition_bytes": len(text),
        "scrape_via_client_families_ms": round(via_client * 1e3, 1),
    }))


class _Families(Collector):
    """The same series as ``prometheus_client`` families (what :mod:`meshmon.metrics.text`
    replaces): built and encoded by the client, the writer's own baseline."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        labels = ["check", "target"]
        rows = sorted(self.snap.series, key=lambda row: (row[0], row[1]))
        yield gauge("meshmon_probe_success", "", labels=labels,
                    rows=[([c, t], s[LAST_OK]) for c, t, s in rows])
        yield gauge("meshmon_probe_last_result_timestamp_seconds", "", labels=labels,
                    rows=[([c, t], s[LAST_TS]) for c, t, s in rows])
        yield counter("meshmon_probe_results_total", "", labels=[*labels, "result"],
                      rows=[([c, t, r], s[i]) for c, t, s in rows
                            for r, i in (("success", SUCCESS), ("failure", FAILURE))])
        yield histogram("meshmon_probe_rtt_seconds", "", labels,
                        [b / 1000 for b in RTT_BOUNDS_MS],
                        (([c, t], s[BUCKETS:], s[SUM_MS] / 1000) for c, t, s in rows))


if __name__ == "__main__":
    main()
