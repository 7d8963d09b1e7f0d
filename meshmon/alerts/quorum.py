"""The mesh's verdict on a target: m of its k probers must agree (sans-IO).

Theory of operation
-------------------
Every prober publishes a :class:`Digest` of its own verdicts, signed like its membership
statements and spread by gossip: whether it is impaired, and the series it calls failing (only
those: silence means "fine or no opinion", which keeps a digest small whatever the number of
targets). A newer digest from a prober replaces the older one; a digest that is not refreshed
within ``ttl`` counts for nothing (its prober may be gone).

:func:`decide` takes a series and the probers placement assigns to its target (k of them) and
says DOWN when at least m of those k probers currently call it failing, with m a majority of k
unless the rule's quorum says otherwise. Only probers placement assigns count: a node that merely
claims to watch a target cannot vote on it, and an impaired prober's digest lists nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshmon.alerts.evaluate import SeriesKey

MAX_FAILING = 64
"""Most series one digest lists. A prober with more failing series than this is impaired
anyway (see :mod:`meshmon.alerts.evaluate`); the digest says how many it left out."""


@dataclass(frozen=True)
class Digest:
    """One prober's verdicts at one moment (its own statement, signed by it on the wire)."""

    prober: str
    version: int
    """Increases with every change; newer replaces older."""
    impaired: bool
    failing: tuple[tuple[SeriesKey, float], ...]
    """(series, failing since), at most :data:`MAX_FAILING`."""
    omitted: int = 0
    """Failing series left out to keep the digest small."""

    @classmethod
    def build(cls, prober: str, version: int, impaired: bool,
              failing: Mapping[SeriesKey, float]) -> Digest:  # fmt: skip
        """A digest of ``failing``, the oldest failures first when it must cut."""
        items = sorted(failing.items(), key=lambda kv: (kv[1], kv[0]))
        return cls(prober, version, impaired, tuple(items[:MAX_FAILING]),
                   max(0, len(items) - MAX_FAILING))  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """The mesh's verdict on one series."""

    down: bool
    agreeing: tuple[str, ...]
    """Assigned probers that call it failing."""
    probers: tuple[str, ...]
    """The k probers placement assigns to the target."""
    needed: int
    """m."""
    since: float | None
    """When the m-th agreeing prober's failure began (the incident's start)."""


def majority(k: int) -> int:
    """The default quorum: more than half of k (1 of 1, 2 of 2, 2 of 3, 3 of 4...)."""
    return k // 2 + 1


def needed_votes(k: int, quorum: int | None) -> int:
    """m for k probers: the configured quorum capped at k, else a majority."""
    if k <= 0:
        return 1
    return majority(k) if quorum is None else max(1, min(quorum, k))


class VerdictBoard:
    """The latest digest of every prober, as this node has received them."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._digests: dict[str, tuple[Digest, float]] = {}

    def update(self, digest: Digest, now: float) -> bool:
        """Keep ``digest`` if it is newer than what we hold; True when it changed anything."""
        held = self._digests.get(digest.prober)
        if held is not None and held[0].version >= digest.version:
            if held[0].version == digest.version:
                self._digests[digest.prober] = (held[0], now)  # refreshed
            return False
        self._digests[digest.prober] = (digest, now)
        return True

    def forget(self, prober: str) -> None:
        """Drop a prober that left the mesh."""
        self._digests.pop(prober, None)

    def digest(self, prober: str, now: float) -> Digest | None:
        """A prober's fresh digest, if any."""
        held = self._digests.get(prober)
        if held is None or now - held[1] > self.ttl:
            return None
        return held[0]

    def digests(self, now: float) -> list[Digest]:
        """Every fresh digest."""
        return [d for p in list(self._digests) if (d := self.digest(p, now)) is not None]

    def decide(self, key: SeriesKey, probers: Sequence[str], now: float,
               quorum: int | None = None) -> Decision:  # fmt: skip
        """Whether ``key`` is DOWN by the votes of its assigned ``probers``."""
        votes: list[tuple[float, str]] = []
        for prober in probers:
            d = self.digest(prober, now)
            if d is None or d.impaired:
                continue
            for series, since in d.failing:
                if series == key:
                    votes.append((since, prober))
                    break
        m = needed_votes(len(probers), quorum)
        votes.sort()
        down = len(votes) >= m
        return Decision(down=down, agreeing=tuple(sorted(p for _, p in votes)),
                        probers=tuple(probers), needed=m,
                        since=votes[m - 1][0] if down else None)  # fmt: skip

    def failing_keys(self, now: float) -> set[SeriesKey]:
        """Every series some fresh, unimpaired digest calls failing (the ones worth deciding)."""
        return {series for d in self.digests(now) if not d.impaired for series, _ in d.failing}

    def impaired(self, now: float) -> list[str]:
        """Probers that currently call themselves impaired."""
        return sorted(d.prober for d in self.digests(now) if d.impaired)
