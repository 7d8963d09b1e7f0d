"""The aggregator's command line as an operator runs it (real subprocesses): the client
commands against a real HTTPS server, and one-line errors for operator mistakes."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import trio

from aggregator import queries
from tests.aggapi_support import Served, database, serve  # noqa: F401
from tests.conftest import Mesh

ROOT = Path(__file__).resolve().parent.parent
MESHMON = [sys.executable, "-m", "meshmon"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("MESHMON_")},
       "PYTHONPATH": str(ROOT)}


async def cli(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = await trio.run_process([*MESHMON, *args], cwd=cwd, capture_stdout=True,
                                  capture_stderr=True, check=False, env=ENV)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                      proc.stderr.decode())
    if ok:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0, out.stdout
        assert "Traceback" not in out.stderr
    return out


def _seed(served: Served, mesh: Mesh) -> None:
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(served.database, autocommit=True) as conn:
        node = mesh.node("edge-1", tags=("edge",))
        queries.record_certificate(conn, mesh.identity(node)[0].peer)
        conn.execute("INSERT INTO streams (agent, store, high_water, skipped, lost_total, "
                     "records, first_sync, last_sync, last_sent_at, last_record_time) VALUES "
                     "('edge-1', %s, 2, 0, 3, 2, %s, %s, %s, %s)",
                     ("a" * 32, now, now, now, now - dt.timedelta(seconds=5)))
        for seq, (rtt, err) in enumerate(((1.5, None), (None, "timeout")), 1):
            conn.execute("INSERT INTO results VALUES (%s, 'edge-1', %s, %s, 'ping', "
                         "'10.0.0.7', 'ping', %s, %s, 0, %s, '\\x00')",
                         (now - dt.timedelta(minutes=3 - seq), "a" * 32, seq, rtt is not None,
                          rtt, err))
        conn.execute("INSERT INTO members VALUES ('edge-1', 'edge-2', 'alive', 4, "
                     "'127.0.0.3:7946', '{edge,db}', '0.1.0', now())")


async def test_status_results_and_members_through_the_api(
    nursery: trio.Nursery, mesh: Mesh, database: str, tmp_path: Path  # noqa: F811
) -> None:
    served = await serve(nursery, mesh, database)
    _seed(served, mesh)
    token = served.token("ops")
    common = ["--aggregator", served.url, "--token", token, "--ca", str(mesh.ca_cert)]
    status = (await cli("aggregator", "status", *common, cwd=tmp_path)).stdout
    assert "aggregator: ok, database ok" in status
    line = next(x for x in status.splitlines() if x.startswith("edge-1"))
    assert "edge" in line and " 2 " in line and " 3 " in line  # records, lost
    data = json.loads((await cli("aggregator", "status", *common, "--json", cwd=tmp_path)).stdout)
    assert data["agents"][0]["lost_total"] == 3
    results = (await cli("results", *common, "--since", "1h", cwd=tmp_path)).stdout.splitlines()
    assert results[0].split() == ["TIME", "AGENT", "CHECK", "TARGET", "STATUS", "RTT_MS", "ERROR"]
    assert [r.split()[3:] for r in results[1:]] == [
        ["ping", "10.0.0.7", "ok", "1.500"], ["ping", "10.0.0.7", "FAIL", "-", "timeout"]]
    latest = json.loads((await cli("results", *common, "--latest", "--json",
                                    cwd=tmp_path)).stdout)  # fmt: skip
    assert [r["error"] for r in latest] == ["timeout"]
    # an agent's own config: its certificate authenticates (read scope), its CA is trusted
    agent_dir = mesh.root / "nodes" / "edge-1"
    config = tmp_path / "agent.toml"
    config.write_text(f'[node]\nname = "edge-1"\n[listen]\naddress = "127.0.0.2"\n'
                      f'[tls]\nca_cert = "{mesh.ca_cert}"\n'
                      f'cert = "{agent_dir / "node.crt"}"\nkey = "{agent_dir / "node.key"}"\n'
                      f'crl = "{mesh.crl}"\n')
    members = (await cli("members", "--aggregator", served.url, "-c", str(config),
                         cwd=tmp_path)).stdout  # fmt: skip
    assert "edge-2" in members and "edge,db" in members and "REPORTER" in members


async def test_client_refuses_a_server_that_is_not_an_aggregator(
    nursery: trio.Nursery, mesh: Mesh, database: str, tmp_path: Path  # noqa: F811
) -> None:
    served = await serve(nursery, mesh, database, tags=("edge",))
    token = served.token("ops")
    err = (await cli("aggregator", "status", "--aggregator", served.url, "--token", token,
                     "--ca", str(mesh.ca_cert), cwd=tmp_path, ok=False)).stderr
    assert err.count("\n") == 1
    assert "not an aggregator" in err and "nothing was sent" in err
    assert served.sql("SELECT last_used FROM api_tokens") == [(None,)]  # the token never left


async def test_client_mistakes_are_one_line(
    nursery: trio.Nursery, mesh: Mesh, database: str, make_mesh: object,  # noqa: F811
    tmp_path: Path,
) -> None:
    served = await serve(nursery, mesh, database)
    other = make_mesh("other")  # type: ignore[operator]
    cases = [
        (["--aggregator", served.url, "--token", "x"], "pass --ca"),
        (["--aggregator", served.url, "--ca", str(mesh.ca_cert)], "pass --token"),
        (["--aggregator", "http://127.0.0.1:1", "--token", "x", "--ca", str(mesh.ca_cert)],
         "https only"),
        (["--aggregator", served.url, "--token", "x", "--ca", str(tmp_path / "none.crt")],
         "CA certificate not found"),
        (["--aggregator", served.url, "--token", "mmt_1_" + "A" * 43, "--ca",
          str(mesh.ca_cert)], "401 bearer token: unknown or revoked"),
        (["--aggregator", served.url, "--token", "x", "--ca", str(other.ca_cert)],
         "not from this mesh's CA"),
    ]
    for args, message in cases:
        err = (await cli("aggregator", "status", *args, cwd=tmp_path, ok=False)).stderr
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, err
    closed = served.url.rsplit(":", 1)[0] + ":1"
    err = (await cli("results", "--aggregator", closed, "--token", "x", "--ca",
                     str(mesh.ca_cert), cwd=tmp_path, ok=False)).stderr  # fmt: skip
    assert "cannot connect" in err and err.count("\n") == 1
    # aggregator-only options without --aggregator are a usage error, not silently ignored
    proc = await cli("results", "--agent", "edge-1", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "go with --aggregator URL" in proc.stderr


async def test_run_refuses_bad_config_in_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "agg.toml"
    for text, expected in (
        ('[aggregator]\nport = 70000\naddress = "here"\n',
         {"aggregator.port", "aggregator.address"}),
        ('[aggregator.retention]\nraw_days = -1\n[aggregator.rollups]\nhour_interval = "0s"\n',
         {"aggregator.retention.raw_days", "aggregator.rollups.hour_interval"}),
        ('[aggregator.retention]\nraw_days = 120\n', {"aggregator.retention.minute_days"}),
        ('[aggregator]\nfoo = 1\n[aggregator.query]\nraw_max_range = "soon"\n',
         {"aggregator.foo", "aggregator.query.raw_max_range"}),
    ):
        config.write_text(text)
        err = (await cli("aggregator", "run", "-c", str(config), cwd=tmp_path, ok=False)).stderr
        lines = err.splitlines()
        assert all(line.startswith(f"error: {config}: aggregator.") for line in lines), err
        assert {line.split(": ")[2] for line in lines} == expected
    err = (await cli("aggregator", "run", "-c", str(tmp_path / "missing.toml"), cwd=tmp_path,
                     ok=False)).stderr
    assert "missing.toml: file not found" in err


async def test_run_refuses_a_certificate_without_the_aggregator_tag(
    mesh: Mesh, tmp_path: Path
) -> None:
    node = mesh.node("agg", tags=("edge",))
    config = tmp_path / "agg.toml"
    config.write_text(f'[aggregator]\naddress = "127.0.0.1"\nport = 0\n'
                      f'data_dir = "{tmp_path / "data"}"\n[aggregator.tls]\n'
                      f'ca_cert = "{mesh.ca_cert}"\ncert = "{node.cert}"\nkey = "{node.key}"\n'
                      f'crl = "{mesh.crl}"\n')
    proc = await cli("aggregator", "run", "-c", str(config), cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    assert "lacks the tag 'aggregator'" in proc.stderr and "--tag aggregator" in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before starting anything
    config.write_text(config.read_text().replace(str(node.cert), str(tmp_path / "nope.crt")))
    proc = await cli("aggregator", "run", "-c", str(config), cwd=tmp_path, ok=False)
    assert "aggregator.tls:" in proc.stderr and "nope.crt" in proc.stderr

