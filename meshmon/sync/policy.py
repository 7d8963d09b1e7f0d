"""The uploader's decisions as pure functions: when a batch is due, how long to back off,
where to resume after the aggregator corrects us, which URL to use next.

No I/O, no clock reads: every function takes the times it needs, so each rule can be tested
with a table (``tests/test_sync_policy.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def backoff_delay(failures: int, low: float, high: float, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failed rounds: "full jitter" (a uniform
    draw below ``low * 2**(failures-1)``, capped at ``high``), so agents that lost the same
    aggregator at the same moment do not come back in step. 0 for no failure."""
    if failures <= 0:
        return 0.0
    ceiling = min(high, low * 2.0 ** min(failures - 1, 64))
    return rng.uniform(0.0, ceiling)


def due_at(
    pending: int, batch_size: int, max_delay: float, now: float, first_seen: float,
    oldest_age: float,
) -> float | None:  # fmt: skip
    """When (on the caller's monotonic clock) the waiting records should leave.

    Args:
        pending: records waiting (durable, not yet acknowledged).
        batch_size: a batch leaves as soon as this many wait.
        max_delay: ...or once the oldest has waited this long.
        now: the monotonic time now.
        first_seen: when the uploader first saw the oldest waiting record (monotonic).
        oldest_age: that record's age by its own wall-clock timestamp (a record appended
            before a restart is already old: it need not wait another ``max_delay``).

    Returns:
        ``now`` or earlier if due, a later time if not yet, ``None`` if nothing waits.
    """
    if pending <= 0:
        return None
    if pending >= batch_size:
        return now
    by_age = now + max(0.0, max_delay - max(0.0, oldest_age))
    return min(first_seen + max_delay, by_age)


@dataclass(frozen=True)
class Resync:
    """Where to resume after the aggregator said what it holds."""

    acked: int
    """The seq the aggregator holds everything up to (the next batch's ``after``)."""
    position: int
    """The next seq to send (the cursor's new position)."""
    beyond: bool
    """The aggregator claims records this store never made durable (a copied or restored
    data dir): they will not be stored again."""


def resync(expected: int, durable: int, oldest: int | None) -> Resync:
    """The aggregator holds every seq below ``expected`` of this store: resume right there,
    forward or back. Records it lacks that the ring no longer holds are skipped (the next batch
    declares them); a claim beyond what this store holds is capped at its newest durable seq.

    Args:
        expected: the aggregator's high-water mark + 1.
        durable: the store's newest durable seq.
        oldest: the store's oldest seq (``None`` when empty).
    """
    acked = max(0, expected - 1)
    beyond = acked > durable
    acked = min(acked, durable)
    position = max(acked + 1, oldest if oldest is not None else durable + 1)
    return Resync(acked, position, beyond)


def contiguous(seqs: Sequence[int]) -> int:
    """How many of ``seqs`` (ascending) follow the first without a gap."""
    n = 1
    first = seqs[0] if seqs else 0
    while n < len(seqs) and seqs[n] == first + n:
        n += 1
    return min(n, len(seqs))


@dataclass
class UrlChooser:
    """Which aggregator URL to try: the first that answers, sticky while it works.

    After a failure the next URL not yet tried in this round is tried at once; when every URL
    failed, the round ends (the caller backs off) and the next round starts from the first.
    """

    url: str | None = None
    tried: set[str] = field(default_factory=set)

    def pick(self, urls: Sequence[str]) -> str | None:
        """The URL to use now (``None`` if there is none)."""
        if not urls:
            self.url = None
            return None
        if self.url not in urls:
            self.url = next((u for u in urls if u not in self.tried), urls[0])
        return self.url

    def failed(self, urls: Sequence[str]) -> bool:
        """The current URL failed; ``True`` if the round is over (back off before the next)."""
        if self.url is not None:
            self.tried.add(self.url)
        remaining = [u for u in urls if u not in self.tried]
        if remaining:
            self.url = remaining[0]
            return False
        self.tried.clear()
        self.url = urls[0] if urls else None
        return True

    def worked(self) -> None:
        """The current URL answered: keep it."""
        self.tried.clear()


@dataclass
class AggregatorUrls:
    """The URLs to upload to: the configured ones, then those learnt from members' metadata.

    Learnt URLs are hints (the server must still prove it is an aggregator). When no member
    advertises any for a while (the advertisers restarting), the last ones learnt are kept.
    """

    configured: tuple[str, ...] = ()
    learn: bool = True
    learnt: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Learnt URL → the members advertising it."""

    def update(self, advertised: Iterable[tuple[str, Sequence[str]]]) -> bool:
        """Take the ``(member, urls)`` of the live members; ``True`` if the list changed."""
        if not self.learn:
            return False
        found: dict[str, list[str]] = {}
        for member, urls in sorted(advertised):
            for url in urls:
                if url not in self.configured:
                    found.setdefault(url, []).append(member)
        if not found:
            return False
        learnt = {url: tuple(names) for url, names in found.items()}
        changed = list(learnt) != list(self.learnt)
        self.learnt = learnt
        return changed

    def all(self) -> tuple[str, ...]:
        """Configured first, in their order, then learnt ones."""
        return self.configured + tuple(self.learnt)
