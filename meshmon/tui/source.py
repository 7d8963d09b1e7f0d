"""Where the TUI's data comes from: the :class:`DataSource` interface and the agent source.

Theory of operation
-------------------
Screens ask a :class:`DataSource` for model values (:mod:`meshmon.tui.model`) and never see a
transport. Every method is a coroutine on the TUI's asyncio loop; the agent source does its I/O
with an asynchronous HTTP client over the agent's unix socket, and decodes and parses answers in
a worker thread, so neither a slow agent nor a big answer stalls the UI.

Two kinds of failure, two exceptions:

* :class:`SourceError`: the source cannot answer at all (no agent on the socket, it timed out,
  it failed). The app shows a banner and retries; nothing crashes.
* :class:`Unsupported`: the source answers, but not this question (an agent of a version without
  mesh queries or alerts). Screens say so in words, or fall back to what the agent does know:
  without mesh queries, the results of the attached agent alone, marked ``scope="local"``.

:class:`JsonSource` holds everything between "GET this path" and the model, so the agent source
and the recorded source (:mod:`meshmon.tui.recorded`, for deterministic snapshots) share one
parsing path. :mod:`meshmon.tui.aggsource` implements :class:`DataSource` over an aggregator's
query API the same way (``meshmon tui --aggregator URL``), and raises :class:`Unsupported` for
what only agents know (who probes what).
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from pathlib import Path
from typing import Any, Protocol

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
    parse_alerts,
    parse_assignments,
    parse_local_results,
    parse_members,
    parse_mesh_history,
    parse_mesh_latest,
    parse_mesh_matrix,
    parse_mesh_traces,
    parse_status,
)

REQUEST_TIMEOUT = 6.0
"""Seconds for one control API request: a mesh query's own deadline (2 s) plus headroom."""
MESH_QUERY_TIMEOUT = 2.0
"""Seconds an agent may gather a mesh-wide answer before it answers with what it has."""
LOCAL_LIMIT = 5000
"""Results read from the attached agent's store when it has no mesh queries."""


class SourceError(Exception):
    """The source cannot answer now (lost connection, failure); the message says what and where."""


class Unsupported(Exception):
    """The source answers, but has no answer to this question (its version lacks it)."""


class DataSource(Protocol):
    """What the screens ask. Every method raises :class:`SourceError` when the source cannot
    answer and :class:`Unsupported` when it lacks the question."""

    label: str
    """Where the data comes from, in words (shown in the title bar)."""
    delay: float
    """Seconds a result may take to reach this source after it was measured (0 for an agent,
    which answers from the stores; an aggregator receives results in batches): how much older
    a prober's newest result may be before it counts as stale."""

    def now(self) -> float:
        """The wall-clock time the data is relative to (fixed for a recording)."""
        ...

    async def status(self) -> Status: ...

    async def members(self) -> list[Member]: ...

    async def assignments(self) -> Assignments: ...

    async def latest(self, check: str | None = None,
                     target: str | None = None) -> Answer[list[Sample]]:  # fmt: skip
        """Every prober's newest result per (check, target), optionally of one check/target."""
        ...

    async def history(self, check: str, target: str, since: float,
                      points: int) -> Answer[list[Sample]]:  # fmt: skip
        """One target's series from each of its probers since ``since``, oldest first."""
        ...

    async def matrix(self, tag: str) -> Answer[Matrix]: ...

    async def traces(self, check: str, target: str) -> Answer[list[Trace]]:
        """Each prober's latest traceroute of a target."""
        ...

    async def alerts(self) -> Alerts: ...

    async def aclose(self) -> None: ...


