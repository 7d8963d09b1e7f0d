"""A real agent whose data_dir is a 2 MiB tmpfs survives the disk filling up: status says
failing and degraded while results are buffered, and once space returns every result of
before, during and after the outage is in the store with contiguous seqs and nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.harness import AgentProc, LocalMesh, wait_for
from tests.tmpfs import fill_disk, tmpfs

CONFIG = """
[store]
max_bytes = "1MiB"
segment_bytes = "64KiB"
fsync_interval = "50ms"

[[checks]]
name = "local-ping"
kind = "ping"
interval = "200ms"
timeout = "200ms"
targets = ["127.0.0.1"]
replicas = 1
params = { count = 1 }
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    local = LocalMesh(tmp_path, port=19846)
    yield local
    local.close()


@pytest.fixture
def agent(mesh: LocalMesh) -> Iterator[AgentProc]:
    """An agent whose data_dir is a fresh 2 MiB tmpfs (unmounted after the agent stops)."""
    proc = mesh.add("full-1", 51, extra_config=CONFIG)
    with tmpfs(proc.folder / "data", "2m"):
        try:
            yield proc
        finally:
            proc.stop()


def status_text(agent: AgentProc) -> str:
    """What an operator sees from ``meshmon status``."""
    return subprocess.run([sys.executable, "-m", "meshmon", "status", "--socket",
                           str(agent.socket)], capture_output=True, text=True, check=True,
                          timeout=30).stdout  # fmt: skip


def store_status(agent: AgentProc) -> dict[str, Any]:
    status = agent.api("status")
    return {**status["store"], "degraded": status["degraded"]}


def test_a_full_data_dir_is_survived_and_nothing_is_lost(mesh: LocalMesh, agent: AgentProc) -> None:
    agent.start()
    mesh.wait_up(agent)
    before = wait_for(
        "results written before the outage",
        lambda: (s := store_status(agent))["durable_seq"] >= 5 and s,
        timeout=30,
    )
    assert before["state"] == "ok" and not before["degraded"]

    junk = fill_disk(agent.folder / "data")
    failing = wait_for(
        "the store to report failing",
        lambda: (s := store_status(agent))["state"] == "failing" and s,
        timeout=30,
    )  # the segment's last page may take a few more records
    assert failing["degraded"] and "No space left" in failing["reason"]
    assert "free space" in failing["advice"] and failing["lost"] == 0
    first = failing["buffered"]
    rising = wait_for(
        "the buffered count to rise",
        lambda: (s := store_status(agent))["buffered"] >= first + 5 and s,
        timeout=30,
    )
    assert rising["state"] == "failing" and rising["degraded"]
    written_before = rising["newest_seq"]
    text = status_text(agent)
    assert "store: FAILING since" in text and "No space left on device" in text
    assert "to fix: free space on the filesystem of" in text and "results buffered" in text

    junk.unlink()
    recovered = wait_for(
        "the store to recover by itself",
        lambda: (s := store_status(agent))["state"] == "ok" and s,
        timeout=40,
    )
    assert not recovered["degraded"] and recovered["buffered"] == 0
    last = recovered["last_outage"]
    assert last["lost"] == 0 and last["written"] == last["buffered"] >= rising["buffered"]
    assert "store: ok" in status_text(agent).replace("last outage", "")
    assert "last outage: since" in status_text(agent)
    resumed_at = recovered["newest_seq"]
    assert resumed_at >= written_before + last["buffered"]
    final = wait_for(
        "results written after the outage",
        lambda: (s := store_status(agent))["durable_seq"] >= resumed_at + 5 and s,
        timeout=30,
    )

    rows = agent.api("results", check="local-ping", limit=100000)
    seqs = sorted(r["seq"] for r in rows)
    assert seqs == list(range(1, seqs[-1] + 1))  # contiguous: before, buffered and after
    assert seqs[-1] >= final["durable_seq"] > resumed_at > written_before
    assert final["lost"] == 0 and final["dropped_records"] == 0
    timestamps = [r["timestamp"] for r in sorted(rows, key=lambda r: r["seq"])]
    assert timestamps == sorted(timestamps)  # written in the order they were taken

    log = agent.log_text()
    assert log.count("writing failed") == 1 and "free space on the filesystem of" in log
    assert log.count("writes recovered") == 1
    assert f"{last['buffered']} results buffered, {last['written']} written, 0 lost" in log
    assert "cannot store a result" not in log


def test_overflow_is_counted_persisted_and_shown_after_a_restart(
    mesh: LocalMesh, agent: AgentProc
) -> None:
    agent.extra_config = CONFIG.replace("[store]", '[store]\nbuffer_bytes = "2KiB"')
    agent.start()
    mesh.wait_up(agent)
    wait_for(
        "results written before the outage",
        lambda: store_status(agent)["durable_seq"] >= 5,
        timeout=30,
    )
    junk = fill_disk(agent.folder / "data")
    overflowing = wait_for("results to be dropped once the buffer is full",
                           lambda: (s := store_status(agent))["lost_disk"] >= 3 and s,
                           timeout=30)  # fmt: skip
    assert overflowing["state"] == "failing" and overflowing["degraded"]
    assert 0 < overflowing["buffered"] < 20 and overflowing["lost"] >= 3
    written = overflowing["newest_seq"]

    agent.stop()  # with the disk still full: the buffer cannot be saved and is lost too
    log = agent.log_text()
    assert log.count("outage buffer is full") == 1
    closing = [line for line in log.splitlines() if "closing while writes still fail" in line]
    assert len(closing) == 1
    total = int(closing[0].split("(total lost ")[1].split(")")[0])
    abandoned = int(closing[0].split("): ")[1].split(" buffered")[0])
    assert total > abandoned > 0

    junk.unlink()
    agent.start()
    mesh.wait_up(agent)
    after = wait_for("results written after the restart",
                     lambda: (s := store_status(agent))["durable_seq"] >= written + abandoned + 3
                     and s, timeout=30)  # fmt: skip
    assert after["state"] == "ok" and not after["degraded"]
    assert after["lost_disk"] == after["lost"] == total  # persisted across the restart
    assert after["last_outage"]["lost"] == total and after["last_outage"]["recovered_at"] is None
    assert "store: ok" in status_text(agent) and f"{total} results lost" in status_text(agent)
    seqs = sorted(r["seq"] for r in agent.api("results", check="local-ping", limit=100000))
    # one gap: the seqs of the abandoned buffer, skipped, never given to another result
    gaps = [(a, b) for a, b in pairwise(seqs) if b != a + 1]
    assert seqs[0] == 1 and len(gaps) == 1 and gaps[0][1] - gaps[0][0] - 1 == abandoned
    assert gaps[0][0] >= written
