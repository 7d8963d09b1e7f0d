"""One prober's own verdicts: its rules evaluated on its own results (sans-IO).

Theory of operation
-------------------
The agent feeds every stored result as an :class:`Observation` (``observe``) and calls
``step(now)`` about once a second. For each rule and each series it selects (check x target)
the evaluator keeps a short window of observations and one state:

=============  ==========================================  =================================
state          leaves when                                 to
=============  ==========================================  =================================
``ok``         the value breaches ``fire``                 ``pending`` (``firing`` if for=0)
``pending``    breached for ``for``  /  no longer breached  ``firing``  /  ``ok``
``firing``     the value clears ``resolve``                ``resolving`` (``ok`` if 0)
``resolving``  cleared for ``resolve_for``  /  not cleared  ``ok``  /  ``firing``
=============  ==========================================  =================================

A value between ``fire`` and ``resolve`` moves nothing (hysteresis). A series with no
observation for ``stale_after`` is forgotten: the prober no longer watches it.

Results taken while the prober was degraded (its event loop starved, see the scheduler) are
not observations at all: they say nothing about the target.

Vantage: when this prober's breaching series (pending or firing) are at least
``impaired_min_targets`` distinct targets and ``impaired_fraction`` of all the targets it has
fresh data for, the problem is more likely this prober than all those targets. It becomes
*impaired*: one event about itself, and its target verdicts are withheld (it abstains) until the
fraction falls below half of ``impaired_fraction``. Because breaching series count as soon as
they are pending, a prober whose link dies is impaired before its first target verdict fires.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from meshmon.alerts.rules import AlertRule

State = Literal["ok", "pending", "firing", "resolving"]
SeriesKey = tuple[str, str, str]
"""(rule, check, target)."""


class Observation(NamedTuple):
    """What a rule needs from one result."""

    ts: float
    check: str
    target: str
    ok: bool
    rtt_ms: float | None = None
    loss_pct: float | None = None
    """Ping: lost echoes %; other kinds leave it None (0 or 100 from ``ok``)."""
    kind: str = ""
    tls_days: float | None = None
    """Days until the presented certificate expires (``tls`` checks)."""
    target_tags: tuple[str, ...] = ()
    """The target agent's certified tags, for rules that select on tags."""


@dataclass(frozen=True)
class EvaluatorConfig:
    """How one prober turns rule states into what it tells the mesh."""

    impaired_fraction: float = 0.5
    """Share of its targets breaching at once that makes a prober call itself impaired."""
    impaired_min_targets: int = 3
    """...and at least this many targets: one of two targets failing is not a vantage problem."""
    stale_after: float = 300.0
    """Forget a series with no observation for this long (seconds)."""


@dataclass
class _Series:
    state: State = "ok"
    since: float = 0.0
    """When the current state began (for ``firing``/``resolving``: when firing began)."""
    phase_since: float = 0.0
    """When ``pending``/``resolving`` began."""
    value: float | None = None
    last_obs: float = 0.0
    window: deque[Observation] = field(default_factory=deque)
    consecutive: int = 0
    """Consecutive failed observations (for ``failures`` and ``http``)."""


class Change(NamedTuple):
    """A series changed state."""

    key: SeriesKey
    old: State
    new: State
    value: float | None
    at: float


class VantageChange(NamedTuple):
    """This prober became impaired (``impaired`` True) or recovered."""

    impaired: bool
    at: float
    breaching: int
    targets: int


