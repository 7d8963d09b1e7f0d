"""``meshmon aggregator run`` as an operator runs it: a real process on the embedded PostgreSQL,
an agent's upload over mesh TLS, tokens made on the command line, the status and query
commands, a clean stop on SIGTERM; and token management directly on a database."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from meshmon.wire import ingest as wire
from tests.aggapi_support import ENV, AggregatorProc
from tests.batches import batch, records
from tests.conftest import Mesh
from tests.harness import wait_for
from tests.pg import Db, scratch_dir

STORE = "0123456789abcdef0123456789abcdef"


def meshmon(*args: str, ok: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "meshmon", *args], capture_output=True,
                          text=True, timeout=120, env=ENV, cwd=cwd)  # fmt: skip
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0, proc.stdout
        assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def scratch() -> Path:
    path = scratch_dir("meshmon-agg-")
    yield path  # type: ignore[misc]
    shutil.rmtree(path, ignore_errors=True)


def test_run_ingest_query_tokens_and_stop(mesh: Mesh, scratch: Path) -> None:
    agg = AggregatorProc(scratch, mesh, extra='[aggregator.rollups]\nminute_interval = "1s"\n')
    config = agg.config
    try:
        url = agg.start()
        text = agg.log_text()
        for step in ("starting the embedded PostgreSQL", "schema migration 0001_core",
                     "schema migration 0004_agent_certs", "database schema version 4",
                     "rollups and retention running"):
            assert step in text, step
        # an agent uploads with its mesh certificate
        agent = mesh.node("edge-1", tags=("edge",))
        ctx = ssl.create_default_context(cafile=str(mesh.ca_cert))
        ctx.check_hostname = False
        ctx.load_cert_chain(agent.cert, agent.key)
        body, encoding = wire.encode_batch(batch("edge-1", STORE, records("edge-1", 1, 30,
                                                                          time.time() - 60)))
        with httpx.Client(base_url=url, verify=ctx) as client:
            response = client.post(wire.PATH, content=body,
                                   headers={"Content-Encoding": encoding} if encoding else {})
        assert response.status_code == 200, response.text
        assert wire.decode_ack(response.content) == wire.Ack(30, 30)
        # the operator makes a token on the command line while the aggregator runs
        token = meshmon("aggregator", "token", "create", "ops", "--scope", "admin", "-c",
                        str(config)).stdout.strip()
        assert token.startswith("mmt_")
        assert "ops" in meshmon("aggregator", "token", "list", "-c", str(config)).stdout
        status = meshmon("aggregator", "status", "-c", str(config)).stdout
        assert "aggregator: ok" in status and "edge-1" in status
        results = meshmon("results", "--aggregator", url, "--token", token, "--ca",
                          str(mesh.ca_cert), "--limit", "5").stdout.splitlines()
        assert len(results) == 6 and all("edge-1" in line for line in results[1:])
        # the minute rollup catches up by itself (minute_interval = 1s)
        reader = ssl.create_default_context(cafile=str(mesh.ca_cert))
        reader.check_hostname = False

        def rolled() -> list[object] | None:
            with httpx.Client(base_url=url, verify=reader,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                rows = client.get("/v1/results", params={"resolution": "1m",
                                                         "since": "10m"}).json()["rows"]
            return rows or None

        rows = wait_for("the minute rollup", rolled, timeout=60)
        assert sum(r["count"] for r in rows) == 30  # type: ignore[index]
    finally:
        code = agg.stop()
    text = agg.log_text()
    assert code == 0, text
    assert "stopping the embedded PostgreSQL" in text and "Traceback" not in text
    assert not (scratch / "data" / "postgres" / "pgdata" / "postmaster.pid").exists()
    assert not (scratch / "data" / "listening").exists()
    # with the aggregator stopped, token commands start the embedded server for themselves
    listed = meshmon("aggregator", "token", "list", "-c", str(config), "--json").stdout
    assert '"ops"' in listed
    assert not (scratch / "data" / "postgres" / "pgdata" / "postmaster.pid").exists()


def test_token_commands_on_a_database_url(pg_db: Db, tmp_path: Path) -> None:
    url = pg_db.url
    token = meshmon("aggregator", "token", "create", "grafana", "--db", url).stdout.strip()
    assert re.fullmatch(r"mmt_\d+_[A-Za-z0-9_-]{43}", token)
    err = meshmon("aggregator", "token", "create", "grafana", "--db", url, ok=False).stderr
    assert err.startswith("error: ") and "exists" in err and err.count("\n") == 1
    err = meshmon("aggregator", "token", "create", "x", "--scope", "root", "--db", url,
                  ok=False).stderr  # fmt: skip
    assert "--scope must be read or admin" in err
    listing = meshmon("aggregator", "token", "list", "--db", url).stdout
    assert "grafana" in listing and "read" in listing and token not in listing
    assert "revoked" in meshmon("aggregator", "token", "revoke", "grafana", "--db", url).stdout
    err = meshmon("aggregator", "token", "revoke", "grafana", "--db", url, ok=False).stderr
    assert "no token called 'grafana'" in err
    err = meshmon("aggregator", "token", "list", "--db",
                  "host=127.0.0.1 port=1 user=x dbname=x", ok=False).stderr  # fmt: skip
    assert err.startswith("error: cannot use the database") and err.count("\n") == 1
    err = meshmon("aggregator", "token", "list", "--data", str(tmp_path / "none"),
                  ok=False).stderr  # fmt: skip
    assert "no aggregator database" in err


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_the_ingest_writer_processes_end_with_a_killed_aggregator(mesh: Mesh,
                                                                   scratch: Path) -> None:
    agg = AggregatorProc(scratch, mesh)
    try:
        agg.start()
        assert agg.proc is not None
        writers = [pid for pid in _children(agg.proc.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(writers) == 2  # ingest_processes' default
        agg.proc.kill()  # no chance to stop them
        agg.proc.wait(10)
        wait_for("the writer processes to end", lambda: not any(map(_alive, writers)) or None,
                 timeout=20)
    finally:
        agg.stop()
        orphan = scratch / "data" / "postgres" / "pgdata" / "postmaster.pid"
        if orphan.exists():  # the killed aggregator could not stop its PostgreSQL
            os.kill(int(orphan.read_text().split()[0]), signal.SIGQUIT)
