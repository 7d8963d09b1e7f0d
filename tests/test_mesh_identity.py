"""Real agent processes: a member with a valid certificate for ``evil`` announces another name.

``evil`` runs the normal agent code (see ``tests/liar_agent.py``) with its own certificate and
key, but its membership metadata claims the name of a live member (``node-2``) or an unknown
one (``ghost``), at incarnation 1000 so that, were it believed, it would outbid the real one.
Every agent must refuse the announcement, keep listing ``node-2`` at its real address without
ever suspecting it, and show the refusal in ``meshmon status``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalMesh, wait_for

HONEST = ["node-1", "node-2", "node-3"]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=18446)  # a port of its own: other suites may run alongside
    yield local
    local.close()


def _views(mesh: LocalMesh) -> dict[str, dict[str, dict[str, Any]]]:
    return {n: {m["name"]: m for m in mesh.agents[n].api("members")} for n in HONEST}


@pytest.mark.parametrize("claim", ["node-2", "ghost"])
def test_member_announcing_another_identity_is_refused_by_all(mesh: LocalMesh,
                                                              claim: str) -> None:
    first = mesh.add("node-1", 40)
    first.start()
    mesh.wait_up(first)
    for i, name in enumerate(HONEST[1:], start=41):
        mesh.add(name, i, seeds=[mesh.seed_of("node-1")]).start()
    for name in HONEST:
        mesh.wait_up(mesh.agents[name])
    wait_for("the three honest agents to see each other",
             lambda: all(set(v) == set(HONEST) and all(m["state"] == "alive" for m in v.values())
                         for v in _views(mesh).values()), timeout=30)

    # evil joins through every honest agent, so each of them hears the lie first-hand
    evil = mesh.add("evil", 49, seeds=[mesh.seed_of(n) for n in HONEST])
    evil.module = "tests.liar_agent"
    evil.env = {"MESHMON_TEST_ANNOUNCE_AS": claim}
    evil.start()
    mesh.wait_up(evil)

    def refused_everywhere() -> bool:
        return all(mesh.agents[n].api("status")["membership"]["refused"].get("name-mismatch", 0)
                   > 0 for n in HONEST)

    wait_for("every honest agent to refuse evil's announcement", refused_everywhere, timeout=30)
    # evil merged the join answers: from here on it probes and gossips like any member
    wait_for("evil to have learnt the honest members",
             lambda: set(HONEST) - {claim} <= set(evil.member_states()), timeout=30)

    real = mesh.agents["node-2"]
    for observer, view in _views(mesh).items():
        assert set(view) == set(HONEST), f"{observer} lists {sorted(view)}"
        if observer != "node-2":
            assert view["node-2"]["address"] == real.address
            assert view["node-2"]["state"] == "alive"
            assert view["node-2"]["incarnation"] < 1000  # evil's claim never won
    for name in HONEST:
        log = mesh.agents[name].log_text()
        assert "member node-2: suspect" not in log
        assert "member node-2: updated" not in log
        assert f"({evil.address}:" not in log  # no member event ever named evil's address
        assert "member ghost" not in log
        assert f"refused alive announcement of '{claim}'" in log
        assert "name-mismatch" in log
        status = mesh.agents[name].api("status")["membership"]
        assert set(status["refused"]) == {"name-mismatch"}
