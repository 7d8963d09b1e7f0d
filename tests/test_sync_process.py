"""A real agent process uploading to the test aggregator: killed with SIGKILL mid-stream and
restarted, it resumes from its store cursor and every record it stored reaches the aggregator
exactly once; ``meshmon status`` shows the sync state."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from meshmon import pki
from meshmon.store import RingStore
from meshmon.sync.build import result_bytes
from tests.harness import LocalMesh, wait_for
from tests.sync_aggregator import TestAggregator, free_port, server_context

T = TypeVar("T")
HOST = 211
"""The agent runs on 127.0.0.211, on a port found free (other suites may run alongside)."""


class ThreadedAggregator:
    """The test aggregator in its own thread and trio run; ``call`` reads its state there."""

    def __init__(self, agg: TestAggregator) -> None:
        self.agg = agg
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.agg.serve)
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the test aggregator did not start"

    def call(self, fn: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def stop(self) -> None:
        self.call(self.agg.stop)
        self._thread.join(10)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(tmp_path, port=free_port(f"127.0.0.{HOST}"))
    yield mesh
    mesh.close()


def test_a_killed_agent_resumes_and_every_record_arrives_exactly_once(local: LocalMesh,
                                                                      tmp_path: Path) -> None:
    agg_dir = tmp_path / "agg"
    pki.issue_cert(local.ca_dir, "agg1", agg_dir, tags=["aggregator"], ips=["127.0.0.1"])
    server = ThreadedAggregator(TestAggregator(server_context(
        agg_dir / pki.NODE_CERT, agg_dir / pki.NODE_KEY, local.ca_dir / pki.CA_CERT)))
    server.start()
    try:
        agent = local.add("s1", HOST, extra_config=f"""
[sync]
url = "{server.agg.url}"
batch_size = 20
max_delay = "200ms"
backoff_min = "50ms"
backoff_max = "200ms"

[[checks]]
name = "svc"
kind = "tcp"
interval = "50ms"
timeout = "40ms"
targets = ["127.0.0.1:1", "127.0.0.1:2"]
replicas = 0
""")  # fmt: skip
        agent.start()
        local.wait_up(agent)

        def high_water() -> int:
            return server.call(lambda: max((s.high_water for s in server.agg.streams.values()),
                                           default=0))  # fmt: skip

        wait_for("the first uploads", lambda: high_water() >= 60, timeout=60)
        agent.kill()  # SIGKILL: no goodbye, the cursor as last saved
        killed_at = high_water()
        agent.start()
        local.wait_up(agent)
        wait_for("uploads after the restart", lambda: high_water() >= killed_at + 60, timeout=60)
        status = wait_for("a successful upload reported",
                          lambda: (s := agent.api("status")["sync"])["last_success"] and s)
        assert status["url"] == server.agg.url and status["aggregator"] == "agg1"
        text = subprocess.run([sys.executable, "-m", "meshmon", "status", "--socket",
                               str(agent.socket)], capture_output=True, text=True, timeout=30)
        assert "sync: " in text.stdout and "(aggregator agg1)" in text.stdout, text.stdout
        assert agent.stop() == 0
        with RingStore(agent.folder / "data" / "store") as store:
            store_id = store.store_id
            stored = {r.seq: r.payload for r in store.read(1, limit=100_000,
                                                           max_bytes=2**30)}  # fmt: skip
            position = store.cursor("aggregator").position
        stream = server.call(lambda: server.agg.streams[("s1", store_id)])
        assert set(server.call(lambda: list(server.agg.streams))) == {("s1", store_id)}
        assert all(n == 1 for n in server.call(lambda: list(stream.inserts.values())))
        received = server.call(lambda: dict(stream.payloads))
        assert sorted(received) == list(range(1, stream.high_water + 1))  # no gap, none twice
        assert all(result_bytes(stored[seq]) == payload for seq, payload in received.items())
        # saved at the graceful stop (a batch cut short by the stop may already be in)
        assert killed_at < position <= stream.high_water + 1 and stream.skipped == 0
    finally:
        server.stop()
