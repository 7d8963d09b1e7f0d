"""Real agents and a real aggregator (on its embedded PostgreSQL) scraped by a real Prometheus
(Debian's), their series read back through its query API; the health endpoints as the kubelet
and Docker's HEALTHCHECK see them.

Agents run on 127.0.0.141-147 (gossip port 18646) with their metrics listeners on port 19108 of
their own address, as [metrics] listen = "<address>:19108".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshmon import pki
from tests.aggapi_support import ENV, AggregatorProc
from tests.conftest import Mesh
from tests.harness import AgentProc, LocalMesh, wait_for
from tests.pg import scratch_dir
from tests.sync_aggregator import free_port
from tests.tmpfs import fill_disk, tmpfs

README = Path(__file__).parent.parent / "README.md"
PORT = 18646
METRICS_PORT = 19108
CHECKS = """
[metrics]
listen = "{address}:19108"

[[checks]]
name = "mesh-ping"
kind = "ping"
interval = "500ms"
timeout = "400ms"
target_tags = ["metrics"]
replicas = 0
params = {{ count = 1 }}

[[checks]]
name = "closed-port"
kind = "tcp"
interval = "500ms"
timeout = "400ms"
targets = ["{address}:9"]
replicas = 0
"""


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:  # not listening (yet): no HTTP status
        return 0, str(exc).encode()


def health(agent: AgentProc, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(f"http://{agent.address}:{METRICS_PORT}{path}")
    return status, json.loads(body)


def add(mesh: LocalMesh, name: str, host: int, seeds: list[str] | None = None,
        extra: str = "") -> AgentProc:  # fmt: skip
    address = f"127.0.0.{host}"
    return mesh.add(name, host, seeds=seeds, tags=["metrics"],
                    extra_config=CHECKS.format(address=address) + extra)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=PORT)
    yield local
    local.close()


class Prometheus:
    """A Prometheus server on loopback scraping ``targets`` every second."""

    def __init__(self, folder: Path, agents: list[str], aggregators: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (apt-get install prometheus; .ci/run does)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n"
            "  - job_name: meshmon-agent\n    static_configs:\n"
            f"      - targets: {json.dumps(agents)}\n"
            "  - job_name: meshmon-aggregator\n    static_configs:\n"
            f"      - targets: {json.dumps(aggregators)}\n")  # fmt: skip
        self.log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for("Prometheus to be ready", lambda: get(f"{self.url}/-/ready")[0] == 200, 60)

    def series(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each element of an instant vector."""
        _, body = get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def query(self, promql: str) -> dict[str, float]:
        """instance → value of an instant vector with one element per instance."""
        return {labels.get("instance", ""): value for labels, value in self.series(promql)}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    servers: list[Prometheus] = []

    def start(agents: list[str], aggregators: list[str]) -> Prometheus:
        servers.append(Prometheus(tmp_path, agents, aggregators))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = scratch_dir("meshmon-metrics-")  # the embedded PostgreSQL's user must reach it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_prometheus_scrapes_agents_and_the_aggregator(mesh: LocalMesh, prometheus_for: Any,
                                                      scratch: Path) -> None:  # fmt: skip
    agg_port = free_port("127.0.0.1")
    agg = AggregatorProc(scratch, Mesh(mesh.ca_dir, scratch),
                         extra=f'[aggregator.metrics]\nlisten = "127.0.0.1:{agg_port}"\n')
    try:
        url = agg.start()
        sync = f'[sync]\nurls = ["{url}"]\nmax_delay = "1s"\n'
        a = add(mesh, "ma", 141, extra=sync)
        b = add(mesh, "mb", 142, seeds=[mesh.seed_of("ma")], extra=sync)
        a.start()
        b.start()
        mesh.wait_up(a)
        mesh.wait_up(b)
        check_agents(prometheus_for, a, b, f"127.0.0.1:{agg_port}")
        # an upload without a client certificate is refused, and counted by its status
        refused = httpx.post(f"{url}/v1/ingest", content=b"x", verify=False, timeout=20)
        assert refused.status_code == 401
        status, body = get(f"http://127.0.0.1:{agg_port}/metrics")
        assert b'\nmeshmon_aggregator_ingest_batches_total{status="401"} 1.0\n' in body
        # readiness follows the database: ready, then not once PostgreSQL is gone
        status, ready = get(f"http://127.0.0.1:{agg_port}/readyz")
        assert status == 200, ready
        assert json.loads(ready)["checks"]["database"]["reason"] == "answers"
        pid = int((scratch / "data/postgres/pgdata/postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        status, ready = wait_for("the aggregator not ready without its database", lambda: (
            (r := get(f"http://127.0.0.1:{agg_port}/readyz"))[0] == 503 and r), 60)
        checks = json.loads(ready)["checks"]
        assert not checks["database"]["ok"] and checks["https"]["ok"]
        assert get(f"http://127.0.0.1:{agg_port}/healthz")[0] == 200  # alive all the same
        _, body = get(f"http://127.0.0.1:{agg_port}/metrics")
        assert b"\nmeshmon_aggregator_database_up 0.0\n" in body
    finally:
        mesh.close()
        agg.stop()


