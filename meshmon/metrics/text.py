"""The per check x target probe families, written straight in the text exposition format.

A thousand check x target pairs are about 21,000 lines (a 15-bucket histogram each, success,
counters). Built as ``prometheus_client`` families and encoded by it, they cost ~25 us a line
(one ``Sample`` tuple, a label dict and its escaping per line): most of a scrape, on a host the
agent is a guest of. Here each pair's labels are escaped once, the ``le`` values are constant
strings, and a line is one f-string (~1 us). The format is Prometheus text 0.0.4, the one
``prometheus_client`` writes too: ``# HELP`` and ``# TYPE`` per family, then one line per sample
(``tests/test_metrics.py`` parses it back with ``prometheus_client``'s parser; ``promtool check
metrics`` accepts it). The other, small families stay ``prometheus_client``'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from meshmon.metrics.probes import (
    BUCKETS,
    C_DEGRADED,
    C_FAILURE,
    C_SUCCESS,
    FAILURE,
    LAST_OK,
    LAST_TS,
    RTT_BOUNDS_MS,
    SUCCESS,
    SUM_MS,
    Snapshot,
)

_LE = [repr(b / 1000) for b in RTT_BOUNDS_MS] + ["+Inf"]


def escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    """A sample value: integers as they are, floats in Go's notation for the specials."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _head(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def probe_text(snap: Snapshot) -> str:
    """Every probe family of ``snap`` (check totals, per-pair series, the limit's counters)."""
    return "".join(_lines(snap))


def _lines(p: Snapshot) -> Iterator[str]:
    yield _head("meshmon_check_results_total", "counter", "Results per check: success, failure, "
                "or degraded (taken while this agent lagged; not counted per target).")
    for check, t in sorted(p.checks.items()):
        c = escape(check)
        for result, i in (("success", C_SUCCESS), ("failure", C_FAILURE),
                          ("degraded", C_DEGRADED)):  # fmt: skip
            yield f'meshmon_check_results_total{{check="{c}",result="{result}"}} {t[i]}\n'
    pairs = [(f'check="{escape(c)}",target="{escape(t)}"', s)
             for c, t, s in sorted(p.series, key=lambda row: (row[0], row[1]))]  # fmt: skip
    yield _head("meshmon_probe_success", "gauge",
                "Whether the latest result was a success (1) or not.")
    for labels, s in pairs:
        yield f"meshmon_probe_success{{{labels}}} {s[LAST_OK]}\n"
    yield _head("meshmon_probe_last_result_timestamp_seconds", "gauge",
                "When the latest result's probe started (Unix time).")
    for labels, s in pairs:
        yield f"meshmon_probe_last_result_timestamp_seconds{{{labels}}} {number(s[LAST_TS])}\n"
    yield _head("meshmon_probe_results_total", "counter", "Results per check and target.")
    for labels, s in pairs:
        yield (f'meshmon_probe_results_total{{{labels},result="success"}} {s[SUCCESS]}\n'
               f'meshmon_probe_results_total{{{labels},result="failure"}} {s[FAILURE]}\n')
    yield _head("meshmon_probe_rtt_seconds", "histogram", "Response time of successful "
                "results (ping: the burst's average RTT; tcp: connect; http: total).")
    for labels, s in pairs:
        running, lines = 0, []
        for le, n in zip(_LE, s[BUCKETS:], strict=True):
            running += n
            lines.append(f'meshmon_probe_rtt_seconds_bucket{{{labels},le="{le}"}} {running}\n')
        lines.append(f"meshmon_probe_rtt_seconds_sum{{{labels}}} {number(s[SUM_MS] / 1000)}\n"
                     f"meshmon_probe_rtt_seconds_count{{{labels}}} {running}\n")
        yield "".join(lines)
    yield _head("meshmon_probe_series", "gauge", "Check x target pairs with series of their own.")
    yield f"meshmon_probe_series {len(p.series)}\n"
    yield _head("meshmon_probe_series_limit", "gauge",
                "Most pairs given series (metrics.max_series).")
    yield f"meshmon_probe_series_limit {p.limit}\n"
    yield _head("meshmon_probe_series_dropped_results_total", "counter",
                "Results of pairs beyond the limit: in the per-check totals only.")
    yield f"meshmon_probe_series_dropped_results_total {p.dropped_results}\n"
