"""Alert rules as the operator writes them in ``[[alerts.rules]]``, validated at load.

A rule selects series (check, targets, the target agents' certified tags), measures one
condition over its own prober's recent results, and says when that is bad (``fire``) and when it
is good again (``resolve``): the gap between the two is the hysteresis that keeps a value hovering
at one threshold from flapping. ``for`` is how long the condition must hold before this prober
calls the target failing, ``resolve_for`` how long the resolving condition must hold before it
calls it good again.

Conditions, and what ``fire`` / ``resolve`` compare against (``window`` applies to the first two):

========================  =============================================  =====================
condition                 value                                          defaults fire/resolve
========================  =============================================  =====================
``loss``                  mean loss % of results in the window            50 / 10
``rtt``                   the ``percentile`` RTT (ms) of the window       required / 0.8 x fire
``failures``              consecutive failed results                      3 / 0
``http``                  consecutive failed HTTP checks (status, body)   1 / 0
``tls_expiry``            days until the certificate expires              14 / 21 (lower is bad)
========================  =============================================  =====================
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from meshmon.configload import FieldError, FieldErrors, Seconds

Condition = Literal["loss", "rtt", "failures", "http", "tls_expiry"]
Severity = Literal["critical", "warning", "info"]

_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "loss": (50.0, 10.0),
    "rtt": (None, None),
    "failures": (3.0, 0.0),
    "http": (1.0, 0.0),
    "tls_expiry": (14.0, 21.0),
}


@dataclass(frozen=True)
class AlertRule:
    """One alert rule: a selector, a condition with hysteresis, and how to label incidents."""

    name: str
    condition: Condition
    check: str = "*"
    """The check name, or a shell-style pattern (``ping-*``)."""
    targets: tuple[str, ...] = ()
    """Target patterns (``10.0.0.*``); empty selects every target of the check."""
    tags: tuple[str, ...] = ()
    """Only targets that are agents holding one of these certified tags (mesh probing)."""
    window: Seconds = Seconds(60.0)
    """Results considered by ``loss`` and ``rtt``: a minute smooths single lost packets."""
    percentile: float = 95.0
    """For ``rtt``: which percentile of the window's RTTs."""
    fire: float | None = None
    """The firing threshold; default per condition (module docstring)."""
    resolve: float | None = None
    """The resolving threshold; default per condition. Must leave a gap from ``fire``."""
    for_: Seconds = Seconds(30.0)
    """How long the condition must hold before this prober calls the target failing (TOML key
    ``for``); 30s rides out a single blip at the usual 10s probe interval."""
    resolve_for: Seconds | None = None
    """How long the resolving condition must hold; default the same as ``for``, so a flapping
    target stays firing instead of storming."""
    severity: Severity = "critical"
    labels: dict[str, str] = field(default_factory=dict)
    """Extra labels on every notification (team, runbook...)."""

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if not self.name or any(c.isspace() for c in self.name):
            errors.append(FieldError("name", "must be a non-empty name without spaces"))
        fire, resolve = _DEFAULTS[self.condition]
        if self.fire is None:
            if fire is None:
                errors.append(FieldError("fire", f"a {self.condition} rule needs a firing "
                                         "threshold, e.g. fire = 100 (ms)"))  # fmt: skip
            object.__setattr__(self, "fire", fire)
        if self.resolve is None:
            if self.condition == "rtt" and self.fire is not None:
                resolve = 0.8 * self.fire
            object.__setattr__(self, "resolve", resolve)
        if self.resolve_for is None:
            object.__setattr__(self, "resolve_for", self.for_)
        if self.fire is not None and self.resolve is not None:
            lower_is_bad = self.condition == "tls_expiry"
            if (self.resolve <= self.fire) if lower_is_bad else (self.resolve >= self.fire):
                word = "above" if lower_is_bad else "below"
                errors.append(FieldError("resolve", f"must be {word} fire ({self.fire:g}) so the "
                                         "rule cannot flap at one threshold"))  # fmt: skip
        if self.condition == "loss" and self.fire is not None and not 0 < self.fire <= 100:
            errors.append(FieldError("fire", "a loss threshold is a percentage in (0, 100]"))
        if not 0 < self.percentile <= 100:
            errors.append(FieldError("percentile", "must be in (0, 100]"))
        if self.window <= 0:
            errors.append(FieldError("window", "must be greater than zero"))
        if self.for_ < 0 or (self.resolve_for is not None and self.resolve_for < 0):
            errors.append(FieldError("for", "must be zero or more"))
        if errors:
            raise FieldErrors(errors) if len(errors) > 1 else errors[0]

    @property
    def lower_is_bad(self) -> bool:
        """True when small values are the bad ones (days to certificate expiry)."""
        return self.condition == "tls_expiry"

    def selects(self, check: str, target: str, target_tags: tuple[str, ...] = ()) -> bool:
        """Whether this rule watches ``target`` of ``check`` (tags: the target agent's)."""
        if not fnmatch.fnmatchcase(check, self.check):
            return False
        if self.targets and not any(fnmatch.fnmatchcase(target, p) for p in self.targets):
            return False
        return not self.tags or any(t in target_tags for t in self.tags)

    def breached(self, value: float) -> bool:
        """The firing side of the hysteresis."""
        assert self.fire is not None
        return value <= self.fire if self.lower_is_bad else value >= self.fire

    def cleared(self, value: float) -> bool:
        """The resolving side of the hysteresis."""
        assert self.resolve is not None
        return value >= self.resolve if self.lower_is_bad else value <= self.resolve


@dataclass(frozen=True)
class Silence:
    """Mute notifications of matching incidents until a time (they are still tracked)."""

    rule: str = "*"
    target: str = "*"
    until: str = ""
    """ISO 8601 time; empty means until the silence is removed from the config."""
    comment: str = ""

    def matches(self, rule: str, target: str) -> bool:
        """Whether an incident of ``rule`` on ``target`` is silenced (ignoring ``until``)."""
        return fnmatch.fnmatchcase(rule, self.rule) and fnmatch.fnmatchcase(target, self.target)
