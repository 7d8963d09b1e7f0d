"""Every TUI screen driven by Textual's Pilot against a real aggregator: its application on real
HTTPS with the mesh's TLS over a real PostgreSQL, fed through the real ingest route by four
agents' certificates (:mod:`tests.tui_aggregator`), read by ``meshmon tui --aggregator``'s
source with a bearer token or a mesh certificate. A mesh member without the ``aggregator`` tag
posing as one is refused before the token leaves the client.

The source's clock is pinned to the moment the data set was uploaded, so verdicts do not go
stale while the suite runs on a busy machine (the aggregator is asked over real HTTPS all the
same). Plain functions running ``asyncio.run``, as in ``test_tui_live.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import pytest
from rich.text import Text
from textual.pilot import Pilot

from aggregator import partitions
from aggregator.postgres import EmbeddedPostgres
from aggregator.schema import migrate
from meshmon import pki
from meshmon.sync.reader import AggregatorReader, ReadError, reader_context
from meshmon.tui import MeshmonApp, TuiConfig
from meshmon.tui.aggsource import AggregatorSource
from meshmon.tui.screens import (
    AlertsScreen,
    CoverageScreen,
    MatrixScreen,
    MeshScreen,
    PathScreen,
    ResultsScreen,
    TargetScreen,
)
from meshmon.tui.widgets import Banner, LiveTable, Note, TitleBar
from tests import tui_aggregator as data
from tests.conftest import Mesh
from tests.pg import TEMPLATE, _create, _drop
from tests.test_tui_live import note_text, screen_rows, until

SIZE = (120, 40)


class Pinned(AggregatorSource):
    """The aggregator source with its clock at the data set's upload."""

    def __init__(self, reader: AggregatorReader, now: float) -> None:
        super().__init__(reader)
        self.pinned = now

    def now(self) -> float:
        return self.pinned


class Central:
    """The module's aggregator, its data set and credentials."""

    def __init__(self, agg: data.ThreadedAggregator, mesh: Mesh, now: float, token: str) -> None:
        self.agg, self.mesh, self.now, self.token = agg, mesh, now, token

    def reader(self, token: str | None = None, node: str | None = None) -> AggregatorReader:
        cert = key = None
        if node is not None:
            found = self.mesh.node(node)
            cert, key = found.cert, found.key
        return AggregatorReader(self.agg.url, reader_context(self.mesh.ca_cert, cert=cert,
                                                             key=key, crl=self.mesh.crl),
                                token)  # fmt: skip


@pytest.fixture(scope="module")
def central(pg_server: EmbeddedPostgres,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:  # fmt: skip
    name = _create(pg_server, TEMPLATE)
    url = pg_server.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        schema = migrate(conn)
        today = partitions.day_of(time.time())
        partitions.create_days(conn, range(today - 2, today + 1))
    root = tmp_path_factory.mktemp("tui-aggregator")
    pki.init_ca(root / "ca")
    mesh = Mesh(root / "ca", root)
    agg = data.ThreadedAggregator(mesh, url, schema)
    agg.start()
    try:
        now = time.time()
        data.load(agg, now)
        yield Central(agg, mesh, now, agg.token())
    finally:
        agg.stop()
        _drop(pg_server, name)


def run(source: AggregatorSource,
        scenario: Callable[[Pilot[None], MeshmonApp], Awaitable[None]]) -> None:  # fmt: skip
    async def main() -> None:
        app = MeshmonApp(source, TuiConfig(interval=0.5))
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot, app)

    asyncio.run(main())


def title(app: MeshmonApp) -> str:
    content = app.screen.query_one(TitleBar).content
    return content.plain if isinstance(content, Text) else str(content)


def test_mesh_results_and_the_drilldown(central: Central) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        def members() -> dict[str, list[str]] | None:
            rows = {r[0]: r for r in screen_rows(app, MeshScreen)}
            return rows if len(rows) == 4 else None

        rows = await until(pilot, "four members", members)
        assert rows["c4"][1] == "dead" and rows["c1"][1] == "alive"  # c1's view, the freshest
        assert rows["c3"][3] == "mesh,west"  # certificate tags
        await until(pilot, "the aggregator in the title bar",
                    lambda: "aggregator server-" in title(app) and "● live" in title(app))

        await pilot.press("2")  # who probes what is the agents' alone: said plainly
        await until(pilot, "the coverage note", lambda: isinstance(app.screen, CoverageScreen)
                    and "not available from the aggregator" in note_text(
                        app.screen.query_one("#summary", Note)))  # fmt: skip
        assert not app.screen.query_one(LiveTable).display

        await pilot.press("3")

        def by_target() -> dict[tuple[str, str], list[str]] | None:
            got = {(r[0], r[1]): r for r in screen_rows(app, ResultsScreen)}
            return got if len(got) == 8 and isinstance(app.screen, ResultsScreen) and \
                app.screen.recent.backfilled else None  # fmt: skip

        got = await until(pilot, "eight targets", by_target)
        assert got[("closed-tcp", data.CLOSED)][2] == "DOWN"
        assert got[("web-http", data.WEB)][2] == "PATH 1/3"
        assert got[("mesh-ping", "c4")][2] == "DOWN" and got[("mesh-ping", "c1")][2] == "ok"
        assert float(got[("mesh-ping", "c1")][3]) > 0
        await until(pilot, "a sparkline", lambda: screen_rows(app, ResultsScreen)[0][6].strip())

        table = app.screen.query_one(LiveTable)
        table.move_cursor(row=next(i for i, k in enumerate(table.keys)
                                   if k.startswith("web-http")))  # fmt: skip
        await pilot.press("enter")
        await until(pilot, "the target screen", lambda: isinstance(app.screen, TargetScreen))

        def probers() -> dict[str, list[str]] | None:
            found = {r[0]: r for r in screen_rows(app, TargetScreen)}
            return found if len(found) == 3 else None

        found = await until(pilot, "three probers", probers)
        assert found[data.BAD_PROBER][1] == "FAIL" and "204" in found[data.BAD_PROBER][7]
        assert all(r[1] == "ok" for n, r in found.items() if n != data.BAD_PROBER)
        assert found["c1"][5].strip()  # its series from the aggregator's raw results
        await until(pilot, "the verdict", lambda: "PATH: 1 of 3 probers fail (c2)" in note_text(
            app.screen.query_one("#headline", Note)))
        await pilot.press("w", "w")
        await until(pilot, "an hour's window", lambda: "last 1h" in note_text(
            app.screen.query_one("#headline", Note)))
        await pilot.press("escape")
        await until(pilot, "the results again", lambda: isinstance(app.screen, ResultsScreen))

    run(Pinned(central.reader(central.token), central.now), scenario)


