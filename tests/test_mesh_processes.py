"""The mesh with real agent processes on 127.0.0.2-127.0.0.10, real certificates, real sockets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshmon import pki
from tests.harness import LocalMesh, wait_for

N = 8
DETECTION_BOUND = 30.0
"""Seconds for every live agent to mark a SIGKILLed one dead with the "local" profile
(probe 1 s, suspicion timeout at most 6 × 3 × log10(N) × 1 s ≈ 16 s, plus dissemination)."""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=17946)
    yield local
    local.close()


def start_mesh(mesh: LocalMesh, count: int = N) -> None:
    first = mesh.add("node-1", 2)
    first.start()
    mesh.wait_up(first)
    for i in range(2, count + 1):
        mesh.add(f"node-{i}", i + 1, seeds=[mesh.seed_of("node-1")]).start()
    for agent in mesh.agents.values():
        mesh.wait_up(agent)


def all_see(mesh: LocalMesh, expected: dict[str, str], among: list[str]) -> bool:
    for name in among:
        states = mesh.agents[name].member_states()
        if any(states.get(node) != state for node, state in expected.items()):
            return False
    return True


def test_agents_join_detect_a_kill_and_take_back_a_restart(mesh: LocalMesh) -> None:
    start_mesh(mesh)
    names = list(mesh.agents)
    wait_for("every agent to see all 8 alive",
             lambda: all_see(mesh, dict.fromkeys(names, "alive"), names), timeout=30)

    victim = mesh.agents["node-5"]
    victim.kill()
    survivors = [n for n in names if n != "node-5"]
    wait_for("every survivor to mark node-5 dead",
             lambda: all_see(mesh, {"node-5": "dead"}, survivors), timeout=DETECTION_BOUND)

    victim.start()  # same name, same address, a new process with a fresh incarnation
    mesh.wait_up(victim)
    wait_for("node-5 back alive everywhere",
             lambda: all_see(mesh, dict.fromkeys(names, "alive"), names), timeout=30)


def test_outsider_from_another_ca_never_appears(mesh: LocalMesh, tmp_path: Path) -> None:
    start_mesh(mesh, 3)
    other_ca = tmp_path / "other-ca"
    pki.init_ca(other_ca)
    intruder = mesh.add("intruder", 20, seeds=[mesh.seed_of("node-1")], ca_dir=other_ca)
    intruder.start()
    # the intruder runs (its own certificate is valid in its own eyes) ...
    mesh.wait_up(intruder)
    # ... and the handshake with node-1 fails both ways (neither trusts the other's CA)
    wait_for("node-1 to refuse the intruder's TLS handshake",
             lambda: "rejected TLS peer" in mesh.agents["node-1"].log_text(), timeout=20)
    for name in ("node-1", "node-2", "node-3"):
        assert "intruder" not in mesh.agents[name].member_states()
    assert set(intruder.member_states()) == {"intruder"}


def test_revoked_node_is_expelled(mesh: LocalMesh) -> None:
    start_mesh(mesh, 4)
    names = list(mesh.agents)
    wait_for("all 4 alive everywhere",
             lambda: all_see(mesh, dict.fromkeys(names, "alive"), names), timeout=30)
    pki.revoke(mesh.ca_dir, "node-4")
    # the operator hands the new CRL to ONE agent; the mesh spreads it
    shutil.copyfile(mesh.ca_dir / pki.CRL_FILE, mesh.agents["node-2"].folder / "certs" / "crl.pem")
    others = ["node-1", "node-2", "node-3"]
    wait_for("node-4 expelled by all others",
             lambda: all(mesh.agents[n].member_states().get("node-4") in (None, "dead", "left")
                         for n in others), timeout=30)
    for name in ("node-1", "node-3"):
        status = mesh.agents[name].api("status")
        assert status["crl_number"] == 2
