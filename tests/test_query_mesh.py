"""Mesh-wide queries between real agent processes on 127.0.0.x, over real mTLS.

One mesh of four agents (a full-mesh ping among them, and TCP checks of closed local ports
to give every agent a few dozen series) serves the read-only tests; the kill test runs its own
mesh. Non-members ask from this test process with a mesh certificate of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshmon import pki
from meshmon.control import BadParameter, ControlClient
from meshmon.net import MeshTransport, TransportConfig
from meshmon.query import Latest, Peer, QueryService
from tests.harness import AgentProc, LocalMesh, wait_for

PORT = 23946  # a port of its own: other suites may run alongside
CHECKS = """
[[checks]]
name = "mesh-ping"
kind = "ping"
interval = "1s"
timeout = "1s"
target_tags = ["q"]
replicas = 0
params = { count = 1 }

[[checks]]
name = "closed"
kind = "tcp"
interval = "1s"
timeout = "1s"
targets = [%s]
replicas = 0
""" % ", ".join(f'"127.0.0.1:{p}"' for p in range(1, 21))  # noqa: UP031
NAMES = ["a1", "a2", "a3", "a4"]


def mesh_api(agent: AgentProc, question: str, **params: Any) -> dict[str, Any]:
    client = ControlClient(agent.socket, timeout=30)
    try:
        data: dict[str, Any] = client.get(f"mesh/{question}", **params)
        return data
    finally:
        client.close()


def converged(mesh: LocalMesh, names: list[str]) -> bool:
    """Every agent sees every other alive and holds a ping result toward each."""
    for name in names:
        agent = mesh.agents[name]
        if set(agent.member_states().items()) != {(n, "alive") for n in names}:
            return False
        pinged = {r["target"] for r in agent.api("results", latest=1, check="mesh-ping")}
        if pinged != set(names) - {name}:
            return False
    return True


def start_mesh(mesh: LocalMesh, names: list[str], first_host: int) -> None:
    for i, name in enumerate(names):
        seeds = [mesh.seed_of(names[0])] if i else []
        mesh.add(name, first_host + i, seeds=seeds, tags=["q"], extra_config=CHECKS).start()
    for name in names:
        mesh.wait_up(mesh.agents[name])
    wait_for("the mesh to converge and ping", lambda: converged(mesh, names), timeout=60)


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path_factory.mktemp("quad"), port=PORT)
    try:
        start_mesh(local, NAMES, 61)
        yield local
    finally:
        local.close()


def own_latest(mesh: LocalMesh) -> dict[str, dict[tuple[str, str], float]]:
    return {n: {(r["check"], r["target"]): r["timestamp"]
                for r in mesh.agents[n].api("results", latest=1)} for n in NAMES}  # fmt: skip


def test_mesh_latest_holds_every_agents_own_results(quad: LocalMesh) -> None:
    own = own_latest(quad)
    data = mesh_api(quad.agents["a1"], "latest")
    after = own_latest(quad)  # a target's first result may land while the question runs
    assert (data["asker"], data["asked"], data["answered"]) == ("a1", 4, 4)
    assert data["partial"] is False and data["missing"] == {} and data["truncated"] == []
    assert sorted(data["answers"]) == NAMES
    for name in NAMES:
        rows = data["answers"][name]["results"]
        got = {(r["check"], r["target"]): r["timestamp"] for r in rows}
        assert set(own[name]) <= set(got) <= set(after[name])  # what it holds, no other
        assert all(got[k] >= own[name][k] for k in own[name])  # as new as its own API, or newer
        pings = [r for r in rows if r["check"] == "mesh-ping"]
        assert {r["target"] for r in pings} == set(NAMES) - {name}
        assert all(r["kind"] == "ping" and r["loss_pct"] is not None for r in pings)


def test_mesh_latest_filters_and_full(quad: LocalMesh) -> None:
    data = mesh_api(quad.agents["a2"], "latest", check="mesh-ping", target="a1", full=1)
    assert sorted(data["answers"]) == NAMES
    assert data["answers"]["a1"]["results"] == []  # nobody probes itself
    for name in ("a2", "a3", "a4"):
        (row,) = data["answers"][name]["results"]
        assert row["target"] == "a1" and row["result"]["agent"] == name


def test_matrix_of_the_tag(quad: LocalMesh) -> None:
    data = mesh_api(quad.agents["a3"], "matrix", tag="q", window="5m")
    assert data["agents"] == NAMES and data["tag"] == "q" and data["window_s"] == 300
    assert sorted(data["answers"]) == NAMES and not data["missing"]
    for prober in NAMES:
        rows = data["answers"][prober]["rows"]
        assert {(r["check"], r["target"]) for r in rows} == {
            ("mesh-ping", t) for t in NAMES if t != prober}
        for r in rows:
            assert r["samples"] >= 1 and r["loss_pct"] < 100 and r["rtt_median_ms"] > 0
    empty = mesh_api(quad.agents["a3"], "matrix", tag="nobody")
    assert empty["asked"] == 0 and empty["answers"] == {} and empty["agents"] == []


def test_history_from_each_prober(quad: LocalMesh) -> None:
    wait_for("three pings of a1 from each prober", lambda: all(
        len(quad.agents[n].api("results", check="mesh-ping", target="a1")) >= 3
        for n in ("a2", "a3", "a4")))  # fmt: skip
    data = mesh_api(quad.agents["a4"], "history", check="mesh-ping", target="a1", since="10m",
                    points=2)  # fmt: skip
    assert (data["check"], data["target"], data["points"], data["archive"]) == (
        "mesh-ping", "a1", 2, None)
    assert sorted(data["answers"]) == NAMES and not data["partial"]
    assert data["answers"]["a1"]["points"] == [] and data["answers"]["a1"]["oldest"] is None
    for name in ("a2", "a3", "a4"):
        answer = data["answers"][name]
        assert answer["records"] >= 3 and answer["downsampled"] is True
        assert 1 <= len(answer["points"]) <= 2
        assert sum(p["n"] for p in answer["points"]) == answer["records"]


def test_oversize_answers_are_truncated_and_marked(quad: LocalMesh) -> None:
    data = mesh_api(quad.agents["a1"], "latest", max_bytes=1024)
    assert data["answered"] == 4 and data["missing"] == {}
    assert data["truncated"] == NAMES and data["partial"] is True
    full = mesh_api(quad.agents["a1"], "latest")
    for name in NAMES:
        kept = data["answers"][name]["results"]
        assert data["answers"][name]["truncated"] is True
        assert 0 < len(kept) < len(full["answers"][name]["results"])


def test_bad_parameters_are_refused_by_name(quad: LocalMesh) -> None:
    agent = quad.agents["a1"]
    for question, params, parameter in [
        ("matrix", {}, "tag"), ("history", {"check": "mesh-ping"}, "target"),
        ("latest", {"timeout": "99"}, "timeout"), ("latest", {"max_bytes": "12"}, "max_bytes"),
        ("latest", {"since": "1h"}, "since"), ("matrix", {"tag": "q", "window": "8d"}, "window"),
        ("history", {"check": "c", "target": "t", "points": "0"}, "points"),
    ]:  # fmt: skip
        with pytest.raises(BadParameter) as info:
            mesh_api(agent, question, **params)
        assert info.value.parameter == parameter


def cli(agent: AgentProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshmon", *args, "--socket", str(agent.socket)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_commands(quad: LocalMesh) -> None:
    agent = quad.agents["a2"]
    out = cli(agent, "results", "--mesh", "--check", "mesh-ping", "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["answers"]) == NAMES
    out = cli(agent, "results", "--mesh", "--check", "mesh-ping")
    assert out.returncode == 0 and out.stdout.startswith("AGENT")
    assert len([line for line in out.stdout.splitlines() if " mesh-ping " in line]) == 12
    out = cli(agent, "matrix", "--tag", "q")
    assert out.returncode == 0, out.stderr
    assert "FROM \\ TO" in out.stdout and out.stdout.count("%") == 12
    out = cli(agent, "history", "--check", "mesh-ping", "--target", "a3", "--since", "5m")
    assert out.returncode == 0 and "a1:" in out.stdout and "a3:" not in out.stdout
    out = cli(agent, "results", "--mesh", "--since", "5m")
    assert out.returncode == 2 and "meshmon history" in out.stderr
    out = cli(agent, "matrix", "--tag", "q", "--window", "forever")
    assert out.returncode == 2 and "window" in out.stderr


# --- askers that are not members ---------------------------------------------------------------


async def ask_as(mesh: LocalMesh, name: str, host: int, target: AgentProc) -> dict[str, Any]:
    """Ask ``target`` a mesh query from this process as node ``name`` (with the CRL it was
    issued with: a revoked node does not take its own revocation to heart)."""
    folder = mesh.root / "outsiders" / name
    identity, trust = pki.load_identity(folder / pki.CA_CERT, folder / pki.NODE_CERT,
                                        folder / pki.NODE_KEY, folder / pki.CRL_FILE)
    config = TransportConfig(host=f"127.0.0.{host}", udp_port=PORT, tcp_port=PORT)
    view = [Peer(name, (f"127.0.0.{host}", PORT), "alive"),
            Peer(target.name, (target.address, target.port), "alive")]
    async with trio.open_nursery() as nursery:
        transport = MeshTransport(identity, trust, config)
        await nursery.start(transport.run)
        service = QueryService(transport, lambda: view, lambda q, p: {"results": []})
        outcome = await service.ask(Latest(), timeout=10)
        nursery.cancel_scope.cancel()
    return {"answers": outcome.answers, "missing": outcome.missing}


def issue_outsider(mesh: LocalMesh, name: str, host: int) -> None:
    pki.issue_cert(mesh.ca_dir, name, mesh.root / "outsiders" / name, tags=["q"],
                   ips=[f"127.0.0.{host}"])


async def test_a_valid_certificate_that_never_joined_is_refused(quad: LocalMesh) -> None:
    issue_outsider(quad, "stranger", 69)
    got = await ask_as(quad, "stranger", 69, quad.agents["a1"])
    assert list(got["answers"]) == ["stranger"]  # itself only
    miss = got["missing"]["a1"]
    assert miss.reason == "refused" and "not a member" in miss.detail
    assert quad.agents["a1"].api("status")["queries"]["refused"] == {"not_member": 1}


async def test_a_revoked_certificate_is_refused(quad: LocalMesh) -> None:
    issue_outsider(quad, "revoked-one", 68)
    pki.revoke(quad.ca_dir, "revoked-one")
    crl = (quad.ca_dir / pki.CRL_FILE).read_bytes()
    number = pki.Trust.from_files(quad.ca_dir / pki.CA_CERT, quad.ca_dir / pki.CRL_FILE)
    for agent in quad.agents.values():  # the operator drops the new CRL beside each agent
        (agent.folder / "certs" / "crl.pem").write_bytes(crl)
    wait_for("every agent to adopt the CRL", lambda: all(
        a.api("status")["crl_number"] >= number.crl_number for a in quad.agents.values()))
    got = await ask_as(quad, "revoked-one", 68, quad.agents["a2"])
    miss = got["missing"]["a2"]
    assert miss.reason == "refused" and "rejected our certificate" in miss.detail


# --- an agent killed mid-query -----------------------------------------------------------------


def connections(pid: int, dst: str, port: int) -> set[int]:
    """Socket inodes of process ``pid``'s established TCP connections to ``dst:port``."""
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                mine.add(int(link[8:-1]))
    remote = "".join(f"{int(x):02X}" for x in reversed(dst.split("."))) + f":{port:04X}"
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[2] == remote and int(fields[9]) in mine:
            found.add(int(fields[9]))
    return found


def test_an_agent_killed_mid_query_is_named_in_a_partial_answer(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, port=PORT + 1)
    names = ["k1", "k2", "k3"]
    try:
        start_mesh(mesh, names, 71)
        asker, victim = mesh.agents["k1"], mesh.agents["k3"]
        assert victim.proc is not None
        assert asker.proc is not None
        before = connections(asker.proc.pid, victim.address, victim.port)
        os.kill(victim.proc.pid, signal.SIGSTOP)  # its kernel accepts; it answers nothing
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(
            mesh_api(asker, "latest", timeout=20)))  # fmt: skip
        thread.start()
        wait_for("the asker to connect to the stopped agent",
                 lambda: connections(asker.proc.pid, victim.address, victim.port) - before)
        victim.kill()  # mid-query: the connection is open, the answer never comes
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert result["partial"] is True and result["asked"] == 3
        assert sorted(result["answers"]) == ["k1", "k2"]
        assert list(result["missing"]) == ["k3"]
        assert result["missing"]["k3"] in ("unreachable", "timeout"), result["details"]
        assert "127.0.0.73" in result["details"]["k3"] or "no answer" in result["details"]["k3"]
    finally:
        mesh.close()