def test_matrix_path_and_alerts_with_a_mesh_certificate(central: Central) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        await pilot.press("4")

        def matrix() -> dict[str, list[str]] | None:
            rows = {r[0]: r for r in screen_rows(app, MatrixScreen)}
            return rows if len(rows) == 4 else None

        rows = await until(pilot, "the mesh group's matrix", matrix)
        legend = note_text(app.screen.query_one("#legend", Note))
        assert "tag mesh" in legend and "mean RTT ms" in legend
        # columns c1..c4: c1 probed c2 at a fraction of a ms; nobody probes itself
        assert rows["c1"][1] == "—" and float(rows["c1"][2]) > 0
        await pilot.press("l")
        rows = await until(pilot, "the loss view", lambda: matrix() if (
            matrix() or {}).get("c1", [""] * 3)[2].strip() == "0%" else None)
        assert float(rows["c1"][4].strip().rstrip("%")) > 50  # c4 died four minutes ago

        await pilot.press("5")

        def traced() -> str:
            screen = app.screen
            assert isinstance(screen, PathScreen)
            return screen.chosen is not None and screen.traces is not None \
                and note_text(screen.query_one("#which", Note))  # fmt: skip

        which = await until(pilot, "a traced target", traced)
        assert "east-trace → c1" in which and "target 1 of 2" in which
        hops = screen_rows(app, PathScreen)
        assert [h[1] for h in hops] == ["10.9.0.1", "???", "127.0.0.90"]
        await pilot.press("n")
        await until(pilot, "the second target", lambda: "east-trace → c2" in note_text(
            app.screen.query_one("#which", Note)))

        await pilot.press("6")

        def alerts() -> list[list[str]] | None:
            screen = app.screen
            return screen_rows(app, AlertsScreen) if isinstance(screen, AlertsScreen) and \
                screen.alerts is not None else None  # fmt: skip

        rows = await until(pilot, "the incidents", alerts)
        assert [(r[0], r[1], r[3]) for r in rows] == [
            ("firing", "port-closed", data.CLOSED), ("resolved", "web-failing", data.WEB)]
        state = note_text(app.screen.query_one("#state", Note))
        assert "1 firing" in state and "1 resolved" in state

    # no token: an agent's mesh certificate reads (the aggregator grants it the read scope)
    run(Pinned(central.reader(node="reader-1"), central.now), scenario)


def test_a_member_posing_as_the_aggregator_gets_nothing(central: Central) -> None:
    """A server with a valid mesh certificate but no ``aggregator`` tag: the TLS check refuses
    it before the request (and the token) is sent, and the TUI shows why."""
    impostor = data.ThreadedAggregator(central.mesh, central.agg.database, central.agg.schema,
                                       tags=("edge",))  # fmt: skip
    impostor.start()
    try:
        token = impostor.token("lured")

        async def attempt() -> None:
            reader = AggregatorReader(impostor.url, reader_context(central.mesh.ca_cert), token)
            try:
                with pytest.raises(ReadError) as info:
                    await reader.get("/v1/agents")
            finally:
                await reader.aclose()
            assert info.value.reason == "refused" and "not an aggregator" in str(info.value)

        asyncio.run(attempt())
        assert impostor.served is not None
        used = impostor.served.sql("SELECT last_used FROM api_tokens WHERE name = 'lured'")
        assert used == [(None,)]  # the token never reached the server

        async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
            def banner() -> str:
                found = app.screen.query_one(Banner)
                content = found.content
                text = content.plain if isinstance(content, Text) else str(content)
                return found.display and text  # type: ignore[return-value]

            text = await until(pilot, "the lost-connection banner", banner)
            assert "not an aggregator" in text and "edge" not in title(app)

        reader = AggregatorReader(impostor.url, reader_context(central.mesh.ca_cert), token)
        run(Pinned(reader, central.now), scenario)
    finally:
        impostor.stop()


def test_a_wrong_token_is_shown_not_crashed_on(central: Central) -> None:
    async def scenario(pilot: Pilot[None], app: MeshmonApp) -> None:
        def banner() -> str:
            found = app.screen.query_one(Banner)
            content = found.content
            return found.display and (content.plain if isinstance(content, Text)  # type: ignore[return-value]
                                      else str(content))  # fmt: skip

        text = await until(pilot, "the banner", banner)
        assert "401" in text and "token" in text.lower()

    run(Pinned(central.reader("mmt_1_" + "A" * 43), central.now), scenario)