def check_agents(prometheus_for: Any, a: AgentProc, b: AgentProc, aggregator: str) -> None:
    """What Prometheus reads from two agents syncing to the aggregator, and from it."""
    instances = [f"{x.address}:{METRICS_PORT}" for x in (a, b)]
    prom = prometheus_for(instances, [aggregator])

    def every(promql: str, expected: float) -> dict[str, float] | None:
        values = {k: v for k, v in prom.query(promql).items() if k != aggregator}
        return values if values == dict.fromkeys(instances, expected) else None

    def aggregator_says(promql: str) -> float | None:
        values = prom.query(promql)
        return values.get(aggregator)

    wait_for("both agents scraped", lambda: every('up{job="meshmon-agent"}', 1), 60)
    # membership: each sees both alive, nobody suspect
    wait_for("two alive members on each", lambda: every('meshmon_members{state="alive"}', 2), 60)
    assert every('meshmon_members{state="suspect"}', 0)
    # probes: each pings the other (reachable: success 1, RTTs observed) ...
    wait_for("a ping success for the peer", lambda: every(
        'meshmon_probe_success{check="mesh-ping",target=~"ma|mb"}', 1), 60)
    pings = prom.series('meshmon_probe_success{check="mesh-ping"}')
    assert sorted((labels["instance"], labels["target"]) for labels, _ in pings) == [
        (instances[0], "mb"), (instances[1], "ma")]  # each probes the other, by name
    wait_for("RTTs in the histogram", lambda: every(
        'meshmon_probe_rtt_seconds_count{check="mesh-ping"} > bool 0', 1), 60)
    assert every('meshmon_probe_rtt_seconds_bucket{check="mesh-ping",le="+Inf"} - ignoring(le) '
                 'meshmon_probe_rtt_seconds_count{check="mesh-ping"}', 0)
    assert every('meshmon_probe_rtt_seconds_bucket{check="mesh-ping",le="5.0"} - ignoring(le) '
                 'meshmon_probe_rtt_seconds_count{check="mesh-ping"}', 0)  # loopback: < 5 s
    # ... and a closed port fails: success 0, failures counted for the pair and the check
    wait_for("a failure for the closed port", lambda: every(
        'meshmon_probe_success{check="closed-port"}', 0), 60)
    assert every('meshmon_probe_results_total{check="closed-port",result="failure"} > bool 0', 1)
    assert every('meshmon_probe_results_total{check="closed-port",result="success"}', 0)
    assert every('meshmon_check_results_total{check="closed-port",result="failure"} > bool 0', 1)
    # the rest of the agent, as far as a healthy pair can show it
    assert every("meshmon_probe_assignments", 2)  # the peer and the closed port
    assert every("meshmon_store_writable", 1)
    assert every('meshmon_store_records_lost_total{reason="unsynced"}', 0)
    assert every("meshmon_results_stored_total > bool 0", 1)
    assert every('meshmon_build_info{version!=""}', 1)
    assert every("meshmon_event_loop_lag_seconds_count > bool 0", 1)
    assert every("meshmon_probe_series", 2) and every("meshmon_probe_series_limit", 1000)
    assert every('meshmon_membership_refused_total{reason="bad-signature"}', 0)
    assert len(prom.query("meshmon_node_info")) == 2
    # sync, seen from both ends
    assert every("meshmon_sync_enabled", 1)
    wait_for("uploads accepted", lambda: every(
        "meshmon_sync_uploaded_records_total > bool 0", 1), 60)
    assert every("meshmon_sync_last_success_timestamp_seconds > bool 0", 1)
    assert every("meshmon_sync_lag_seconds < bool 30", 1)  # uploads within a second or two
    assert every("meshmon_sync_consecutive_failures", 0)
    wait_for("the aggregator scraped", lambda: aggregator_says(
        'up{job="meshmon-aggregator"}') == 1, 60)  # fmt: skip
    wait_for("both agents' streams at the aggregator",
             lambda: aggregator_says("meshmon_aggregator_agents") == 2, 60)  # fmt: skip
    assert aggregator_says("meshmon_aggregator_database_up") == 1
    assert (aggregator_says('meshmon_aggregator_ingest_batches_total{status="200"}') or 0) > 0
    assert aggregator_says('meshmon_aggregator_ingest_batches_total{status="409"}') == 0
    assert (aggregator_says("meshmon_aggregator_ingest_rows_inserted_total") or 0) > 0
    assert (aggregator_says("meshmon_aggregator_copy_seconds_count") or 0) > 0
    lags = prom.series("meshmon_aggregator_stream_lag_seconds")
    assert sorted(labels["agent"] for labels, _ in lags) == ["ma", "mb"]
    assert all(0 <= lag < 120 for _, lag in lags)  # results of the last two minutes
    # Prometheus negotiated OpenMetrics; promtool checks the text format of the same exposition,
    # and the README's table documents every family in it
    documented = set(re.findall(r"`(meshmon_[a-z_]+)`", README.read_text()))
    for where in (instances[0], aggregator):
        status, text = get(f"http://{where}/metrics")
        assert status == 200
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, timeout=30)  # fmt: skip
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        families = set(re.findall(r"^# TYPE (meshmon_\w+)", text.decode(), re.MULTILINE))
        assert len(families) > 10 and families <= documented, families - documented


