"""The TUI's arithmetic, as pure functions of model values and ``now``: no widgets, no I/O.

* :class:`Recent` keeps the last few minutes of samples per (check, target, prober), fed by
  successive "latest" answers and one history backfill, deduplicated, bounded in time and count.
* :func:`summarise` turns the probers' latest samples of each target into one verdict, so that a
  target every prober fails (``DOWN``) reads differently from a target one prober fails
  (``PATH 1/3``: that prober's path is bad, the target is up).
* :func:`buckets` and :func:`spark` draw a recent RTT series as a one-line sparkline.
* :class:`Thresholds` grades latency and loss (the Matrix colours, the Results columns).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshmon.tui.model import STATES, Assignments, Member, Sample

SPARK = "▁▂▃▄▅▆▇█"
FAIL_MARK = "×"
"""A bucket whose every result failed."""
GAP_MARK = " "
"""A bucket without results."""


@dataclass(frozen=True)
class Thresholds:
    """Where latency and loss turn from good to warning to bad."""

    rtt_warn_ms: float = 50.0
    """Above this a path is slow: a continent's width of fibre (~5,000 km) round trip."""
    rtt_bad_ms: float = 150.0
    """Above this interactive use suffers (ITU-T G.114's one-way 150 ms, taken round trip)."""
    loss_warn_pct: float = 0.5
    """Any loss at all in a window of a few dozen echoes (one lost echo in 200)."""
    loss_bad_pct: float = 5.0
    """TCP throughput collapses well before this (Mathis et al.: rate ~ 1/sqrt(loss))."""


def grade_rtt(ms: float | None, t: Thresholds) -> str:
    """``good``, ``warn``, ``bad`` or ``none`` (no reply measured)."""
    if ms is None:
        return "none"
    return "good" if ms <= t.rtt_warn_ms else "warn" if ms <= t.rtt_bad_ms else "bad"


def grade_loss(pct: float | None, t: Thresholds) -> str:
    """``good``, ``warn``, ``bad`` or ``none``."""
    if pct is None:
        return "none"
    return "good" if pct < t.loss_warn_pct else "warn" if pct < t.loss_bad_pct else "bad"


# --- formatting ---------------------------------------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    """A latency in a few characters: ``0.081``, ``12.3``, ``250``, or ``-``."""
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms:.3f}"
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def fmt_pct(pct: float | None) -> str:
    """``0%``, ``33.3%``, ``100%`` or ``-``."""
    if pct is None:
        return "-"
    return f"{pct:.0f}%" if pct == round(pct) else f"{pct:.1f}%"


