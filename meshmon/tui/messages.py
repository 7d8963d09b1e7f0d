"""The TUI's messages, as dataclasses.

A screen's poll produces one ``...Fetched`` message for it; a newer one replaces an older one
still in the queue (``can_replace``), so a slow screen never works through a backlog of stale
data. :class:`ConnectionChanged` tells the app the source stopped or started answering.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from meshmon.tui.model import (
    Alerts,
    Answer,
    Assignments,
    Matrix,
    Member,
    Sample,
    Status,
    Trace,
)


class Fetched(Message):
    """Fresh data for a screen: replaces an older message of the same type still queued."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


@dataclass
class ConnectionChanged(Message):
    """The source stopped answering (``ok`` False, with the reason) or answers again."""

    ok: bool
    reason: str = ""
    retry_in: float = 0.0


@dataclass
class StatusFetched(Fetched):
    """The attached agent's identity, for the title bar."""

    status: Status


@dataclass
class MembersFetched(Fetched):
    """For the Mesh screen."""

    members: list[Member]


@dataclass
class CoverageFetched(Fetched):
    """For the Coverage screen."""

    assignments: Assignments
    members: list[Member]


@dataclass
class ResultsFetched(Fetched):
    """For the Results screen: every prober's latest, and any history loaded this round."""

    latest: Answer[list[Sample]]
    backfill: list[Sample]


@dataclass
class TargetFetched(Fetched):
    """For a target's drill-down: each prober's series and latest result."""

    history: Answer[list[Sample]]
    latest: list[Sample]


@dataclass
class MatrixFetched(Fetched):
    """For the Matrix screen: the tag groups and the chosen group's matrix (None: no mesh
    queries in this agent)."""

    tags: list[str]
    matrix: Answer[Matrix] | None
    note: str = ""


@dataclass
class PathFetched(Fetched):
    """For the Path screen: the traced targets and the chosen one's traces."""

    targets: list[tuple[str, str]]
    traces: Answer[list[Trace]] | None
    note: str = ""


@dataclass
class AlertsFetched(Fetched):
    """For the Alerts screen."""

    alerts: Alerts
