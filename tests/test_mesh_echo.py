"""Agents measure UDP RTT, loss and jitter between each other through their sealed echo
responders (real agent processes on 127.0.0.x)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshmon.probes import ProbeContext, run_probe
from tests.harness import LocalMesh, wait_for

CHECKS = """
[[checks]]
name = "mesh-udp"
kind = "udp"
interval = "1s"
timeout = "1s"
target_tags = ["mesh"]
replicas = 1
params = { mode = "echo", count = 3, interval = 0.05 }
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=19946)
    yield local
    local.close()


def test_agents_probe_each_others_sealed_echo_responders(mesh: LocalMesh) -> None:
    a = mesh.add("e-1", 71, tags=["mesh"], extra_config=CHECKS)
    a.start()
    mesh.wait_up(a)
    b = mesh.add("e-2", 72, seeds=[mesh.seed_of("e-1")], tags=["mesh"], extra_config=CHECKS)
    b.start()
    mesh.wait_up(b)
    for prober, target in ((a, "e-2"), (b, "e-1")):
        rows = wait_for(f"{prober.name} to store a successful echo of {target}", lambda p=prober,
                        t=target: [x for x in p.api("results", check="mesh-udp", target=t)
                                   if x["success"]] or None, timeout=30)  # fmt: skip
        assert rows and rows[0]["success"]

    async def stranger() -> bool:  # no mesh keys: the responder stays silent
        (res,) = await run_probe("udp", f"{a.address}:{a.port + 1}",
                                 {"mode": "echo", "count": 3, "interval": 0.0}, 0.5,
                                 ProbeContext())  # fmt: skip
        return res.is_successful()

    assert not trio.run(stranger)
