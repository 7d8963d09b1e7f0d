"""A recorded data set as a :class:`~meshmon.tui.source.DataSource`: the same JSON, replayed.

:func:`record` asks a live agent every question the screens ask (status, members, assignments,
latest, each target's history, each tag's matrix, each traced target's hops, alerts) and writes
the answers, verbatim, with the time of the recording. :class:`RecordedSource` serves them back
through :class:`~meshmon.tui.source.JsonSource`, so a replay goes through exactly the parsing
and the screens a live session does, at a fixed ``now``: the snapshot tests' pictures do not
change from run to run.

Answers are keyed by path and parameters, leaving out the ones that only say "relative to now"
(``since``, ``until``) and the query deadline (``timeout``). A 404 is recorded as such, so a
recording of an agent without a feature replays as one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshmon.tui.settings import TuiConfig
from meshmon.tui.source import AgentSource, JsonSource, SourceError, Unsupported

VOLATILE = frozenset({"since", "until", "timeout"})
FORMAT = 1


def request_key(path: str, params: dict[str, Any]) -> str:
    """``path?a=1&b=2`` with sorted, non-volatile parameters."""
    query = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in VOLATILE)
    return f"{path}?{query}" if query else path


class RecordedSource(JsonSource):
    """Replays a recording made by :func:`record`.

    Raises:
        SourceError: (from :meth:`get`) for a question the recording does not hold.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a meshmon TUI recording of format {FORMAT}")
        self._now = float(data["now"])
        self._answers: dict[str, dict[str, Any]] = data["answers"]
        self.label = f"recording {path.name}"

    def now(self) -> float:
        return self._now

    async def get(self, path: str, **params: Any) -> Any:
        key = request_key(path, params)
        entry = self._answers.get(key)
        if entry is None:
            raise SourceError(f"the recording holds no answer to {key}")
        if entry["status"] == 404:
            raise Unsupported(f"/v1/{path}")
        return entry["body"]


class _Recorder(AgentSource):
    """An agent source that keeps every answer."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path)
        self.answers: dict[str, dict[str, Any]] = {}

    async def get(self, path: str, **params: Any) -> Any:
        key = request_key(path, params)
        try:
            body = await super().get(path, **params)
        except Unsupported:
            self.answers[key] = {"status": 404, "body": None}
            raise
        self.answers[key] = {"status": 200, "body": body}
        return body


async def record(socket_path: Path, config: TuiConfig | None = None) -> dict[str, Any]:
    """Ask the agent at ``socket_path`` everything the screens ask (with the windows of
    ``config``); the recording, for :func:`save`."""
    cfg = config or TuiConfig()
    source = _Recorder(socket_path)
    try:
        now = source.now()
        await source.status()
        members = await source.members()
        await source.assignments()
        latest = await source.latest()
        for check, target in sorted({(s.check, s.target) for s in latest.data}):
            await source.latest(check, target)
            # the widest window: ``since`` is not in the key, and each screen keeps its part
            window = max(cfg.recent_span, *cfg.history_windows)
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
        now = max([now] + [s.timestamp for s in latest.data])
    finally:
        await source.aclose()
    return {"format": FORMAT, "now": now, "answers": source.answers}


def save(recording: dict[str, Any], out: Path) -> None:
    """Write a recording made by :func:`record`."""
    out.write_text(json.dumps(recording, indent=1, sort_keys=True) + "\n")
