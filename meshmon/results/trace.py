"""The ``trace`` payload: an mtr-style traceroute, per hop."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class TracerouteHop:
    """One TTL of an mtr-style trace, over all rounds."""

    ttl: int
    addresses: tuple[str, ...]
    """Every address that answered at this TTL (more than one under ECMP load balancing)."""
    sent: int
    received: int
    latencies_ms: tuple[float, ...]
    """RTT of each answer."""

    @property
    def loss(self) -> float:
        """Fraction of probes at this TTL without an answer."""
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def avg_ms(self) -> float | None:
        """Mean RTT at this hop."""
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else None


@dataclass(frozen=True)
class TracerouteResult:
    """An mtr-style trace: several rounds of TTL-limited probes."""

    hops: tuple[TracerouteHop, ...]
    target_reached: bool
    total_time_ms: float
    """Mean RTT to the target when reached, else the time the trace took."""
    errors: tuple[str, ...]
    protocol: str = "icmp"
    """``icmp``, ``udp`` or ``tcp``."""
    resolved_ip: str | None = None

    def is_successful(self) -> bool:
        """The target answered."""
        return self.target_reached

    def response_time_ms(self) -> float | None:
        """RTT to the target, when reached."""
        return self.total_time_ms if self.target_reached else None

    def error_message(self) -> str | None:
        """Errors joined, or why the target was not reached."""
        if self.errors:
            return "; ".join(self.errors)
        if not self.target_reached:
            return "target not reached"
        return None
