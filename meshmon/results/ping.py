"""The ``ping`` payload: an ICMP echo burst and its statistics."""

from __future__ import annotations

from dataclasses import dataclass

from meshmon.results import stats


@dataclass(frozen=True)
class PingResult:
    """A burst of ICMP echo requests to one address.

    The statistics fields (``min_ms`` ... ``jitter_ms``) are stored in the record so JSON and
    the database carry them; left ``None`` at construction (or missing from a record stored by
    an older version) they are computed from ``success_latencies`` and the counts, so every
    decoded record has them. Definitions: :mod:`meshmon.results.stats`.
    """

    successes: int
    """Echo replies received in time."""
    failures: int
    """Echo requests without a reply in time (lost or answered by an error)."""
    success_latencies: tuple[float, ...]
    """Round-trip times of the replies, in ms, in the order the requests were sent."""
    errors: tuple[str, ...]
    """What went wrong (resolution, ICMP errors such as "host unreachable"), deduplicated."""
    avg_response_time_ms: float | None
    """Mean of ``success_latencies``; ``None`` when nothing answered."""
    resolved_ip: str | None
    """The address probed (``None`` when the name did not resolve)."""
    samples: tuple[float | None, ...] = ()
    """Per packet, in send order: RTT in ms, or ``None`` when that packet was lost."""
    min_ms: float | None = None
    """Fastest reply."""
    median_ms: float | None = None
    """Median RTT."""
    max_ms: float | None = None
    """Slowest reply."""
    stddev_ms: float | None = None
    """Population standard deviation of the RTTs (0.0 for one reply)."""
    jitter_ms: float | None = None
    """Mean absolute difference of consecutive RTTs (``None`` below two replies)."""
    loss_pct: float | None = None
    """Percent of requests without a reply; ``None`` when nothing was sent."""

    def __post_init__(self) -> None:
        rtts = self.success_latencies
        derived = {
            "min_ms": min(rtts) if rtts else None,
            "median_ms": stats.median_ms(rtts),
            "max_ms": max(rtts) if rtts else None,
            "stddev_ms": stats.stddev_ms(rtts),
            "jitter_ms": stats.jitter_ms(rtts),
            "loss_pct": stats.loss_pct(self.successes + self.failures, self.successes),
        }
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def is_successful(self) -> bool:
        """At least one reply came back."""
        return self.successes > 0

    def response_time_ms(self) -> float | None:
        """The mean RTT."""
        return self.avg_response_time_ms

    def error_message(self) -> str | None:
        """Errors joined; a burst without any reply always starts with the loss count."""
        lost = f"no reply to {self.failures} echo request{'s' if self.failures != 1 else ''}"
        if self.failures and not self.successes:
            return "; ".join((lost, *self.errors))
        if self.errors:
            return "; ".join(self.errors)
        return None

    @property
    def sent(self) -> int:
        """Echo requests sent."""
        return self.successes + self.failures

    @property
    def loss(self) -> float:
        """Fraction of requests without a reply (0.0-1.0; 1.0 when nothing was sent)."""
        return self.failures / self.sent if self.sent else 1.0
