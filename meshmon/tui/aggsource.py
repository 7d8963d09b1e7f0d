"""The aggregator as a :class:`~meshmon.tui.source.DataSource`: the mesh from central history.

Theory of operation
-------------------
``meshmon tui --aggregator URL`` reads the aggregator's query API over HTTPS instead of an
agent's control socket. :class:`AggregatorJson` turns the screens' questions into requests and
their answers into model values (:mod:`meshmon.tui.aggmodel`); :class:`AggregatorSource` makes
the requests with :class:`meshmon.sync.reader.AggregatorReader` (httpx on the TUI's asyncio
loop, answers decoded in a worker thread), which trusts only the mesh CA and refuses, before
sending anything, a server whose certificate lacks the ``aggregator`` tag; a recording replays
them (:mod:`meshmon.tui.recorded`).

What each screen gets:

* Mesh: the membership view of the agent that synced last (``/v1/members?reporter=``), with
  the tags of each member's certificate; no RTT (a gossip measurement of the reporter's own).
* Coverage: nothing. Who probes what is computed by every agent from its view and never sent
  to the aggregator; the screen says so and how to see it (attach to an agent).
* Results, Path: each agent's newest raw result per (check, target) of the last
  :data:`LATEST_WINDOW` (``/v1/results?latest=true``, with ``detail=true`` for the hops).
* Target drill-down: ``/v1/results`` of the series at the resolution the window needs (raw
  results, or 1-minute or 1-hour rollups for long windows), downsampled per prober.
* Matrix: ``/v1/matrix`` of the tag group over five minutes (mean RTT per cell).
* Alerts: ``/v1/incidents`` (firing, and resolved in the last day).

Results reach the aggregator in batches (an agent's ``[sync] max_delay``, 10 s by default), so
its newest result of a series is older than an agent's would be; the source's ``delay`` tells
the screens how much later a result may arrive before it counts as stale.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import time
from typing import Any

from meshmon.query.archive import resolution_for
from meshmon.sync.reader import AggregatorReader, ReadError
from meshmon.tui import aggmodel
from meshmon.tui.model import (
    Alerts,
    Answer,
    Assignments,
    FormatError,
    Matrix,
    Member,
    Sample,
    Status,
    Trace,
)
from meshmon.tui.source import SourceError, Unsupported

LATEST_WINDOW = "15m"
"""How far back the newest result of a series is looked for: a series silent longer than this
is gone from the Results screen (the aggregator scans this much of raw results per refresh)."""
SYNC_DELAY = 15.0
"""Seconds a result may take to reach the aggregator: the agents' default ``[sync] max_delay``
(10 s) and an upload."""
MATRIX_WINDOW = 300.0
"""Seconds of results behind the Matrix screen (as the agents' mesh matrix)."""
INCIDENTS_SINCE = "24h"
"""Resolved incidents shown on the Alerts screen: those of the last day."""
HISTORY_ROWS = 20_000
"""Most rows asked for one drill-down (the aggregator may cap them lower)."""
COVERAGE_NOTE = (
    "Coverage is not available from the aggregator: every agent computes who probes what from "
    "its own view of the mesh, and that is never sent to the aggregator. Attach the TUI to any "
    "agent of the mesh to see it: meshmon tui -c AGENT.toml (or --socket PATH)."
)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


class AggregatorJson(abc.ABC):
    """A :class:`~meshmon.tui.source.DataSource` over the aggregator's JSON; subclasses
    provide :meth:`get`."""

    label = "aggregator"
    delay = SYNC_DELAY
    url = ""

    @abc.abstractmethod
    async def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (``/healthz``, ``/v1/...``) with ``params``; the parsed JSON body.

        Raises:
            SourceError: no answer.
            Unsupported: the route does not exist there (404).
        """

    def aggregator_name(self) -> str:
        """The node name in the aggregator's certificate ("" until known)."""
        return ""

    def now(self) -> float:
        return time.time()

    async def aclose(self) -> None:
        return None

    async def _parse(self, path: str, parse: Any, **params: Any) -> Any:
        data = await self.get(path, **params)
        try:  # a drill-down can be tens of thousands of rows: off the UI's event loop
            return await asyncio.to_thread(parse, data)
        except (FormatError, TypeError, ValueError, KeyError) as exc:
            raise SourceError(f"{path}: an answer this TUI cannot read ({exc}); is the "
                              "aggregator a much newer or older meshmon?") from None  # fmt: skip

    async def status(self) -> Status:
        data = await self.get("/healthz")
        return aggmodel.parse_health(data, self.url, self.aggregator_name())

    async def members(self) -> list[Member]:
        reporter = aggmodel.freshest_reporter(await self.get("/v1/agents"))
        if reporter is not None:
            members: list[Member] = await self._parse("/v1/members", aggmodel.parse_members,
                                                      reporter=reporter)  # fmt: skip
            if members:
                return members
        members = await self._parse("/v1/members", aggmodel.parse_members)
        return members

    async def assignments(self) -> Assignments:
        raise Unsupported(COVERAGE_NOTE)

    async def latest(self, check: str | None = None,
                     target: str | None = None) -> Answer[list[Sample]]:  # fmt: skip
        rows: list[Sample] = await self._parse(
            "/v1/results", aggmodel.parse_latest, check=check, target=target, latest="true",
            resolution="raw", since=LATEST_WINDOW)  # fmt: skip
        return Answer(rows)

    async def history(self, check: str, target: str, since: float,
                      points: int) -> Answer[list[Sample]]:  # fmt: skip
        until = self.now()
        data = await self.get("/v1/results", check=check, target=target, start=_iso(since),
                              end=_iso(until), resolution=resolution_for(since, until, points),
                              order="desc", limit=HISTORY_ROWS)  # fmt: skip
        try:
            samples = await asyncio.to_thread(aggmodel.parse_history, data, check, target,
                                              since, until, points)  # fmt: skip
        except (FormatError, TypeError, ValueError, AttributeError) as exc:
            raise SourceError(f"/v1/results: an answer this TUI cannot read ({exc})") from None
        cut = ("the aggregator (more rows than it returns)",) if data.get("truncated") else ()
        return Answer(samples, truncated=cut)

    async def matrix(self, tag: str) -> Answer[Matrix]:
        matrix: Matrix = await self._parse(
            "/v1/matrix", lambda d: aggmodel.parse_matrix(d, MATRIX_WINDOW), tag=tag,
            since=f"{MATRIX_WINDOW:g}s")  # fmt: skip
        return Answer(matrix)

    async def traces(self, check: str, target: str) -> Answer[list[Trace]]:
        traces: list[Trace] = await self._parse(
            "/v1/results", aggmodel.parse_traces, check=check, target=target, latest="true",
            detail="true", resolution="raw", since=LATEST_WINDOW)  # fmt: skip
        return Answer(traces)

    async def alerts(self) -> Alerts:
        try:
            alerts: Alerts = await self._parse("/v1/incidents", aggmodel.parse_incidents,
                                               since=INCIDENTS_SINCE)  # fmt: skip
        except Unsupported:
            return Alerts(available=False, source="aggregator", note=(
                "This aggregator has no incidents route (an older version): upgrade it to see "
                "alerts here, or attach the TUI to an agent: meshmon tui -c AGENT.toml."))
        return alerts


class AggregatorSource(AggregatorJson):
    """An aggregator's query API over HTTPS (see the module docstring).

    Args:
        reader: the aggregator and the credentials (a token, a mesh certificate, or both).
    """

    def __init__(self, reader: AggregatorReader) -> None:
        self.reader = reader
        self.url = reader.url
        self.label = f"aggregator {reader.url}"

    def aggregator_name(self) -> str:
        return self.reader.aggregator

    async def get(self, path: str, **params: Any) -> Any:
        try:
            return await self.reader.get(path, **params)
        except ReadError as exc:
            if exc.status == 404:
                raise Unsupported(path) from None
            raise SourceError(str(exc)) from None

    async def aclose(self) -> None:
        await self.reader.aclose()