class JsonSource(abc.ABC):
    """A :class:`DataSource` over the control API's JSON; subclasses provide :meth:`get`."""

    label = "json"
    delay = 0.0

    def __init__(self) -> None:
        self._node: str | None = None

    @abc.abstractmethod
    async def get(self, path: str, **params: Any) -> Any:
        """GET ``/v1/<path>`` with ``params``; the parsed JSON body.

        Raises:
            SourceError: no answer.
            Unsupported: the endpoint does not exist there (404).
        """

    def now(self) -> float:
        return time.time()

    async def aclose(self) -> None:
        return None

    async def _parse(self, path: str, parse: Any, **params: Any) -> Any:
        data = await self.get(path, **params)
        try:  # a mesh-wide answer can be a megabyte: parse it off the UI's event loop
            return await asyncio.to_thread(parse, data)
        except (FormatError, TypeError, ValueError) as exc:
            raise SourceError(f"/v1/{path}: an answer this TUI cannot read ({exc}); is the "
                              "agent a much newer or older meshmon?") from None  # fmt: skip

    async def status(self) -> Status:
        status: Status = await self._parse("status", parse_status)
        self._node = status.node
        return status

    async def _me(self) -> str:
        if self._node is None:
            await self.status()
        assert self._node is not None
        return self._node

    async def members(self) -> list[Member]:
        members: list[Member] = await self._parse("members", parse_members)
        return members

    async def assignments(self) -> Assignments:
        assignments: Assignments = await self._parse("assignments", parse_assignments)
        return assignments

    async def latest(self, check: str | None = None,
                     target: str | None = None) -> Answer[list[Sample]]:  # fmt: skip
        where = {k: v for k, v in (("check", check), ("target", target)) if v is not None}
        try:
            answer: Answer[list[Sample]] = await self._parse(
                "mesh/latest", parse_mesh_latest, **where, timeout=MESH_QUERY_TIMEOUT)
        except Unsupported:
            me = await self._me()
            rows = await self._parse("results", lambda d: parse_local_results(me, d), **where,
                                     latest=1)  # fmt: skip
            return Answer(rows, "local")
        return answer

    async def history(self, check: str, target: str, since: float,
                      points: int) -> Answer[list[Sample]]:  # fmt: skip
        try:
            answer: Answer[list[Sample]] = await self._parse(
                "mesh/history", lambda d: parse_mesh_history(d, check, target), check=check,
                target=target, since=f"{since:.3f}", points=points, timeout=MESH_QUERY_TIMEOUT)
        except Unsupported:
            me = await self._me()
            rows = await self._parse("results", lambda d: parse_local_results(me, d),
                                     check=check, target=target, since=f"{since:.3f}",
                                     limit=LOCAL_LIMIT)  # fmt: skip
            return Answer(sorted(rows, key=lambda s: s.timestamp), "local")
        return answer

    async def matrix(self, tag: str) -> Answer[Matrix]:
        answer: Answer[Matrix] = await self._parse("mesh/matrix", parse_mesh_matrix, tag=tag,
                                                   timeout=MESH_QUERY_TIMEOUT)
        return answer

    async def traces(self, check: str, target: str) -> Answer[list[Trace]]:
        answer: Answer[list[Trace]] = await self._parse(
            "mesh/latest", parse_mesh_traces, check=check, target=target, full=1,
            timeout=MESH_QUERY_TIMEOUT)
        return answer

    async def alerts(self) -> Alerts:
        try:
            alerts: Alerts = await self._parse("alerts", parse_alerts)
        except Unsupported:
            status = await self.status()
            return Alerts(available=False, note=(
                f"Alerts are not available in this agent version (meshmon {status.version} on "
                f"{status.node}): it evaluates no alert rules, so nothing can fire. Upgrade the "
                "agent to see alerts here."))  # fmt: skip
        return alerts


class AgentSource(JsonSource):
    """An agent's control API on its unix socket (asynchronous HTTP, JSON)."""

    def __init__(self, socket_path: Path, timeout: float = REQUEST_TIMEOUT) -> None:
        import httpx

        super().__init__()
        self.socket_path = socket_path
        self.label = str(socket_path)
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://meshmon", timeout=timeout)  # fmt: skip

    async def get(self, path: str, **params: Any) -> Any:
        import httpx

        try:
            response = await self._client.get(f"/v1/{path}", params=params)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise SourceError(f"no agent answers at {self.socket_path} ({exc}); is it "
                              "running?") from None  # fmt: skip
        except httpx.TimeoutException:
            raise SourceError(f"the agent at {self.socket_path} did not answer /v1/{path} in "
                              f"{self._client.timeout.read} s") from None  # fmt: skip
        except httpx.HTTPError as exc:
            raise SourceError(f"control API at {self.socket_path}: {exc}") from None
        if response.status_code == 404:
            raise Unsupported(f"/v1/{path}")
        try:
            body = await asyncio.to_thread(json.loads, response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SourceError(f"/v1/{path}: not JSON (HTTP {response.status_code})") from None
        if response.status_code != 200:
            error = body.get("error", body) if isinstance(body, dict) else body
            raise SourceError(f"/v1/{path}: {error} (HTTP {response.status_code})")
        return body

    async def aclose(self) -> None:
        await self._client.aclose()
