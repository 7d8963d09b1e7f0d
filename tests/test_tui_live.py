"""Every TUI screen driven by Textual's Pilot against a real mesh: four agent processes on
127.0.0.x, the TUI attached to one of them through its control socket, keys pressed as an
operator would. A second, one-agent mesh shows a lost connection banner and its recovery.

(Textual runs on asyncio; these tests are plain functions running ``asyncio.run`` so that the
suite's trio mode leaves them alone.)
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable

from meshmon.tui import AgentSource, MeshmonApp, TuiConfig
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
from meshmon.tui.widgets import Banner, LiveTable, Note, TitleBar
from tests import tui_mesh
from tests.harness import LocalMesh

PORT = 19746
SIZE = (120, 40)
WAIT = 60.0
"""Seconds to wait for something to show: generous, the machine may be busy."""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with tui_mesh.web_service() as web:
        mesh = tui_mesh.start(tmp_path_factory.mktemp("tui-live"), web, port=PORT,
                              first_host=70)  # fmt: skip
        try:
            yield mesh
        finally:
            mesh.close()


def plain(cell: object) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def table_rows(table: DataTable[Any]) -> list[list[str]]:
    return [[plain(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def note_text(note: Note) -> str:
    content = note.content
    return content.plain if isinstance(content, Text) else str(content)


async def until(pilot: Pilot[None], what: str, check: Callable[[], object],
                within: float = WAIT) -> Any:
    """Let the app run until ``check()`` is truthy (its value), or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while loop.time() < deadline:
        try:
            last = check()
        except (LookupError, AssertionError, ValueError) as exc:  # not on screen yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await pilot.pause(0.1)
    raise AssertionError(f"no {what} within {within}s; last: {last!r}")


def run(socket: Path, scenario: Callable[[Pilot[None], MeshmonApp], Awaitable[None]],
        size: tuple[int, int] = SIZE) -> None:
    async def main() -> None:
        app = MeshmonApp(AgentSource(socket), TuiConfig(interval=0.5))
        async with app.run_test(size=size) as pilot:
            await scenario(pilot, app)

    asyncio.run(main())


def socket_of(live: LocalMesh) -> Path:
    return live.agents[tui_mesh.NAMES[0]].socket


def screen_rows(app: MeshmonApp, kind: type, table: str | None = None) -> list[list[str]]:
    screen = app.screen
    assert isinstance(screen, kind), type(screen).__name__
    found = screen.query_one(f"#{table}" if table else LiveTable.__name__, LiveTable)
    return table_rows(found)


