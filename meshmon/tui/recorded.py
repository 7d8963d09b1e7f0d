"""A recorded data set as a :class:`~meshmon.tui.source.DataSource`: the same JSON, replayed.

:func:`record` asks a live agent every question the screens ask (status, members, assignments,
latest, each target's history, each tag's matrix, each traced target's hops, alerts) and writes
the answers, verbatim, with the time of the recording; :func:`record_aggregator` does the same
with an aggregator's query API. :class:`RecordedSource` serves an agent's answers back through
:class:`~meshmon.tui.source.JsonSource`, :class:`RecordedAggregatorSource` an aggregator's
through :class:`~meshmon.tui.aggsource.AggregatorJson` (:func:`open_recording` picks the one a
file needs), so a replay goes through exactly the parsing and the screens a live session does,
at a fixed ``now``: the snapshot tests' pictures do not change from run to run.

Answers are keyed by path and parameters, leaving out the ones that only say "relative to now"
(``since``, ``until``, ``start``, ``end``) and the query deadline (``timeout``). A 404 is
recorded as such, so a recording of an agent without a feature replays as one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from meshmon.sync.reader import AggregatorReader
from meshmon.tui.aggsource import AggregatorJson, AggregatorSource
from meshmon.tui.settings import TuiConfig
from meshmon.tui.source import AgentSource, DataSource, JsonSource, SourceError, Unsupported

VOLATILE = frozenset({"since", "until", "start", "end", "timeout"})
FORMAT = 1


def request_key(path: str, params: dict[str, Any]) -> str:
    """``path?a=1&b=2`` with sorted, non-volatile parameters."""
    query = "&".join(f"{k}={params[k]}" for k in sorted(params)
                     if k not in VOLATILE and params[k] is not None)  # fmt: skip
    return f"{path}?{query}" if query else path


class _Replay:
    """The answers of a recording, by request key."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a meshmon TUI recording of format {FORMAT}")
        self._now = float(data["now"])
        self._answers: dict[str, dict[str, Any]] = data["answers"]

    def now(self) -> float:
        return self._now

    def answer(self, path: str, params: dict[str, Any]) -> Any:
        key = request_key(path, params)
        entry = self._answers.get(key)
        if entry is None:
            raise SourceError(f"the recording holds no answer to {key}")
        if entry["status"] == 404:
            raise Unsupported(f"/v1/{path}")
        return entry["body"]


class RecordedSource(JsonSource):
    """Replays a recording of an agent made by :func:`record`.

    Raises:
        SourceError: (from :meth:`get`) for a question the recording does not hold.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._replay = _Replay(path)
        self.label = f"recording {path.name}"

    def now(self) -> float:
        return self._replay.now()

    async def get(self, path: str, **params: Any) -> Any:
        return self._replay.answer(path, params)


class RecordedAggregatorSource(AggregatorJson):
    """Replays a recording of an aggregator made by :func:`record_aggregator`."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self._replay = _Replay(path)
        self._name = str(data.get("aggregator", ""))
        self.url = str(data.get("url", ""))
        self.label = f"recording {path.name}"

    def now(self) -> float:
        return self._replay.now()

    def aggregator_name(self) -> str:
        return self._name

    async def get(self, path: str, **params: Any) -> Any:
        return self._replay.answer(path, params)


def open_recording(path: Path) -> DataSource:
    """The replay of a recording of either kind.

    Raises:
        OSError, ValueError, KeyError: not a readable recording (the message names the file).
    """
    kind = json.loads(path.read_text()).get("source", "agent")
    if kind == "aggregator":
        return RecordedAggregatorSource(path)
    return RecordedSource(path)


async def _keep(answers: dict[str, dict[str, Any]], key: str, answer: Awaitable[Any]) -> Any:
    """Await ``answer`` and keep it under ``key`` (a 404 is kept as such, and raised again)."""
    try:
        body = await answer
    except Unsupported:
        answers[key] = {"status": 404, "body": None}
        raise
    answers[key] = {"status": 200, "body": body}
    return body


class _Recorder(AgentSource):
    """An agent source that keeps every answer."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path)
        self.answers: dict[str, dict[str, Any]] = {}

    async def get(self, path: str, **params: Any) -> Any:
        return await _keep(self.answers, request_key(path, params), super().get(path, **params))


class _AggregatorRecorder(AggregatorSource):
    """An aggregator source that keeps every answer."""

    def __init__(self, reader: AggregatorReader) -> None:
        super().__init__(reader)
        self.answers: dict[str, dict[str, Any]] = {}

    async def get(self, path: str, **params: Any) -> Any:
        return await _keep(self.answers, request_key(path, params), super().get(path, **params))


async def _ask_everything(source: _Recorder | _AggregatorRecorder, cfg: TuiConfig) -> float:
    """Ask ``source`` what every screen asks; the time the recording stands for."""
    now = source.now()
    await source.status()
    members = await source.members()
    with contextlib.suppress(Unsupported):  # an aggregator: Coverage says so without asking
        await source.assignments()
    latest = await source.latest()
    # the widest window (``since`` is not in the key, and each screen keeps its part); an
    # aggregator's resolution is, so each window is asked, the widest last
    windows = sorted({cfg.recent_span, *cfg.history_windows})
    for check, target in sorted({(s.check, s.target) for s in latest.data}):
        await source.latest(check, target)
        for window in windows if isinstance(source, _AggregatorRecorder) else windows[-1:]:
            await source.history(check, target, now - window, cfg.history_points)
    for tag in sorted({t for m in members for t in m.tags}):
        try:
            await source.matrix(tag)
        except Unsupported:
            break
    for check, target in sorted({(s.check, s.target) for s in latest.data
                                 if s.kind == "trace"}):  # fmt: skip
        try:
            await source.traces(check, target)
        except Unsupported:
            break
    await source.alerts()
    return max([now] + [s.timestamp for s in latest.data])


async def record(socket_path: Path, config: TuiConfig | None = None) -> dict[str, Any]:
    """Ask the agent at ``socket_path`` everything the screens ask (with the windows of
    ``config``); the recording, for :func:`save`."""
    source = _Recorder(socket_path)
    try:
        now = await _ask_everything(source, config or TuiConfig())
    finally:
        await source.aclose()
    return {"format": FORMAT, "now": now, "answers": source.answers}


async def record_aggregator(reader: AggregatorReader,
                            config: TuiConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """Ask the aggregator behind ``reader`` everything the screens ask; the recording."""
    source = _AggregatorRecorder(reader)
    try:
        now = await _ask_everything(source, config or TuiConfig())
    finally:
        await source.aclose()
    return {"format": FORMAT, "source": "aggregator", "url": reader.url,
            "aggregator": reader.aggregator, "now": now, "answers": source.answers}


def save(recording: dict[str, Any], out: Path) -> None:
    """Write a recording made by :func:`record`."""
    out.write_text(json.dumps(recording, indent=1, sort_keys=True) + "\n")
