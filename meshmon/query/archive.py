"""History older than the agents hold, from the aggregator's archive. Pure functions.

Theory of operation
-------------------
A ``history`` question is answered by the agents first. Each answer says how far back the
agent holds the series (``oldest``). When some agent's history starts after the question's
``since`` (its ring store overwrote the older results, or it was wiped), the part before is the
archive's: :func:`archive_range` is ``[since, cut)`` with ``cut`` the latest of those starts
(or ``until`` when no agent holds the series at all); nothing is asked when every agent holds
the whole range, so a healthy mesh with a deep ring never bothers the aggregator.

The archive (:class:`meshmon.query.service.HistoryArchive`, implemented over the aggregator's
``GET /v1/results`` by :class:`meshmon.sync.archive.AggregatorArchive`) returns rows, raw or
rolled up at the resolution :func:`resolution_for` picks for the points wanted, newest first.
:func:`archive_answers` turns them into per-agent answers of the same shape as an agent's
(``points`` with ``t``, ``n``, ``ok``, ``rtt_ms``, ``rtt_min_ms``, ``rtt_max_ms``, ``loss_pct``),
keeping for each agent only what is older than its own ``oldest`` (an agent that holds nothing
of the series, or did not answer, gets the whole archive range) and merging points into equal
time buckets beyond ``points``.

The envelope's ``archive`` key (:func:`render_archive`) carries them apart from the agents'
own answers, so every client can tell a point the agents hold from one the archive holds. An
archive that does not answer by its deadline leaves ``answers`` empty and says why in
``missing`` (``timeout``, ``unreachable``, ``refused`` or ``error``, and a sentence); the whole
answer is then ``partial``, as it is when the aggregator cut its rows short (``truncated``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshmon.query.wire import History

RAW_STEP = 60.0
"""Below a point every minute, raw results are asked for; the 1-minute rollup otherwise..."""
MINUTE_MAX_RANGE = 3 * 86400.0
"""...up to three days (4,320 buckets a series, the aggregator's own limit for ``auto``); the
1-hour rollup beyond."""


class ArchiveUnavailable(Exception):
    """The archive did not answer; ``reason`` as a mesh query names a missing agent."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class ArchiveRows:
    """What the archive answered: rows of ``GET /v1/results``, newest first."""

    url: str
    aggregator: str
    """The node name in the aggregator's certificate."""
    resolution: str
    """``raw``, ``1m`` or ``1h``."""
    rows: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    truncated: bool = False
    """The aggregator had more rows than it returned (the oldest were left out)."""


def archive_range(question: History, answers: Mapping[str, Any],
                  now: float) -> tuple[float, float] | None:  # fmt: skip
    """The part of the question's range no answering agent holds, ``(since, cut)``; None when
    the agents hold all of it."""
    until = now if question.until is None else question.until
    starts = [float(o) for a in answers.values() if isinstance(a, Mapping)
              and isinstance(o := a.get("oldest"), int | float)]  # fmt: skip
    cut = min(until, max(starts)) if starts else until
    return (question.since, cut) if cut > question.since else None


def resolution_for(since: float, until: float, points: int) -> str:
    """Raw rows when the points wanted are closer than a minute, else a rollup."""
    span = max(0.0, until - since)
    if span / max(1, points) < RAW_STEP:
        return "raw"
    return "1m" if span <= MINUTE_MAX_RANGE else "1h"


def epoch(text: Any) -> float | None:
    """Unix seconds of an ISO 8601 time (None when it is not one)."""
    try:
        value = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None  # fmt: skip


def row_point(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """One row of ``/v1/results`` (raw, or a rollup bucket) as a history point; None if it has
    no time."""
    t = epoch(row.get("time"))
    if t is None:
        return None
    loss = _num(row.get("loss"))
    if "count" in row:  # a rollup bucket
        n = int(_num(row.get("count")) or 0)
        ok = n - int(_num(row.get("failures")) or 0)
        rtt, low, high = (_num(row.get(k)) for k in ("rtt_avg_ms", "rtt_min_ms", "rtt_max_ms"))
    else:
        n, ok = 1, 1 if row.get("success") else 0
        rtt = _num(row.get("rtt_ms")) if ok else None
        low = high = rtt
    return {"t": t, "n": n, "ok": ok, "rtt_ms": rtt, "rtt_min_ms": low, "rtt_max_ms": high,
            "loss_pct": None if loss is None else 100.0 * loss}  # fmt: skip


def merge(points: Sequence[Mapping[str, Any]], t: float) -> dict[str, Any]:
    """Several points as one starting at ``t``: counts add up, the RTT mean is weighted by the
    successes that carry one, loss by the results, min and max are exact."""
    n = sum(int(p["n"]) for p in points)
    ok = sum(int(p["ok"]) for p in points)
    timed = [(p["rtt_ms"], max(1, int(p["ok"]))) for p in points if p.get("rtt_ms") is not None]
    lows = [p["rtt_min_ms"] for p in points if p.get("rtt_min_ms") is not None]
    highs = [p["rtt_max_ms"] for p in points if p.get("rtt_max_ms") is not None]
    losses = [(p["loss_pct"], int(p["n"])) for p in points if p.get("loss_pct") is not None]
    weight = sum(w for _, w in losses)
    return {
        "t": t, "n": n, "ok": ok,
        "rtt_ms": sum(v * w for v, w in timed) / sum(w for _, w in timed) if timed else None,
        "rtt_min_ms": min(lows) if lows else None, "rtt_max_ms": max(highs) if highs else None,
        "loss_pct": sum(v * w for v, w in losses) / weight if weight else None,
    }  # fmt: skip


def downsample_points(points: Sequence[Mapping[str, Any]], limit: int, since: float,
                      until: float) -> tuple[list[dict[str, Any]], float | None]:  # fmt: skip
    """At most ``limit`` points (oldest first): equal time buckets from the first point (or
    ``since``, if later) to ``until`` when there are more; and the step (None: untouched)."""
    if len(points) <= limit:
        return [dict(p) for p in points], None
    lo = max(since, float(points[0]["t"]))
    hi = max(until, float(points[-1]["t"]))
    step = (hi - lo) / limit if hi > lo else 1.0
    buckets: dict[int, list[Mapping[str, Any]]] = {}
    for p in points:
        i = min(limit - 1, max(0, int((float(p["t"]) - lo) / step)))
        buckets.setdefault(i, []).append(p)
    return [merge(buckets[i], lo + i * step) for i in sorted(buckets)], step


def archive_answers(rows: Sequence[Mapping[str, Any]], answers: Mapping[str, Any], points: int,
                    since: float, cut: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per agent, the archive's points older than what the agent holds itself (see the module
    docstring), oldest first, at most ``points``."""
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        agent = row.get("agent")
        point = row_point(row)
        if not isinstance(agent, str) or point is None or not since <= point["t"] < cut:
            continue
        own = answers.get(agent)
        oldest = own.get("oldest") if isinstance(own, Mapping) else None
        if isinstance(oldest, int | float) and point["t"] >= oldest:
            continue  # the agent answers for this part itself
        series.setdefault(agent, []).append(point)
    out = {}
    for agent, items in sorted(series.items()):
        items.sort(key=lambda p: p["t"])
        kept, step = downsample_points(items, points, since, cut)
        out[agent] = {"points": kept, "downsampled": step is not None, "step_s": step,
                      "records": sum(p["n"] for p in items)}  # fmt: skip
    return out


def render_archive(url: str, since: float, cut: float, *, rows: ArchiveRows | None = None,
                   answers: Mapping[str, Any] | None = None,
                   missing: ArchiveUnavailable | None = None) -> dict[str, Any]:  # fmt: skip
    """The envelope's ``archive``: what the aggregator answered for ``[since, cut)``, or why it
    did not (``missing``)."""
    return {
        "url": rows.url if rows is not None else url,
        "aggregator": rows.aggregator if rows is not None else None,
        "resolution": rows.resolution if rows is not None else None,
        "since": since, "until": cut,
        "answers": dict(answers or {}),
        "truncated": bool(rows is not None and rows.truncated),
        "missing": None if missing is None else {"reason": missing.reason,
                                                 "detail": missing.detail},
    }  # fmt: skip
