"""The ``[metrics]`` table: where Prometheus metrics and the health endpoints are served.

The agent reads it as ``[metrics]``, the aggregator as ``[aggregator.metrics]``. The listener is
opt-in: without ``listen`` nothing is opened. This module imports nothing heavy, so loading a
config does not load ``prometheus_client``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshmon.configload import FieldError, FieldErrors
from meshmon.probes.params import port_problem, split_target

DEFAULT_MAX_SERIES = 1000
"""Check x target pairs with their own probe series. Each pair costs ~20 lines of exposition
(a 14-bucket histogram, success, counters), so 1000 pairs are ~2 MB per scrape; more pairs than
this are counted in ``meshmon_probe_series_dropped_results_total`` and still in the per-check
totals, never silently."""


def parse_listen(text: str) -> tuple[str, int]:
    """``"0.0.0.0:9108"`` or ``"[::]:9108"`` → (address, port); never resolves a name.

    Port 0 picks a free port (tests; the bound port is logged).

    Raises:
        ValueError: not an IP address with a port.
    """
    example = 'write address:port, e.g. "0.0.0.0:9108", "127.0.0.1:9108" or "[::]:9108"'
    try:
        host, port = split_target(text.strip())
    except ValueError as exc:
        raise ValueError(f"{exc}; {example}") from None
    if port is None:
        raise ValueError(f"{text!r} has no port; {example}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (the listener binds an address, it "
                         f"resolves no name); {example}") from None  # fmt: skip
    if port != "0" and port_problem(port):
        raise ValueError(f"{port_problem(port)}; {example}")
    return host, int(port)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` on one TCP listener."""

    listen: str = ""
    """``address:port`` to serve on, e.g. ``"0.0.0.0:9108"`` (the port the Dockerfile's
    HEALTHCHECK and the Kubernetes probes ask); empty: no listener at all."""
    max_series: int = DEFAULT_MAX_SERIES
    """Most check x target pairs given their own probe series (bounded label sets)."""

    def __post_init__(self) -> None:
        errors = []
        if self.listen:
            try:
                parse_listen(self.listen)
            except ValueError as exc:
                errors.append(FieldError("listen", str(exc)))
        if self.max_series < 0:
            errors.append(FieldError("max_series", "must be 0 (no per-target series) or more"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise FieldErrors(errors)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where to listen, or ``None`` when the listener is off."""
        return parse_listen(self.listen) if self.listen else None
