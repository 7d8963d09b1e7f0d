"""Placement and probing across real agent processes: every target gets exactly k probers,
their results land in those agents' stores, and a killed agent's targets move elsewhere."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LocalMesh, wait_for

CHECKS = """
[[checks]]
name = "svc-tcp"
kind = "tcp"
interval = "1s"
timeout = "1s"
targets = ["127.0.0.1:{port}", "127.0.0.1:1"]
replicas = 2

[[checks]]
name = "mesh-ping"
kind = "ping"
interval = "1s"
timeout = "1s"
target_tags = ["mesh"]
replicas = 2
params = {{ count = 1 }}
"""


@pytest.fixture
def service() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=18946)
    yield local
    local.close()


def owners_everywhere(mesh: LocalMesh, names: list[str]) -> dict[tuple[str, str], set[str]] | None:
    """(check, target) -> the agents that say they probe it; None until every view agrees."""
    seen: dict[tuple[str, str], set[str]] = {}
    coverage_views = []
    for name in names:
        data = mesh.agents[name].api("assignments")
        for a in data["mine"]:
            seen.setdefault((a["check"], a["target"]), set()).add(name)
        coverage_views.append({(c["check"], c["target"]): tuple(sorted(c["owners"]))
                               for c in data["coverage"]})
    if any(view != coverage_views[0] for view in coverage_views):
        return None
    return seen


def test_each_target_has_k_probers_and_results_survive_a_kill(mesh: LocalMesh,
                                                              service: int) -> None:
    checks = CHECKS.format(port=service)
    first = mesh.add("p-1", 31, tags=["mesh"], extra_config=checks)
    first.start()
    mesh.wait_up(first)
    for i in range(2, 6):
        mesh.add(f"p-{i}", 30 + i, seeds=[mesh.seed_of("p-1")], tags=["mesh"],
                 extra_config=checks).start()
    names = list(mesh.agents)
    for agent in mesh.agents.values():
        mesh.wait_up(agent)

    def k_owners() -> dict[tuple[str, str], set[str]] | None:
        if any(len(mesh.agents[n].api("members")) != 5 for n in names):
            return None
        owners = owners_everywhere(mesh, names)
        if owners is None or len(owners) != 2 + 5:
            return None
        return owners if all(len(o) == 2 for o in owners.values()) else None

    owners = wait_for("every target to have exactly 2 agreed probers", k_owners, timeout=40)
    for (check, target), probers in owners.items():
        if check == "mesh-ping":
            assert target not in probers  # nobody probes itself

    # results for each of my targets appear in my own store
    service_target = f"127.0.0.1:{service}"
    probers = sorted(owners[("svc-tcp", service_target)])
    for name in probers:
        rows = wait_for(f"{name} to store svc-tcp results",
                        lambda n=name: mesh.agents[n].api("results", check="svc-tcp",
                                                          target=service_target), timeout=20)
        assert all(r["success"] for r in rows)
    closed = owners[("svc-tcp", "127.0.0.1:1")]
    name = sorted(closed)[0]
    rows = wait_for("closed-port results", lambda: mesh.agents[name].api(
        "results", check="svc-tcp", target="127.0.0.1:1"), timeout=20)
    assert not rows[0]["success"] and "refused" in rows[0]["error"].lower()

    # kill -9 one prober of the service: another agent takes the target over
    victim = mesh.agents[probers[0]]
    before = victim.api("results", check="svc-tcp", target=service_target, limit=100000)
    victim.kill()
    survivors = [n for n in names if n != victim.name]

    def reassigned() -> set[str] | None:
        owners = owners_everywhere(mesh, survivors)
        if owners is None:
            return None
        got = owners.get(("svc-tcp", service_target), set())
        return got if len(got) == 2 and victim.name not in got else None

    wait_for("the service target re-assigned to two live agents", reassigned, timeout=40)

    # the killed agent's results are intact after a restart
    victim.start()
    mesh.wait_up(victim)
    after = victim.api("results", check="svc-tcp", target=service_target, limit=100000)
    assert {r["seq"] for r in before} <= {r["seq"] for r in after}


def test_sighup_reload_applies_new_checks_and_refuses_bad_ones(mesh: LocalMesh,
                                                                service: int) -> None:
    import signal

    agent = mesh.add("solo", 40, tags=["mesh"])
    agent.start()
    mesh.wait_up(agent)
    assert agent.api("assignments")["mine"] == []
    agent.extra_config = CHECKS.format(port=service)
    agent.write_config()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    mine = wait_for("the new checks to be assigned",
                    lambda: agent.api("assignments")["mine"], timeout=20)
    assert {a["check"] for a in mine} == {"svc-tcp"}  # a lone agent never pings itself
    wait_for("results of the new check", lambda: agent.api("results", check="svc-tcp"),
             timeout=20)
    agent.config_path.write_text(agent.config_path.read_text() + "\nbogus = 1\n")
    agent.proc.send_signal(signal.SIGHUP)
    wait_for("the bad reload to be logged",
             lambda: "config reload refused" in agent.log_text(), timeout=20)
    assert agent.running()
    assert {a["check"] for a in agent.api("assignments")["mine"]} == {"svc-tcp"}