def test_ready_only_once_joined(mesh: LocalMesh) -> None:
    a = add(mesh, "ra", 143, seeds=[f"127.0.0.144:{PORT}"])  # a seed not started yet
    a.start()
    mesh.wait_up(a)
    status, body = health(a, "/healthz")
    assert status == 200 and body["alive"] and body["node"] == "ra"
    status, body = health(a, "/readyz")
    assert status == 503 and not body["ready"]
    assert not body["checks"]["mesh"]["ok"] and "alone" in body["checks"]["mesh"]["reason"]
    assert f"127.0.0.144:{PORT}" in body["checks"]["mesh"]["reason"]
    assert body["checks"]["store"]["ok"]
    alone = add(mesh, "rc", 147, seeds=[f"127.0.0.147:{PORT}"])  # its only seed is itself
    alone.start()
    mesh.wait_up(alone)
    status, body = health(alone, "/readyz")
    assert status == 200 and body["checks"]["mesh"]["reason"].startswith("alone by design")
    seed = add(mesh, "rb", 144)  # no seeds: ready at once, alone or already joined by ra
    seed.start()
    mesh.wait_up(seed)
    assert health(seed, "/readyz")[0] == 200
    wait_for("ra ready once the seed let it join", lambda: health(a, "/readyz")[0] == 200, 60)
    assert health(a, "/readyz")[1]["checks"]["mesh"]["reason"].startswith("joined: 2 live")


def test_not_ready_while_the_store_cannot_write(mesh: LocalMesh) -> None:
    agent = add(mesh, "full", 145, extra="[store]\nmax_bytes = \"1MiB\"\n"
                                         "segment_bytes = \"64KiB\"\n")  # fmt: skip
    with tmpfs(agent.folder / "data", "2m"):
        try:
            agent.start()
            mesh.wait_up(agent)
            wait_for("ready (alone by design)", lambda: health(agent, "/readyz")[0] == 200, 30)
            junk = fill_disk(agent.folder / "data")
            _, body = wait_for("not ready on a full disk", lambda: (
                (r := health(agent, "/readyz"))[0] == 503 and r), 60)
            store = body["checks"]["store"]
            assert not store["ok"] and "failing" in store["reason"]
            assert body["checks"]["mesh"]["ok"]
            assert health(agent, "/healthz")[0] == 200  # alive all the same
            _, text = get(f"http://{agent.address}:{METRICS_PORT}/metrics")
            assert b"\nmeshmon_store_writable 0.0\n" in text
            junk.unlink()
            wait_for("ready again once space returns",
                     lambda: health(agent, "/readyz")[0] == 200, 60)  # fmt: skip
        finally:
            agent.stop()


def test_a_taken_metrics_port_is_one_line_naming_the_key(mesh: LocalMesh) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.146", METRICS_PORT))
        taken.listen()
        agent = add(mesh, "taken", 146)
        agent.start()
        assert agent.proc is not None and agent.proc.wait(timeout=60) != 0
    text = agent.log_text()
    assert f"metrics.listen: TCP port {METRICS_PORT} on 127.0.0.146 is already in use" in text
    assert "Traceback" not in text


def test_a_taken_aggregator_metrics_port_is_one_line_naming_the_key(scratch: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pki.init_ca(scratch / "ca")
        agg = AggregatorProc(scratch, Mesh(scratch / "ca", scratch),
                             extra=f'[aggregator.metrics]\nlisten = "127.0.0.1:{port}"\n')
        proc = subprocess.run([sys.executable, "-m", "meshmon", "aggregator", "run", "-c",
                               str(agg.config)], capture_output=True, text=True, timeout=120,
                              env=ENV)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: aggregator.metrics.listen: TCP port {port} on 127.0.0.1 is already in use "
        f"(another agent or program: `ss -ltnp 'sport = :{port}'`); stop it or choose another "
        "port")
    assert "Traceback" not in proc.stderr
