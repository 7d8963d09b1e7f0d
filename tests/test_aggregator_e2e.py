"""The whole path with nothing stood in: real agent processes on 127.0.0.x ping each other (a
mesh check on their certificate tag) and sync to a real ``meshmon aggregator run`` on its
embedded PostgreSQL; the query API then shows the agents, their views, their results and the
latency matrix of their tag group."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.aggapi_support import AggregatorProc
from tests.conftest import Mesh
from tests.harness import LocalMesh, wait_for
from tests.pg import scratch_dir
from tests.sync_aggregator import free_port

HOSTS = (231, 232)
"""The agents' addresses, 127.0.0.231 and .232 (other suites use lower ones)."""


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = scratch_dir("meshmon-e2e-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_agents_sync_to_the_aggregator_and_the_api_shows_the_mesh(scratch: Path) -> None:
    local = LocalMesh(scratch / "mesh", port=free_port(f"127.0.0.{HOSTS[0]}"))
    mesh = Mesh(local.ca_dir, scratch / "mesh")
    agg = AggregatorProc(scratch, mesh)
    try:
        url = agg.start()
        check = (f'[sync]\nurls = ["{url}"]\nmax_delay = "1s"\n[[checks]]\nname = "mesh-ping"\n'
                 'kind = "ping"\ninterval = "1s"\ntimeout = "900ms"\ntarget_tags = ["edge"]\n'
                 'replicas = 0\nparams = { count = 1 }\n')  # fmt: skip
        first = local.add("e1", HOSTS[0], tags=["edge"], extra_config=check)
        second = local.add("e2", HOSTS[1], seeds=[local.seed_of("e1")], tags=["edge"],
                           extra_config=check)  # fmt: skip
        for agent in (first, second):
            agent.start()
        for agent in (first, second):
            local.wait_up(agent)
        token = _token(agg)
        ctx = ssl.create_default_context(cafile=str(mesh.ca_cert))
        ctx.check_hostname = False

        def get(path: str, **params: Any) -> Any:
            with httpx.Client(base_url=url, verify=ctx, timeout=20,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            return response.json()

        def both_probed() -> dict[str, Any] | None:
            for agent in (first, second):
                assert agent.running(), agent.log_text()[-3000:]
            answer = get("/v1/matrix", tag="edge", since="10m")
            cells = answer["matrices"][0]["cells"] if answer["matrices"] else None
            done = cells and cells[0][1] and cells[1][0]
            return answer if done else None

        matrix = wait_for("both agents' pings of each other at the aggregator", both_probed,
                          timeout=90)  # fmt: skip
        assert matrix["rows"] == matrix["columns"] == ["e1", "e2"]
        cell = matrix["matrices"][0]["cells"][0][1]
        assert cell["count"] >= 1 and cell["rtt_avg_ms"] is not None and cell["loss"] == 0.0
        agents = get("/v1/agents")
        assert [(a["agent"], a["tags"]) for a in agents] == [("e1", ["edge"]), ("e2", ["edge"])]
        assert all(a["records"] >= 1 and a["lost_total"] == 0 for a in agents)
        results = get("/v1/results", since="10m", check="mesh-ping", agent="e2")["rows"]
        assert results and {r["target"] for r in results} == {"e1"}
        assert all(r["kind"] == "ping" and r["success"] for r in results)

        def views() -> list[Any] | None:
            rows = get("/v1/members")
            seen = {(m["reporter"], m["name"]) for m in rows if m["state"] == "alive"}
            want = {(r, n) for r in ("e1", "e2") for n in ("e1", "e2")}
            return rows if want <= seen else None

        members = wait_for("both agents' membership views", views, timeout=60)
        assert all(m["certificate_tags"] == ["edge"] for m in members)
        uptime = get("/v1/uptime", since="10m", check="mesh-ping")["targets"]
        assert {t["target"] for t in uptime} == {"e1", "e2"}
    finally:
        local.close()
        code = agg.stop()
    assert code == 0, agg.log_text()[-3000:]


def _token(agg: AggregatorProc) -> str:
    import subprocess
    import sys

    from tests.aggapi_support import ENV

    out = subprocess.run([sys.executable, "-m", "meshmon", "aggregator", "token", "create",
                          "e2e", "-c", str(agg.config)], capture_output=True, text=True,
                         timeout=60, env=ENV, check=True)  # fmt: skip
    return out.stdout.strip()
