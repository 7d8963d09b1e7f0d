"""History beyond what agents hold, from the aggregator, with nothing stood in: a real agent
process (its ring holds a minute of pings) syncing to a real aggregator (real HTTPS, real
PostgreSQL) that also holds the agent's results from forty minutes ago (an earlier life of its
data directory). A mesh history question to the agent brings the old points back from the
aggregator, asked with the agent's own certificate and marked as archive; ``meshmon history``
and the TUI's drill-down show them; with the aggregator down, the answer is partial and says
which aggregator did not answer and why.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aggregator import partitions
from aggregator.postgres import EmbeddedPostgres
from aggregator.schema import migrate
from meshmon.results import Ping, PingResult, encode_result
from meshmon.tui import AgentSource, MeshmonApp, TuiConfig
from meshmon.tui.screens import ResultsScreen, TargetScreen
from meshmon.tui.widgets import LiveTable, Note
from meshmon.wire.ingest import SyncRecord
from tests.aggapi_support import ENV
from tests.batches import batch
from tests.conftest import Mesh, Node
from tests.harness import AgentProc, LocalMesh, wait_for
from tests.pg import TEMPLATE, _create, _drop, scratch_dir
from tests.sync_aggregator import free_port
from tests.test_tui_live import note_text, screen_rows, until
from tests.tui_aggregator import ThreadedAggregator

HOST = 236
"""The agent's address, 127.0.0.236 (other suites use other ones)."""
CHECK, TARGET = "self-ping", "127.0.0.1"
OLD = 60
"""Results the aggregator holds from the agent's earlier life: one every 10 s, from 50 to 40
minutes ago."""


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = scratch_dir("meshmon-archive-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def database(pg_server: EmbeddedPostgres) -> Iterator[tuple[str, Any]]:
    name = _create(pg_server, TEMPLATE)
    url = pg_server.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        schema = migrate(conn)
        today = partitions.day_of(time.time())
        partitions.create_days(conn, range(today - 1, today + 1))
    yield url, schema
    _drop(pg_server, name)


def old_life(agg: ThreadedAggregator, agent: AgentProc, now: float) -> list[float]:
    """Upload, with the agent's certificate, pings from an earlier store of the agent; their
    times."""
    times = [now - 3000 + 10 * i for i in range(OLD)]
    records = []
    for seq, t in enumerate(times, 1):
        result = PingResult(1, 0, (2.5,), (), 2.5, TARGET)
        records.append(SyncRecord(seq, t, CHECK, TARGET, encode_result(Ping(
            agent=agent.name, check=CHECK, target=TARGET, family=4, started_at=t,
            duration_ms=3.0, result=result))))  # fmt: skip
    agg.upload(Node(agent.name, agent.folder / "certs"), batch(agent.name, "e" * 32, records))
    return times


def history_cli(agent: AgentProc) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "meshmon", "history", "-c",
                          str(agent.config_path), "--check", CHECK, "--target", TARGET,
                          "--since", "1h"], capture_output=True, text=True, timeout=120,
                         env=ENV)  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out


def drill_down(agent: AgentProc) -> str:
    """The TUI on the agent: Results, Enter on the series, the one-hour window; the headline."""

    async def main() -> str:
        app = MeshmonApp(AgentSource(agent.socket), TuiConfig(interval=0.5))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("3")
            await until(pilot, "the series", lambda: any(
                r[0] == CHECK for r in screen_rows(app, ResultsScreen)))
            await pilot.press("enter")
            await until(pilot, "the drill-down", lambda: isinstance(app.screen, TargetScreen))
            await pilot.press("w", "w")

            def archived() -> str:
                screen = app.screen
                assert isinstance(screen, TargetScreen) and screen.window == 3600.0
                text = note_text(screen.query_one("#headline", Note))
                return "archive" in text and text  # type: ignore[return-value]

            headline: str = await until(pilot, "the archive's points", archived)
            screen = app.screen
            assert isinstance(screen, TargetScreen)
            old = [s for s in screen.history.data if s.archive]
            assert len(old) == OLD and screen.query_one(LiveTable).row_count == 1
            return headline

    return asyncio.run(main())


def test_history_older_than_the_ring_comes_from_the_aggregator(
        scratch: Path, database: tuple[str, Any]) -> None:  # fmt: skip
    local = LocalMesh(scratch / "mesh", port=free_port(f"127.0.0.{HOST}"))
    mesh = Mesh(local.ca_dir, scratch / "mesh")
    agg = ThreadedAggregator(mesh, *database)
    url = agg.start()
    stopped = False
    try:
        agent = local.add("h1", HOST, tags=["edge"], extra_config=(
            f'[sync]\nurls = ["{url}"]\nmax_delay = "1s"\n[[checks]]\nname = "{CHECK}"\n'
            f'kind = "ping"\ninterval = "1s"\ntimeout = "900ms"\ntargets = ["{TARGET}"]\n'
            'params = { count = 1 }\n'))  # fmt: skip
        old = old_life(agg, agent, time.time())
        agent.start()
        local.wait_up(agent)
        wait_for("a few results in the agent's ring", lambda: len(agent.api(
            "results", check=CHECK)) >= 3, timeout=60)  # fmt: skip

        data = agent.api("mesh/history", check=CHECK, target=TARGET, since="1h", points=200)
        own = data["answers"]["h1"]
        assert own["oldest"] > old[-1] + 600  # the ring holds only this life's results
        assert all(p["t"] >= own["oldest"] for p in own["points"])
        archive = data["archive"]
        assert archive["missing"] is None and not data["partial"]
        assert archive["aggregator"].startswith("server-") and archive["url"] == url
        assert archive["resolution"] == "raw" and archive["until"] == own["oldest"]
        points = archive["answers"]["h1"]["points"]
        assert [p["t"] for p in points] == pytest.approx(old)
        assert all(p["ok"] == 1 and p["rtt_ms"] == 2.5 for p in points)
        assert agent.api("status")["sync"]["archive"] == {"asked": 1, "failed": 0}

        text = history_cli(agent).stdout
        assert f"h1 (archive: from the aggregator {archive['aggregator']}, raw" in text
        assert text.count("\n") > OLD  # every archive point, and the ring's

        headline = drill_down(agent)
        assert f"archive of the aggregator {archive['aggregator']}" in headline

        agg.stop()
        stopped = True
        data = agent.api("mesh/history", check=CHECK, target=TARGET, since="1h", points=200)
        assert data["partial"] and data["missing"] == {}  # the agents all answered
        assert data["answers"]["h1"]["points"]
        missing = data["archive"]["missing"]
        assert missing["reason"] == "unreachable" and url in missing["detail"]
        assert data["archive"]["answers"] == {}
        err = history_cli(agent).stderr
        assert "partial answer: the archive" in err and "did not answer: unreachable" in err
    finally:
        local.close()
        if not stopped:
            agg.stop()
