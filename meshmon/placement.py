"""Who probes what: a consistent-hash ring per check over that check's eligible agents.

Theory of operation
-------------------
* Pure and deterministic: input is a membership view (``AgentInfo`` records) and the checks;
  output is the owners of every (check, target). No clock, no I/O, no Python ``hash()`` (it is
  salted per process); points come from ``blake2b`` so every agent computes the same ring.
* Eligible agents of a check: alive agents carrying one of ``agent_tags`` (all alive agents if
  empty). Targets: the static ``targets`` plus every alive agent carrying one of
  ``target_tags`` (mesh probing; the target string is the agent's name, its address resolved
  from the view).
* Each eligible agent owns ``vnodes`` points on the ring. A target hashes (with its check name)
  to a point; its owners are the first k *distinct* eligible agents clockwise, skipping the
  target itself. ``replicas = 0`` means every eligible agent (full mesh within a tag).
* Bounded loads (Mirrokni et al., "Consistent Hashing with Bounded Loads"): with
  ``load_factor`` c set, no agent owns more than ``ceil(c * slots / n)`` targets of a check;
  targets are placed in ring order and a full agent is skipped like the target itself. This
  keeps max/mean load at most c where vnodes alone cannot (with ~30 targets per agent the
  random spread alone gives max/mean ~1.5), at the price of a few extra moves on churn.
* The view order does not matter: agents are sorted by name before anything is hashed.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshmon.config import CheckConfig

DEFAULT_VNODES = 160
"""Points per agent. Measured (benchmarks/placement.py, N=1000, 10k targets, k=3, c=1.25):
64 vnodes moved ~1.27x ideal on join/leave (bounded-load cascades), 160 ~1.13-1.17x, at ~0.6 s
to place all 30k assignments; 256 gave no further gain."""

DEFAULT_LOAD_FACTOR: float | None = 1.25
"""Cap on max/mean owned targets per check (the issue's balance goal); None disables it."""


@dataclass(frozen=True)
class AgentInfo:
    """One member of the view, as placement needs it."""

    name: str
    tags: frozenset[str] = frozenset()
    address: str = ""
    alive: bool = True
    """Members not alive are ignored (suspects count as alive until declared dead)."""


@dataclass(frozen=True)
class Assignment:
    """One (check, target) an agent probes."""

    check: str
    target: str
    """A static endpoint, or an agent name for mesh targets."""
    address: str
    """Where to send probes: the static endpoint itself, or the target agent's address."""
    mesh: bool = False
    """True when the target is an agent of the mesh."""


@dataclass(frozen=True)
class Coverage:
    """How many agents probe a target, against how many should."""

    owners: int
    wanted: int

    @property
    def full(self) -> bool:
        """True when the target has all the owners it should."""
        return self.owners >= self.wanted


def stable_hash(text: str) -> int:
    """A 64-bit hash identical in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """Virtual-node ring over a set of agent names."""

    def __init__(self, names: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        points: list[tuple[int, str]] = []
        for name in sorted(set(names)):
            for i in range(vnodes):
                points.append((stable_hash(f"{name}#{i}"), name))
        points.sort()
        self._keys = [p for p, _ in points]
        self._names = [n for _, n in points]
        self.members = frozenset(n for _, n in points)

    def owners(
        self,
        key: int,
        k: int,
        exclude: str | None = None,
        full: set[str] | None = None,
    ) -> list[str]:
        """First ``k`` distinct names clockwise from ``key``, skipping ``exclude`` and ``full``."""
        out: list[str] = []
        size = len(self._keys)
        if size == 0 or k <= 0:
            return out
        start = bisect.bisect_left(self._keys, key)
        seen: set[str] = set()
        for step in range(size):
            name = self._names[(start + step) % size]
            if name in seen:
                continue
            seen.add(name)
            if name == exclude or (full is not None and name in full):
                continue
            out.append(name)
            if len(out) == k:
                break
        return out


def eligible_agents(check: CheckConfig, view: Sequence[AgentInfo]) -> list[AgentInfo]:
    """Alive agents that run ``check``."""
    want = set(check.agent_tags)
    return [a for a in view if a.alive and (not want or a.tags & want)]


def check_targets(check: CheckConfig, view: Sequence[AgentInfo]) -> list[tuple[str, str, bool]]:
    """(target, address, mesh) for every target of ``check``, static first, in a stable order."""
    out = [(t, t, False) for t in dict.fromkeys(check.targets)]
    tags = set(check.target_tags)
    if tags:
        for a in sorted(view, key=lambda a: a.name):
            if a.alive and a.tags & tags:
                out.append((a.name, a.address, True))
    return out


class Placement:
    """The owners of every (check, target) for one view. Build once per view change."""

    def __init__(
        self,
        view: Sequence[AgentInfo],
        checks: Sequence[CheckConfig],
        vnodes: int = DEFAULT_VNODES,
        load_factor: float | None = DEFAULT_LOAD_FACTOR,
    ) -> None:
        """Compute all owners.

        Args:
            view: the membership view; order is irrelevant, duplicates by name keep the last.
            checks: the checks in force.
            vnodes: ring points per agent.
            load_factor: bounded-load cap c (max/mean owned per check), or None for plain rings.
        """
        by_name = {a.name: a for a in view}
        self.view: Mapping[str, AgentInfo] = by_name
        agents = sorted(by_name.values(), key=lambda a: a.name)
        self.checks = {c.name: c for c in checks}
        self._owners: dict[str, dict[str, tuple[str, ...]]] = {}
        self._wanted: dict[str, dict[str, int]] = {}
        self._targets: dict[str, dict[str, Assignment]] = {}
        self._mine: dict[str, list[Assignment]] = {}
        rings: dict[frozenset[str], Ring] = {}
        for check in checks:
            names = frozenset(a.name for a in eligible_agents(check, agents))
            ring = rings.get(names)
            if ring is None:
                ring = rings[names] = Ring(names, vnodes)
            self._place(check, ring, check_targets(check, agents), load_factor)

    def _place(
        self,
        check: CheckConfig,
        ring: Ring,
        targets: list[tuple[str, str, bool]],
        load_factor: float | None,
    ) -> None:
        owners: dict[str, tuple[str, ...]] = {}
        wanted: dict[str, int] = {}
        infos: dict[str, Assignment] = {}
        n = len(ring.members)
        keyed = []
        for target, address, mesh in targets:
            infos[target] = Assignment(check.name, target, address, mesh)
            avail = n - (1 if target in ring.members else 0)
            wanted[target] = avail if check.replicas == 0 else min(check.replicas, avail)
            keyed.append((stable_hash(f"{check.name}\0{target}"), target))
        keyed.sort()
        total = sum(wanted.values())
        cap = math.inf
        if load_factor is not None and check.replicas != 0 and n:
            # floor keeps max/mean <= c; never below the mean, or targets would go unplaced
            cap = max(math.ceil(total / n), math.floor(load_factor * total / n), 1)
        load: dict[str, int] = {}
        full: set[str] = set()
        for key, target in keyed:
            got = ring.owners(key, wanted[target], exclude=target, full=full)
            if len(got) < wanted[target]:  # every candidate full: cannot happen when c >= 1
                got = ring.owners(key, wanted[target], exclude=target)
            owners[target] = tuple(got)
            for name in got:
                load[name] = load.get(name, 0) + 1
                if load[name] >= cap:
                    full.add(name)
                self._mine.setdefault(name, []).append(infos[target])
        self._owners[check.name] = owners
        self._wanted[check.name] = wanted
        self._targets[check.name] = infos

    def assignments(self, agent: str) -> list[Assignment]:
        """What ``agent`` probes, across all checks."""
        return list(self._mine.get(agent, ()))

    def owners(self, check: str, target: str) -> tuple[str, ...]:
        """Who probes ``target`` for ``check`` (empty if unknown)."""
        return self._owners.get(check, {}).get(target, ())

    def probers_of(self, agent: str) -> dict[str, tuple[str, ...]]:
        """Who probes ``agent`` (as a mesh target), per check."""
        return {c: o[agent] for c, o in self._owners.items() if agent in o}

    def coverage(self, check: str) -> dict[str, Coverage]:
        """Owners count against wanted, for every target of ``check``."""
        owners = self._owners.get(check, {})
        return {t: Coverage(len(o), self._wanted[check][t]) for t, o in owners.items()}

    def targets(self, check: str) -> list[Assignment]:
        """Every target of ``check`` (with its resolved address)."""
        return list(self._targets.get(check, {}).values())

    def load(self) -> dict[str, int]:
        """Number of assignments per agent (agents with none are absent)."""
        return {name: len(a) for name, a in self._mine.items()}

    def pairs(self) -> set[tuple[str, str, str]]:
        """Every (check, target, owner): handy to diff two placements."""
        return {(c, t, n) for c, o in self._owners.items() for t, ns in o.items() for n in ns}


@dataclass(frozen=True)
class ViewStep:
    """One interval of a churn timeline."""

    duration: float
    view: tuple[AgentInfo, ...]
    """What the agents believe (may still list failed, undetected agents)."""
    live: frozenset[str]
    """The agents that really run at this time."""


def coverage_gap(
    checks: Sequence[CheckConfig],
    timeline: Sequence[ViewStep],
    vnodes: int = DEFAULT_VNODES,
    load_factor: float | None = DEFAULT_LOAD_FACTOR,
) -> float:
    """Fraction of target-time during which a target has fewer live owners than it should.

    "Should" is min(k, live eligible agents other than the target); owners come from the view
    the agents believe, so a failed but undetected owner leaves a gap until detection.
    """
    gap = 0.0
    total = 0.0
    for step in timeline:
        place = Placement(step.view, checks, vnodes, load_factor)
        truth = [a for a in step.view if a.name in step.live]
        for check in checks:
            live_eligible = {a.name for a in eligible_agents(check, truth)}
            for target, _, _ in check_targets(check, truth):
                avail = len(live_eligible) - (1 if target in live_eligible else 0)
                want = avail if check.replicas == 0 else min(check.replicas, avail)
                have = sum(1 for o in place.owners(check.name, target) if o in step.live)
                total += step.duration
                if have < want:
                    gap += step.duration
    return gap / total if total else 0.0


def churn_timeline(
    agents: Sequence[AgentInfo],
    failures: Sequence[tuple[float, str]],
    detection_delay: float,
    horizon: float,
) -> list[ViewStep]:
    """A timeline where each ``(time, name)`` fails at ``time`` and leaves the view after delay."""
    events = sorted({0.0, horizon, *(t for t, _ in failures),
                     *(t + detection_delay for t, _ in failures)})
    steps = []
    for start, end in itertools.pairwise(events):
        if end > horizon or end <= start:
            continue
        dead = {n for t, n in failures if t <= start}
        gone = {n for t, n in failures if t + detection_delay <= start}
        view = tuple(a for a in agents if a.name not in gone)
        live = frozenset(a.name for a in agents if a.name not in dead)
        steps.append(ViewStep(end - start, view, live))
    return steps