class Evaluator:
    """Evaluates one prober's rules on its own observations."""

    def __init__(self, rules: tuple[AlertRule, ...], config: EvaluatorConfig | None = None) -> None:
        self.rules = rules
        self.config = config or EvaluatorConfig()
        self.series: dict[SeriesKey, _Series] = {}
        self.impaired = False
        self.impaired_since = 0.0
        self._targets_seen: dict[str, float] = {}

    # --- input ----------------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        """Take one non-degraded result into account."""
        self._targets_seen[obs.target] = max(obs.ts, self._targets_seen.get(obs.target, 0.0))
        for rule in self.rules:
            if not rule.selects(obs.check, obs.target, obs.target_tags):
                continue
            if rule.condition == "http" and obs.kind != "http":
                continue
            if rule.condition == "tls_expiry" and obs.tls_days is None:
                continue
            key = (rule.name, obs.check, obs.target)
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = _Series(since=obs.ts)
            s.last_obs = max(s.last_obs, obs.ts)
            s.consecutive = 0 if obs.ok else s.consecutive + 1
            s.window.append(obs)
            if rule.condition in ("failures", "http", "tls_expiry"):
                while len(s.window) > 1:
                    s.window.popleft()

    # --- time -----------------------------------------------------------------------------

    def step(self, now: float) -> tuple[list[Change], VantageChange | None]:
        """Advance every series to ``now``; return what changed."""
        changes: list[Change] = []
        rules = {r.name: r for r in self.rules}
        for key in list(self.series):
            s = self.series[key]
            rule = rules.get(key[0])
            if rule is None or now - s.last_obs > self.config.stale_after:
                del self.series[key]
                continue
            old = s.state
            self._advance(rule, s, now)
            if s.state != old:
                changes.append(Change(key, old, s.state, s.value, now))
        for target, seen in list(self._targets_seen.items()):
            if now - seen > self.config.stale_after:
                del self._targets_seen[target]
        return changes, self._vantage(now)

    def _advance(self, rule: AlertRule, s: _Series, now: float) -> None:
        while s.window and s.window[0].ts < now - rule.window and len(s.window) > 1:
            s.window.popleft()
        s.value = measure(rule, s.window, s.consecutive, now)
        if s.value is None:
            return
        breached, cleared = rule.breached(s.value), rule.cleared(s.value)
        for_, resolve_for = rule.for_, rule.resolve_for or 0.0
        if s.state == "ok" and breached:
            s.state, s.phase_since = "pending", now
        elif s.state == "pending" and not breached:
            s.state = "ok"
        elif s.state == "firing" and cleared:
            s.state, s.phase_since = "resolving", now
        elif s.state == "resolving" and not cleared:
            s.state = "firing"
        if s.state == "pending" and now - s.phase_since >= for_:
            s.state, s.since = "firing", s.phase_since
        if s.state == "resolving" and now - s.phase_since >= resolve_for:
            s.state, s.since = "ok", now

    def _vantage(self, now: float) -> VantageChange | None:
        targets = len(self._targets_seen)
        breaching = len({k[2] for k, s in self.series.items() if s.state != "ok"})
        fraction = breaching / targets if targets else 0.0
        cfg = self.config
        if not self.impaired:
            if breaching >= cfg.impaired_min_targets and fraction >= cfg.impaired_fraction:
                self.impaired, self.impaired_since = True, now
                return VantageChange(True, now, breaching, targets)
        elif fraction < cfg.impaired_fraction / 2:
            self.impaired = False
            return VantageChange(False, now, breaching, targets)
        return None

    # --- output ---------------------------------------------------------------------------

    def failing(self) -> dict[SeriesKey, float]:
        """Series this prober calls failing, with when they started; empty while impaired."""
        if self.impaired:
            return {}
        return {k: s.since for k, s in self.series.items() if s.state in ("firing", "resolving")}

    def state_of(self, key: SeriesKey) -> State | None:
        """One series' state (None if not watched)."""
        s = self.series.get(key)
        return None if s is None else s.state


def measure(rule: AlertRule, window: deque[Observation], consecutive: int,
            now: float) -> float | None:  # fmt: skip
    """The rule's value over ``window`` (None when there is nothing to measure)."""
    if not window:
        return None
    cond = rule.condition
    if cond in ("failures", "http"):
        return float(consecutive)
    if cond == "tls_expiry":
        days = window[-1].tls_days
        return None if days is None else days - (now - window[-1].ts) / 86400
    if cond == "loss":
        losses = [o.loss_pct if o.loss_pct is not None else (0.0 if o.ok else 100.0)
                  for o in window]  # fmt: skip
        return sum(losses) / len(losses)
    rtts = sorted(o.rtt_ms for o in window if o.ok and o.rtt_ms is not None)
    if not rtts:
        return None
    return percentile(rtts, rule.percentile)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (as Prometheus summaries and fping do)."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
