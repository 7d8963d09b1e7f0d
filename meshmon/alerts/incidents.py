"""Incidents and who notifies them: one notification per incident, mesh-wide (sans-IO).

Theory of operation
-------------------
An incident is one stretch of a series being DOWN by quorum (:mod:`meshmon.alerts.quorum`), or
one stretch of a prober being impaired. Exactly one node notifies each: for a target incident
the target's first owner on the placement ring (every node computes the same owner from the
same view), for a vantage incident the impaired prober itself (it is the one that knows, and it
retries until its link is back).

Every node keeps an :class:`IncidentBook`. The notifier opens the incident, queues a ``firing``
notification, and when the incident ends a ``resolved`` one; when a receiver confirms delivery
the incident records it, and the record travels in the notifier's signed gossip so that every
node knows which incidents are open and what has been said about them. Hand-over on churn:

* the new owner finds the open incident in its book (learnt from the old owner's gossip),
  takes it over (``notifier`` becomes itself) and says nothing new if ``firing`` was already
  delivered; it delivers ``firing`` only if the old owner never did, and ``resolved`` when the
  series recovers;
* an incident's id is derived from its series and the moment quorum was reached, which every
  node computes alike from the same digests, so two nodes that both believed they owned the
  target during churn announce the *same* incident: receivers (Alertmanager by its labels, a
  webhook by ``incident_id``) see one incident.

What remains is at-least-once in one window: a notifier that dies after a receiver accepted a
notification and before its gossip carried the fact. The new owner repeats it with the same
id, which receivers treat as the same incident.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from meshmon.alerts.evaluate import SeriesKey
from meshmon.alerts.quorum import Decision

Kind = Literal["target", "vantage"]
Event = Literal["firing", "resolved"]

MAX_SHARED = 128
"""Most incidents one node's gossip carries (open ones first, then the latest resolved)."""


def incident_id(kind: Kind, key: SeriesKey, since: float) -> str:
    """The id every node derives for the same incident."""
    text = f"{kind}\0{key[0]}\0{key[1]}\0{key[2]}\0{round(since, 3)}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Incident:
    """One incident as nodes know and gossip it."""

    id: str
    kind: Kind
    key: SeriesKey
    """(rule, check, target); for a vantage incident ("vantage", "", prober)."""
    opened_at: float
    notifier: str
    version: int = 1
    resolved_at: float | None = None
    firing_sent: bool = False
    resolved_sent: bool = False
    probers: tuple[str, ...] = ()
    """For a target incident: the probers that agreed when it opened."""

    @property
    def open(self) -> bool:
        """Not resolved yet."""
        return self.resolved_at is None


@dataclass(frozen=True)
class Notification:
    """Something to tell the receivers."""

    event: Event
    incident: Incident


@dataclass
class IncidentBook:
    """What this node knows of incidents, and what it must notify."""

    me: str
    incidents: dict[str, Incident] = field(default_factory=dict)
    keep_resolved: int = 256
    """Resolved incidents kept for ``meshmon alerts`` (the store keeps the full history)."""

    def open_for(self, kind: Kind, key: SeriesKey) -> Incident | None:
        """The open incident of a series, whoever notifies it."""
        found = [i for i in self.incidents.values() if i.open and i.kind == kind and i.key == key]
        return min(found, key=lambda i: (i.opened_at, i.id)) if found else None

    def merge(self, incoming: Iterable[Incident]) -> None:
        """Learn incidents from another node's gossip (a higher version wins; flags only grow)."""
        for inc in incoming:
            held = self.incidents.get(inc.id)
            if held is None:
                self.incidents[inc.id] = inc
                continue
            newer = inc if inc.version > held.version else held
            self.incidents[inc.id] = replace(
                newer,
                firing_sent=held.firing_sent or inc.firing_sent,
                resolved_sent=held.resolved_sent or inc.resolved_sent,
                resolved_at=newer.resolved_at if newer.resolved_at is not None
                else held.resolved_at if held.resolved_at is not None else inc.resolved_at,
            )  # fmt: skip
        self._trim()

    def step_targets(self, now: float, decisions: Mapping[SeriesKey, Decision],
                     owns: Callable[[SeriesKey], bool]) -> list[Notification]:  # fmt: skip
        """Open, take over and resolve target incidents this node owns.

        ``decisions`` covers every series worth deciding (any with a failing vote, and those
        with an open incident); a series missing from it counts as not down.
        """
        out: list[Notification] = []
        open_keys = {i.key for i in self.incidents.values() if i.open and i.kind == "target"}
        for key in sorted(set(decisions) | open_keys):
            if not owns(key):
                continue
            decision = decisions.get(key)
            down = decision is not None and decision.down
            current = self.open_for("target", key)
            if down and current is None:
                assert decision is not None and decision.since is not None
                inc = Incident(incident_id("target", key, decision.since), "target", key,
                               decision.since, self.me, probers=decision.agreeing)  # fmt: skip
                self.incidents[inc.id] = inc
                out.append(Notification("firing", inc))
            elif down and current is not None and current.notifier != self.me:
                out.extend(self._take_over(current))
            elif not down and current is not None:
                out.extend(self._resolve(current, now))
        self._trim()
        return out

    def step_vantage(self, now: float, impaired: bool, since: float) -> list[Notification]:
        """Open or resolve this node's own vantage incident."""
        key: SeriesKey = ("vantage", "", self.me)
        current = self.open_for("vantage", key)
        if impaired and current is None:
            inc = Incident(incident_id("vantage", key, since), "vantage", key, since, self.me)
            self.incidents[inc.id] = inc
            return [Notification("firing", inc)]
        if not impaired and current is not None:
            return self._resolve(current, now)
        return []

    def _take_over(self, inc: Incident) -> list[Notification]:
        taken = replace(inc, notifier=self.me, version=inc.version + 1)
        self.incidents[inc.id] = taken
        return [] if taken.firing_sent else [Notification("firing", taken)]

    def _resolve(self, inc: Incident, now: float) -> list[Notification]:
        done = replace(inc, notifier=self.me, resolved_at=now, version=inc.version + 1)
        self.incidents[inc.id] = done
        return [Notification("resolved", done)]

    def delivered(self, incident: str, event: Event) -> Incident | None:
        """A receiver accepted ``event``; the record (to gossip) or None if unknown."""
        inc = self.incidents.get(incident)
        if inc is None:
            return None
        flag = {"firing_sent": True} if event == "firing" else {"resolved_sent": True}
        inc = replace(inc, version=inc.version + 1, **flag)  # type: ignore[arg-type]
        self.incidents[inc.id] = inc
        return inc

    def shared(self) -> list[Incident]:
        """What this node's gossip carries: the incidents it notifies, open ones first."""
        mine = [i for i in self.incidents.values() if i.notifier == self.me]
        mine.sort(key=lambda i: (not i.open, -(i.resolved_at or i.opened_at)))
        return mine[:MAX_SHARED]

    def firing(self) -> list[Incident]:
        """Open incidents, oldest first."""
        return sorted((i for i in self.incidents.values() if i.open), key=lambda i: i.opened_at)

    def recent(self, limit: int = 50) -> list[Incident]:
        """Resolved incidents, newest first."""
        done = [i for i in self.incidents.values() if not i.open]
        done.sort(key=lambda i: -(i.resolved_at or 0.0))
        return done[:limit]

    def _trim(self) -> None:
        done = [i for i in self.incidents.values() if not i.open]
        if len(done) > self.keep_resolved:
            done.sort(key=lambda i: i.resolved_at or 0.0)
            for inc in done[: len(done) - self.keep_resolved]:
                del self.incidents[inc.id]
