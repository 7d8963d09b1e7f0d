"""Latency statistics shared by the result payloads (ping, UDP echo). Pure functions.

Definitions (the same ones the README gives operators):

* ``min``/``max``: the fastest and slowest reply.
* ``median``: the middle RTT (the mean of the two middle ones for an even count).
* ``stddev``: population standard deviation, as ping's ``mdev``: ``sqrt(mean((x - mean)²))``.
* ``jitter``: RFC 3550-style interarrival jitter without the 1/16 smoothing: the mean absolute
  difference between consecutive RTTs, ``mean(|rtt[i] - rtt[i-1]|)``, over the replies in send
  order (a lost packet is skipped, so its neighbours count as consecutive). ``None`` below two
  replies.
* ``loss``: ``100 * (sent - received) / sent`` in percent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def jitter_ms(rtts: Sequence[float]) -> float | None:
    """Mean absolute difference of consecutive RTTs; ``None`` for fewer than two."""
    if len(rtts) < 2:
        return None
    return sum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (len(rtts) - 1)


def median_ms(rtts: Sequence[float]) -> float | None:
    """Median RTT; ``None`` when empty."""
    n = len(rtts)
    if n == 0:
        return None
    ordered = sorted(rtts)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def stddev_ms(rtts: Sequence[float]) -> float | None:
    """Population standard deviation (0.0 for one value); ``None`` when empty.

    Plain float arithmetic (two passes): ``statistics.pstdev`` computes exactly with
    ``Fraction`` and cost ~100 us per result, more than the probe itself; RTTs in ms carry far
    fewer significant digits than a double's rounding error could disturb.
    """
    n = len(rtts)
    if n == 0:
        return None
    mean = math.fsum(rtts) / n
    return math.sqrt(math.fsum((x - mean) ** 2 for x in rtts) / n)


def loss_pct(sent: int, received: int) -> float | None:
    """Percentage of ``sent`` without a reply; ``None`` when nothing was sent."""
    return 100.0 * (sent - received) / sent if sent > 0 else None
