"""Pure timing maths of SWIM + Lifeguard, as in memberlist (``util.go``, ``suspicion.go``).

Every function is deterministic and side-effect free so it can be checked against tables.
"""

from __future__ import annotations

import functools
import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """The minimum suspicion timeout: ``mult * max(1, log10(max(1, n))) * probe_interval``.

    Args:
        suspicion_mult: ``MembershipConfig.suspicion_mult``.
        n: members in the view (alive + suspect, including ourselves).
        probe_interval: seconds between probes.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    # memberlist rounds to whole milliseconds to keep timers readable.
    return math.floor(suspicion_mult * node_scale * probe_interval * 1000.0) / 1000.0


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """Independent suspicions Lifeguard waits for before the timeout reaches its minimum.

    ``suspicion_mult - 2``, or 0 when too few other members exist to confirm (memberlist).
    """
    k = suspicion_mult - 2
    return 0 if n - 2 < k else k


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Seconds left before a suspect is declared dead (memberlist's ``remainingSuspicionTime``).

    The timeout starts at ``max_timeout`` and falls logarithmically towards ``min_timeout`` as
    independent confirmations ``n`` arrive: ``max - log(n+1)/log(k+1) * (max - min)``.
    """
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0) if k > 0 else 1.0
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(raw * 1000.0) / 1000.0
    timeout = max(timeout, min_timeout)
    return timeout - elapsed


@functools.lru_cache(maxsize=1024)  # asked for every datagram that carries news
def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each broadcast is sent: ``mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def scale_by_awareness(value: float, score: int) -> float:
    """Lifeguard: stretch a probe interval or timeout by the local health score (0 = healthy)."""
    return value * (score + 1)


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's ``pushPullScale``: past 32 members, stretch by ceil(log2 n - log2 32) + 1."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1.0
    return interval * multiplier


def expected_detection_time(probe_interval: float, probe_timeout: float, n: int) -> float:
    """The memberlist expectation used by the gossip benchmark (seconds until all know a failure).

    ``1.58 * probe_interval + probe_timeout + 4 * log10(N) * probe_interval``: the mean time for
    the dead node to be probed (1 / (1 - 1/e) ≈ 1.58 rounds), the probe timeout, then the minimum
    suspicion timeout with ``suspicion_mult = 4``.
    """
    return 1.58 * probe_interval + probe_timeout + 4 * math.log10(max(n, 1)) * probe_interval