def test_mesh_screen_counts_filters_and_sorts(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        def members() -> dict[str, list[str]] | None:
            rows = {r[0]: r for r in screen_rows(app, MeshScreen)}
            return rows if len(rows) == 4 else None

        rows = await until(pilot, "four members", members)
        assert {r[1] for r in rows.values()} == {"alive"}
        assert rows["tui-3"][3] == "mesh,west"
        assert rows["tui-1"][4] == "127.0.0.70:19746"
        # RTT from tui-1 to each other member, from its gossip pings
        await until(pilot, "an RTT for every other member", lambda: all(
            r[6] != "-" for n, r in (members() or {}).items() if n != "tui-1"))
        counts = app.screen.query_one("#counts", Note)
        assert "alive 4" in note_text(counts)

        await pilot.press("f", *"west", "enter")
        rows = await until(pilot, "the west members only", lambda: len(
            screen_rows(app, MeshScreen)) == 2 and screen_rows(app, MeshScreen))
        assert [r[0] for r in rows] == ["tui-3", "tui-4"]
        assert "alive 2" in note_text(counts) and "tag: west" in note_text(counts)
        await pilot.press("escape")  # clears the filter
        await until(pilot, "all members again", lambda: len(screen_rows(app, MeshScreen)) == 4)
        await pilot.press("r")
        await until(pilot, "reversed order", lambda: screen_rows(app, MeshScreen)[0][0] == "tui-4")
        await pilot.press("s", "s")
        assert "sort: rtt" in note_text(counts)

    run(socket_of(live), scenario)


def test_coverage_screen_shows_probers_and_gaps(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("2")
        rows = await until(pilot, "eight targets", lambda: len(
            screen_rows(app, CoverageScreen)) == 8 and screen_rows(app, CoverageScreen))
        web = next(r for r in rows if r[0] == "web-http")
        assert web[2] == "4/4" and sorted(web[4].split(",")) == list(tui_mesh.NAMES)
        closed = next(r for r in rows if r[0] == "closed-tcp")
        assert closed[2] == "2/2"
        mine = [r for r in rows if r[3] == "●"]
        assert all("tui-1" in r[4].split(",") for r in mine)
        assert not any(r[0] == "mesh-ping" and r[1] == "tui-1" for r in mine)  # not itself
        await pilot.press("g")  # gaps only: a healthy mesh has none
        await until(pilot, "no gap rows", lambda: not screen_rows(app, CoverageScreen))
        await pilot.press("g", "m")
        await until(pilot, "only this agent's targets",
                    lambda: len(screen_rows(app, CoverageScreen)) == len(mine))

    run(socket_of(live), scenario)


def test_results_tell_target_down_from_a_bad_path(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("3")

        def by_check() -> dict[str, list[str]] | None:
            rows = screen_rows(app, ResultsScreen)
            got = {r[0]: r for r in rows}
            if {"web-http", "closed-tcp", "mesh-ping", "east-trace"} - got.keys():
                return None
            return got if got["web-http"][2].startswith("PATH") else None

        rows = await until(pilot, "results of every check", by_check)
        assert rows["closed-tcp"][2] == "DOWN" and rows["closed-tcp"][4] == "100%"
        assert rows["web-http"][2] == "PATH 1/4"
        assert rows["mesh-ping"][2] == "ok" and float(rows["mesh-ping"][3]) > 0
        assert rows["web-http"][6].strip()  # a sparkline of recent RTT

        # drill into the web service: one prober fails, the others see it up
        table = app.screen.query_one(LiveTable)
        table.move_cursor(row=table.keys.index(next(k for k in table.keys
                                                     if k.startswith("web-http"))))
        await pilot.press("enter")
        await until(pilot, "the target screen", lambda: isinstance(app.screen, TargetScreen))

        def probers() -> dict[str, list[str]] | None:
            got = {r[0]: r for r in screen_rows(app, TargetScreen)}
            return got if len(got) == 4 else None

        got = await until(pilot, "four probers", probers)
        assert got[tui_mesh.BAD_PROBER][1] == "FAIL"
        assert "expect" in got[tui_mesh.BAD_PROBER][7]
        assert all(r[1] == "ok" for n, r in got.items() if n != tui_mesh.BAD_PROBER)
        headline = note_text(app.screen.query_one("#headline", Note))
        assert "PATH: 1 of 4 probers fail (tui-2)" in headline
        await pilot.press("w")
        await until(pilot, "a 15-minute window", lambda: "last 15m" in note_text(
            app.screen.query_one("#headline", Note)))

        # back, and into the closed port: every prober fails
        await pilot.press("escape")
        await until(pilot, "the results screen", lambda: isinstance(app.screen, ResultsScreen))
        table = app.screen.query_one(LiveTable)
        table.move_cursor(row=next(i for i, k in enumerate(table.keys)
                                   if k.startswith("closed-tcp")))
        await pilot.press("enter")
        await until(pilot, "DOWN everywhere", lambda: isinstance(app.screen, TargetScreen) and
                    "DOWN: every prober" in note_text(
                        app.screen.query_one("#headline", Note)))  # fmt: skip

    run(socket_of(live), scenario)


def test_matrix_screen_is_a_heatmap_per_tag(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("4")

        def full() -> list[list[str]] | None:
            rows = screen_rows(app, MatrixScreen)
            numbers = [c for r in rows for c in r[1:] if c.strip() not in ("—", "·")]
            return rows if len(rows) == 4 and len(numbers) == 12 else None

        rows = await until(pilot, "a full 4x4 matrix for tag mesh", full)
        assert [r[0] for r in rows] == list(tui_mesh.NAMES)
        assert all(float(c) > 0 for r in rows for c in r[1:] if c.strip() != "—")
        await pilot.press("l")
        assert all(c.strip() in ("0%", "—") for r in screen_rows(app, MatrixScreen)
                   for c in r[1:])  # fmt: skip
        await pilot.press("t")  # next group: east or west, two members
        await until(pilot, "a 2x2 matrix", lambda: len(screen_rows(app, MatrixScreen)) == 2)

    run(socket_of(live), scenario)


def test_path_screen_shows_each_probers_hops(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("5")

        def tables() -> list[list[list[str]]] | None:
            screen = app.screen
            assert isinstance(screen, PathScreen)
            found = [table_rows(t) for t in screen.query(LiveTable)]
            return found if len(found) == 2 and all(found) else None

        first = await until(pilot, "two probers' traces of tui-1", tables)
        for hops in first:  # loopback: one hop, the target itself
            assert hops[-1][1] == "127.0.0.70" and hops[-1][2] == "0%"
        assert "east-trace → tui-1" in note_text(app.screen.query_one("#which", Note))
        await pilot.press("n")
        await until(pilot, "the traces of tui-2", lambda: (t := tables()) is not None and
                    t[0][-1][1] == "127.0.0.71")  # fmt: skip

    run(socket_of(live), scenario)


def test_alerts_screen_shows_what_fires_and_what_does_not(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("6")
        rows = await until(pilot, "the closed port firing", lambda: [
            r for r in screen_rows(app, AlertsScreen) if r[0] == "firing"])
        assert [(r[1], r[2], r[3]) for r in rows] == [("port-closed", "closed-tcp",
                                                       "127.0.0.1:1")]
        assert sorted(rows[0][6].split(",")) == sorted(
            c["owners"] for c in live.agents["tui-1"].api("assignments")["coverage"]
            if c["check"] == "closed-tcp")[0]  # both probers agreed
        # only tui-2 fails the web service: no quorum, so nothing fires for it
        assert not any(r[1] == "web-failing" for r in screen_rows(app, AlertsScreen))
        text = note_text(app.screen.query_one("#state", Note))
        assert "2 rules" in text and "1 firing" in text

    run(socket_of(live), scenario)


def test_help_lists_every_screens_keys(live: LocalMesh) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("question_mark")
        await until(pilot, "the help screen", lambda: isinstance(app.screen, HelpScreen))
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(app.screen.table)
        lines = console.export_text().splitlines()
        keys = {line.split()[0] for line in lines if line.strip()}
        for key in ("1", "6", "?", "q", "f", "s", "g", "enter", "w", "t", "l", "n", "b"):
            assert key in keys, key
        text = "\n".join(lines)
        assert "Filter tag" in text and "Latency/loss" in text and "Next target" in text
        await pilot.press("escape")
        await until(pilot, "back to the mesh", lambda: isinstance(app.screen, MeshScreen))

    run(socket_of(live), scenario)


def test_a_dead_member_shows_on_the_mesh_screen(live: LocalMesh) -> None:
    """Last in the module: it kills an agent of the shared mesh."""

    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await until(pilot, "four members", lambda: len(screen_rows(app, MeshScreen)) == 4)
        live.agents["tui-4"].kill()
        rows = await until(pilot, "tui-4 dead", lambda: next(
            (r for r in screen_rows(app, MeshScreen) if r[0] == "tui-4" and r[1] == "dead"),
            None))  # fmt: skip
        assert rows
        counts = note_text(app.screen.query_one("#counts", Note))
        assert "alive 3" in counts and "dead 1" in counts

    run(socket_of(live), scenario)


def test_a_lost_agent_is_a_banner_then_comes_back(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, port=PORT + 1)
    agent = mesh.add("solo", 79)
    agent.start()
    try:
        mesh.wait_up(agent)

        async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
            banner = app.screen.query_one(Banner)
            await until(pilot, "a live connection", lambda: app.connection.ok)
            assert not banner.display
            agent.kill()
            await until(pilot, "the banner", lambda: banner.display)
            assert "connection lost" in str(banner.content)
            assert "no agent answers" in str(banner.content)
            title = app.screen.query_one(TitleBar)
            assert "○ lost" in str(title.content)
            assert len(screen_rows(app, MeshScreen)) == 1  # the last data stays on screen
            agent.start()
            await until(pilot, "the banner gone", lambda: not banner.display, within=60)
            assert app.connection.ok

        run(agent.socket, scenario)
    finally:
        mesh.close()