def ago(ts: float | None, now: float) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since ``ts`` (``-`` when unknown)."""
    if not ts:
        return "-"
    delta = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"


def shorten(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters (``http://10.…:8080/``)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def clock(ts: float) -> str:
    """``HH:MM:SS`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


# --- sparklines -------------------------------------------------------------------------------


def buckets(samples: Iterable[Sample], now: float, span: float, width: int
            ) -> list[float | bool | None]:  # fmt: skip
    """The last ``span`` seconds in ``width`` equal buckets, oldest first: the median RTT of the
    replies in a bucket, ``False`` when it holds only failures, ``None`` when it is empty."""
    step = span / width
    start = now - span
    rtts: list[list[float]] = [[] for _ in range(width)]
    failed = [False] * width
    for s in samples:
        i = int((s.timestamp - start) // step)
        if not 0 <= i < width:
            continue
        if s.success and s.rtt_ms is not None:
            rtts[i].append(s.rtt_ms)
        elif not s.success:
            failed[i] = True
    return [statistics.median(r) if r else (False if failed[i] else None)
            for i, r in enumerate(rtts)]  # fmt: skip


def spark(values: Sequence[float | bool | None]) -> str:
    """One character per value: a bar scaled between the series' min and max,
    :data:`FAIL_MARK` for a failure (``False``), a space for no data (``None``)."""
    numbers = [v for v in values if v is not None and v is not False and v is not True]
    low, high = (min(numbers), max(numbers)) if numbers else (0.0, 0.0)
    out = []
    for v in values:
        if v is None:
            out.append(GAP_MARK)
        elif v is False or v is True:
            out.append(FAIL_MARK)
        elif high - low < 1e-9:
            out.append(SPARK[len(SPARK) // 2])
        else:
            out.append(SPARK[round((v - low) / (high - low) * (len(SPARK) - 1))])
    return "".join(out)


# --- recent samples ---------------------------------------------------------------------------

Key = tuple[str, str]
"""(check, target)."""


class Recent:
    """The last ``span`` seconds of samples per (check, target), from every prober."""

    def __init__(self, span: float = 300.0, max_per_series: int = 600) -> None:
        self.span = span
        self.max_per_series = max_per_series
        self._series: dict[tuple[str, str, str], dict[float, Sample]] = {}
        self.backfilled: set[Key] = set()
        """Targets whose history was loaded once (the screen asks for the others)."""

    def add(self, samples: Iterable[Sample]) -> None:
        """Add samples; one already held (same prober, same timestamp) is replaced."""
        for s in samples:
            series = self._series.setdefault((s.check, s.target, s.agent), {})
            series[s.timestamp] = s
            if len(series) > self.max_per_series:
                del series[min(series)]

    def prune(self, now: float) -> None:
        """Forget samples older than the span."""
        cutoff = now - self.span
        for key in list(self._series):
            series = self._series[key]
            for ts in [t for t in series if t < cutoff]:
                del series[ts]
            if not series:
                del self._series[key]

    def of(self, check: str, target: str) -> list[Sample]:
        """Every held sample of one target, oldest first."""
        out = [s for (c, t, _), series in self._series.items() if (c, t) == (check, target)
               for s in series.values()]  # fmt: skip
        return sorted(out, key=lambda s: s.timestamp)

    def interval(self, check: str, target: str, agent: str) -> float | None:
        """The typical spacing of one prober's results; for a prober with too few, that of the
        target's other probers (they run the same check)."""
        own = median_gap(self._series.get((check, target, agent), {}))
        if own is not None:
            return own
        others = [g for (c, t, a), series in self._series.items()
                  if (c, t) == (check, target) and a != agent
                  and (g := median_gap(series)) is not None]  # fmt: skip
        return statistics.median(others) if others else None


def median_gap(timestamps: Iterable[float]) -> float | None:
    """The median spacing of a series of times (None with fewer than two)."""
    series = sorted(timestamps)
    gaps = [b - a for a, b in itertools.pairwise(series) if b > a]
    return statistics.median(gaps) if gaps else None


# --- per-target verdicts ----------------------------------------------------------------------

MIN_STALE = 5.0
"""A prober's latest result counts as current for at least this long (a mesh query's answer can
be a second or two older than a 1 s check's newest result)..."""
STALE_INTERVALS = 3.0
"""...or for this many of its own probing intervals, whichever is longer."""
UNKNOWN_INTERVAL = 60.0
"""Assumed spacing of a prober whose spacing is not known yet."""


@dataclass(frozen=True)
class TargetRow:
    """One line of the Results screen."""

    check: str
    target: str
    kind: str
    status: str
    """``ok``, ``LOSSY``, ``PATH n/k`` (n of k probers fail), ``DOWN``, ``stale``."""
    probers: int
    failing: tuple[str, ...]
    rtt_ms: float | None
    loss_pct: float | None
    jitter_ms: float | None
    last: float
    error: str | None


def stale_after(interval: float | None) -> float:
    """How old a prober's latest result may be, given its spacing, and still be current."""
    return max(MIN_STALE, STALE_INTERVALS * (interval or UNKNOWN_INTERVAL))


def is_current(s: Sample, recent: Recent, now: float) -> bool:
    """A prober's latest result is still its current word on the target."""
    return now - s.timestamp <= stale_after(recent.interval(s.check, s.target, s.agent))


def _jitter(samples: Sequence[Sample]) -> float | None:
    """Mean absolute difference of consecutive reply RTTs of one prober."""
    rtts = [s.rtt_ms for s in samples if s.success and s.rtt_ms is not None]
    if len(rtts) < 2:
        return None
    return statistics.fmean(abs(b - a) for a, b in itertools.pairwise(rtts))


def summarise(latest: Sequence[Sample], recent: Recent, now: float) -> list[TargetRow]:
    """One verdict per (check, target) from its probers' latest samples, sorted by key."""
    by_key: dict[Key, list[Sample]] = {}
    for s in latest:
        by_key.setdefault((s.check, s.target), []).append(s)
    rows = []
    for (check, target), samples in sorted(by_key.items()):
        current = [s for s in samples if is_current(s, recent, now)]
        newest = max(samples, key=lambda s: s.timestamp)
        if not current:
            rows.append(TargetRow(check, target, newest.kind, "stale", 0, (), None, None, None,
                                  newest.timestamp, newest.error))
            continue
        failing = tuple(sorted(s.agent for s in current if not s.success))
        rtts = [s.rtt_ms for s in current if s.success and s.rtt_ms is not None]
        loss = statistics.fmean(s.loss for s in current)
        jitters = [j for j in (s.jitter_ms for s in current) if j is not None]
        if not jitters:
            history = recent.of(check, target)
            jitters = [j for a in {s.agent for s in current}
                       if (j := _jitter([h for h in history if h.agent == a])) is not None]
        if len(failing) == len(current):
            status = "DOWN"
        elif failing:
            status = f"PATH {len(failing)}/{len(current)}"
        else:
            status = "LOSSY" if loss > 0 else "ok"
        errors = [s.error for s in current if s.error]
        rows.append(TargetRow(
            check, target, newest.kind, status, len(current), failing,
            statistics.median(rtts) if rtts else None, loss,
            statistics.fmean(jitters) if jitters else None,
            max(s.timestamp for s in current), errors[0] if errors else None,
        ))  # fmt: skip
    return rows


@dataclass(frozen=True)
class ProberRow:
    """One prober's view of one target (the drill-down's breakdown)."""

    agent: str
    status: str
    """``ok``, ``LOSSY``, ``FAIL`` or ``stale``."""
    rtt_ms: float | None
    loss_pct: float | None
    jitter_ms: float | None
    last: float
    error: str | None
    samples: tuple[Sample, ...]


def prober_rows(history: Sequence[Sample], latest: Sequence[Sample], now: float,
                window: float) -> list[ProberRow]:  # fmt: skip
    """Per prober: its latest result (when known) and its statistics over the window."""
    agents = sorted({s.agent for s in history} | {s.agent for s in latest})
    newest = {s.agent: s for s in sorted(latest, key=lambda s: s.timestamp)}
    gaps = [g for a in agents
            if (g := median_gap(s.timestamp for s in history if s.agent == a)) is not None]
    usual = statistics.median(gaps) if gaps else None  # a prober with one sample: the others'
    rows = []
    for agent in agents:
        mine = tuple(s for s in history if s.agent == agent and s.timestamp >= now - window)
        last = newest.get(agent) or (mine[-1] if mine else None)
        if last is None:
            continue
        total = sum(s.count for s in mine)
        loss = (sum(s.loss * s.count for s in mine) / total) if total else last.loss
        stale = now - last.timestamp > stale_after(
            median_gap(s.timestamp for s in mine) or usual)
        status = ("stale" if stale else "FAIL" if not last.success
                  else "LOSSY" if loss > 0 else "ok")  # fmt: skip
        rows.append(ProberRow(agent, status,
                              last.rtt_ms if last.success else None, loss,
                              last.jitter_ms if last.jitter_ms is not None else _jitter(mine),
                              last.timestamp, last.error,
                              mine))  # fmt: skip
    return rows


# --- members and coverage ---------------------------------------------------------------------

MEMBER_SORTS = ("name", "state", "rtt", "changed")


def count_states(members: Iterable[Member]) -> dict[str, int]:
    """Members per state, every state present (0 when none)."""
    counts = dict.fromkeys(STATES, 0)
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
    return counts


def sort_members(members: Iterable[Member], by: str, reverse: bool = False) -> list[Member]:
    """Members by ``name``, ``state`` (alive first), ``rtt`` (fastest first, unknown last) or
    ``changed`` (most recent first); ties by name."""
    rank = {s: i for i, s in enumerate(STATES)}
    keys = {
        "name": lambda m: (m.name,),
        "state": lambda m: (rank.get(m.state, len(rank)), m.name),
        "rtt": lambda m: (m.rtt_ms is None, m.rtt_ms or 0.0, m.name),
        "changed": lambda m: (-(m.since or 0.0), m.name),
    }
    ordered = sorted(members, key=keys[by])
    return ordered[::-1] if reverse else ordered


def filter_members(members: Iterable[Member], tag: str) -> list[Member]:
    """Members carrying ``tag`` (all when ``tag`` is empty)."""
    return [m for m in members if not tag or tag in m.tags]


@dataclass(frozen=True)
class CoverageRow:
    """One target of one check: its probers and how many of them are live."""

    check: str
    target: str
    wanted: int
    owners: tuple[tuple[str, str], ...]
    """(prober, its state) pairs."""
    live: int
    mine: bool

    @property
    def gap(self) -> bool:
        """Fewer live probers than wanted."""
        return self.live < self.wanted


def coverage_rows(assignments: Assignments, members: Iterable[Member], me: str
                  ) -> list[CoverageRow]:  # fmt: skip
    """Coverage of every target, owners with their state; live means alive."""
    states = {m.name: m.state for m in members}
    rows = []
    for c in assignments.coverage:
        owners = tuple((o, states.get(o, "?")) for o in c.owners)
        live = sum(1 for _, s in owners if s == "alive")
        rows.append(CoverageRow(c.check, c.target, c.wanted, owners, live, me in c.owners))
    return rows


# --- results ordering and answer notes ----------------------------------------------------------

RESULT_SORTS = ("target", "status", "rtt", "loss")


def status_rank(status: str) -> int:
    """Problems first: DOWN, PATH n/k, LOSSY, stale, ok."""
    for i, word in enumerate(("DOWN", "PATH", "LOSSY", "stale", "ok")):
        if status.startswith(word):
            return i
    return 5


def sort_targets(rows: Iterable[TargetRow], by: str) -> list[TargetRow]:
    """Rows by ``target`` (check, target), ``status`` (problems first), ``rtt`` or ``loss``
    (worst first; unknown last)."""
    keys = {
        "target": lambda r: (r.check, r.target),
        "status": lambda r: (status_rank(r.status), r.check, r.target),
        "rtt": lambda r: (r.rtt_ms is None, -(r.rtt_ms or 0.0), r.check, r.target),
        "loss": lambda r: (r.loss_pct is None, -(r.loss_pct or 0.0), r.check, r.target),
    }
    return sorted(rows, key=keys[by])


def describe_answer(scope: str, missing: Mapping[str, str], truncated: Sequence[str]) -> str:
    """One line on how complete an answer is ("" when complete and mesh-wide)."""
    parts = []
    if scope == "local":
        parts.append("this agent's own results only: its version has no mesh-wide queries")
    if missing:
        parts.append("no answer from " + ", ".join(f"{name} ({why})"
                                                   for name, why in sorted(missing.items())))
    if truncated:
        parts.append("cut short by " + ", ".join(sorted(truncated)))
    return "; ".join(parts)
