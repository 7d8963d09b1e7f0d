"""Turn a stored result into what alert rules look at (an :class:`Observation`)."""

from __future__ import annotations

from meshmon.alerts.evaluate import Observation
from meshmon.results.model import MonitoringResult, Ping, TlsCertificate


def observation(result: MonitoringResult, target: str,
                target_tags: tuple[str, ...] = ()) -> Observation:  # fmt: skip
    """One result as alert rules see it (``target``: the name placement knows it by)."""
    loss = tls_days = None
    if isinstance(result, Ping):
        loss = result.result.loss_pct
    elif isinstance(result, TlsCertificate):
        tls_days = result.result.days_to_expiry
    return Observation(result.started_at, result.check, target, result.is_successful(),
                       result.response_time_ms(), loss, result.kind, tls_days,
                       target_tags)  # fmt: skip
