"""Snapshots of every TUI screen (pytest-textual-snapshot), from a fixed recorded data set.

The recording (``tests/data/tui_recording.json``) holds a real mesh's control API answers:
four agents, one killed and declared dead, a web service one prober fails, a closed port, traces
(made by ``python -m tests.tui_mesh --record OUT DIR``). It is replayed through the same
:class:`~meshmon.tui.source.JsonSource` parsing as a live agent, at the recording's own clock and
in UTC, so every picture is the same on every run. Update the pictures with
``pytest tests/test_tui_snapshots.py --snapshot-update`` after a deliberate change, and look at
them (``snapshot_report.html``) before committing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from meshmon.tui import MeshmonApp, RecordedSource, SourceError, TuiConfig, Unsupported
from meshmon.tui.screens import (
    AlertsScreen,
    CoverageScreen,
    HelpScreen,
    MatrixScreen,
    MeshScreen,
    PathScreen,
    ResultsScreen,
    TargetScreen,
)
from meshmon.tui.widgets import Banner, LiveTable

RECORDING = Path(__file__).parent / "data" / "tui_recording.json"
FAST = TuiConfig(interval=0.05, retry_max=0.05)
"""Refresh fast: the data never changes, and the pictures are taken once it is all shown."""

Snap = Callable[..., bool]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times in UTC, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app() -> MeshmonApp:
    return MeshmonApp(RecordedSource(RECORDING), FAST)


async def until(pilot: Pilot[None], check: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        try:
            if check():
                await pilot.pause()
                return
        except LookupError:
            pass
        await pilot.pause(0.02)
    raise AssertionError(f"the recording never showed {what}")


def rows(pilot: Pilot[None], kind: type) -> int:
    screen = pilot.app.screen
    if not isinstance(screen, kind):
        return -1
    return sum(t.row_count for t in screen.query(LiveTable))


def showing(keys: tuple[str, ...], kind: type, at_least: int) -> Callable[[Pilot[None]],
                                                                        Awaitable[None]]:
    """Press ``keys``, then wait until a ``kind`` screen shows ``at_least`` rows."""

    async def run_before(pilot: Pilot[None]) -> None:
        await pilot.press(*keys)
        await until(pilot, lambda: rows(pilot, kind) >= at_least, f"{at_least} rows")

    return run_before


@pytest.mark.parametrize(("keys", "kind", "at_least"), [
    ((), MeshScreen, 4),
    (("2",), CoverageScreen, 7),
    (("4",), MatrixScreen, 4),
    (("5",), PathScreen, 2),
])  # fmt: skip
def test_screen(snap_compare: Snap, keys: tuple[str, ...], kind: type, at_least: int) -> None:
    assert snap_compare(app(), run_before=showing(keys, kind, at_least))


async def results_ready(pilot: Pilot[None]) -> None:
    await pilot.press("3")

    def ready() -> bool:
        screen = pilot.app.screen
        return (isinstance(screen, ResultsScreen) and len(screen.rows) == 8
                and {(r.check, r.target) for r in screen.rows} <= screen.recent.backfilled)

    await until(pilot, ready, "every target with its history")
    await pilot.pause(0.2)  # one more refresh draws the backfilled history


def test_results(snap_compare: Snap) -> None:
    assert snap_compare(app(), run_before=results_ready)


def test_results_wide(snap_compare: Snap) -> None:
    assert snap_compare(app(), run_before=results_ready, terminal_size=(120, 30))


class Partial(RecordedSource):
    """The recording as if tui-3 had not answered the mesh-wide questions in time."""

    async def get(self, path: str, **params: Any) -> Any:
        body = await super().get(path, **params)
        if not path.startswith("mesh/"):
            return body
        answers = {k: v for k, v in body["answers"].items() if k != "tui-3"}
        return {**body, "answers": answers, "answered": len(answers), "partial": True,
                "missing": {"tui-3": "timeout"}, "details": {"tui-3": "no answer within 1s"}}


def test_results_partial(snap_compare: Snap) -> None:
    partial = MeshmonApp(Partial(RECORDING), FAST)

    async def run_before(pilot: Pilot[None]) -> None:
        await results_ready(pilot)
        assert "no answer from tui-3" in str(pilot.app.screen.query_one("#scope").content)

    assert snap_compare(partial, run_before=run_before)


def test_target_drilldown(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await results_ready(pilot)
        table = pilot.app.screen.query_one(LiveTable)
        table.move_cursor(row=next(i for i, k in enumerate(table.keys)
                                   if k.startswith("web-http")))
        await pilot.press("enter")
        await until(pilot, lambda: rows(pilot, TargetScreen) == 3, "three probers")

    assert snap_compare(app(), run_before=run_before, terminal_size=(100, 34))


def alerts_shown(pilot: Pilot[None]) -> Awaitable[None]:
    async def run_before() -> None:
        await pilot.press("6")
        await until(pilot, lambda: isinstance(pilot.app.screen, AlertsScreen)
                    and pilot.app.screen.alerts is not None, "the alerts state")

    return run_before()


def test_alerts(snap_compare: Snap) -> None:
    assert snap_compare(app(), run_before=alerts_shown)


class WithoutAlerting(RecordedSource):
    """The recording as an agent of a version without alerting would answer it."""

    async def get(self, path: str, **params: Any) -> Any:
        if path == "alerts":
            raise Unsupported("/v1/alerts")
        return await super().get(path, **params)


def test_alerts_not_available(snap_compare: Snap) -> None:
    older = MeshmonApp(WithoutAlerting(RECORDING), FAST)
    assert snap_compare(older, run_before=alerts_shown)


def test_help(snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await showing((), MeshScreen, 4)(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "help")

    assert snap_compare(app(), run_before=run_before, terminal_size=(100, 50))


class Failing(RecordedSource):
    """Answers the first ``answers`` requests from the recording, then none."""

    def __init__(self, path: Path, answers: int) -> None:
        super().__init__(path)
        self.left = answers

    async def get(self, path: str, **params: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise SourceError("no agent answers at /var/lib/meshmon/control.sock ([Errno 111] "
                              "Connection refused); is it running?")  # fmt: skip
        return await super().get(path, **params)


def test_lost_connection_banner(snap_compare: Snap) -> None:
    lost = MeshmonApp(Failing(RECORDING, answers=2), FAST)  # status and members, once

    async def run_before(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: rows(pilot, MeshScreen) == 4
                    and pilot.app.screen.query_one(Banner).display, "the banner over the data")

    assert snap_compare(lost, run_before=run_before)


def test_recording_replays_through_the_agent_parsing() -> None:
    """The recording is what the snapshots claim: a dead member, a bad path, a target down."""

    async def main() -> None:
        source = RecordedSource(RECORDING)
        members = {m.name: m.state for m in await source.members()}
        assert members == {"tui-1": "alive", "tui-2": "alive", "tui-3": "alive",
                           "tui-4": "dead"}  # fmt: skip
        latest = await source.latest()
        assert not latest.partial and {s.agent for s in latest.data} == {"tui-1", "tui-2",
                                                                         "tui-3"}
        web = [s for s in latest.data if s.check == "web-http"]
        assert sorted(s.agent for s in web if not s.success) == ["tui-2"]
        assert not any(s.success for s in latest.data if s.check == "closed-tcp")
        alerts = await source.alerts()
        assert [(a.state, a.rule) for a in alerts.alerts] == [("firing", "port-closed")]

    asyncio.run(main())
