"""The uploader against a real HTTPS server with mutual TLS on loopback (``sync_aggregator``).

Every test runs a real ring store, the real uploader and a real TLS server holding a real mesh
certificate; waiting is on the server's own state changes (or, for the uploader's state, by
polling it) under a ``fail_after`` deadline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshmon import pki
from meshmon.config import StoreConfig, SyncConfig
from meshmon.results.encoded import ping_result
from meshmon.store import AsyncRingStore, open_store
from meshmon.sync import CURSOR, Uploader
from meshmon.sync.client import aggregator_problem
from tests.conftest import Mesh, Node
from tests.sync_aggregator import TestAggregator, server_context

AGENT = "agent1"
FAST = {"backoff_min": 0.02, "backoff_max": 0.1, "timeout": 10.0}
"""Quick retries, so that the tests wait on events rather than on backoff."""


@pytest.fixture
def nodes(mesh: Mesh) -> dict[str, Node]:
    return {
        "agent": mesh.node(AGENT),
        "agg": mesh.node("agg1", tags=("aggregator",)),
        "plain": mesh.node("plain1"),
    }


def aggregator(mesh: Mesh, node: Node, port: int = 0) -> TestAggregator:
    return TestAggregator(server_context(node.cert, node.key, mesh.ca_cert), port=port)


def sync_config(*urls: str, **overrides: float) -> SyncConfig:
    values = {"batch_size": 10, "max_delay": 3600.0, **FAST, **overrides}
    return SyncConfig(urls=urls, **values)  # type: ignore[arg-type]


async def append(store: AsyncRingStore, n: int, size: int = 0) -> range:
    """``n`` records; ``size`` random (incompressible) payload bytes each, else a small value."""
    now = time.time()
    return await store.append_batch([
        (now, "ping-core", f"t{i % 3}", os.urandom(size) if size else [b"result", False])
        for i in range(n)])  # fmt: skip


async def append_pings(store: AsyncRingStore, n: int, frames: int = 4) -> list[bytes]:
    """``n`` ping results as the agent's ping path appends them (each with its summary), in
    ``frames`` appends; their encoded results, in seq order."""
    now = time.time()
    made = [ping_result(AGENT, "ping-core", f"t{i % 3}", 4, now + i / 1000, 2.0, "127.0.0.1",
                        (0.5,) if i % 4 else (None,)) for i in range(n)]  # fmt: skip
    recs = [(one.started_at, one.check, f"t{i % 3}", *one.stored(False))
            for i, one in enumerate(made)]  # fmt: skip
    step = -(-n // frames)
    for at in range(0, n, step):
        await store.append_batch(recs[at : at + step])
    return [one.data for one in made]


@asynccontextmanager
async def uploading(mesh: Mesh, nodes: dict[str, Node], store: AsyncRingStore,
                    config: SyncConfig) -> AsyncIterator[Uploader]:  # fmt: skip
    identity, trust = mesh.identity(nodes["agent"])
    uploader = Uploader(store, identity, trust, config, lambda: config.all_urls)
    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        yield uploader
        nursery.cancel_scope.cancel()


async def until(up: Uploader, what: Callable[[], object]) -> None:
    """Until the uploader's state satisfies ``what`` (the caller sets a deadline)."""
    while not what():
        await up.wait_changed()


def exactly_once(agg: TestAggregator, store: AsyncRingStore) -> list[int]:
    """The seqs the aggregator holds for this store, each inserted exactly once."""
    stream = agg.stream(AGENT, store.store_id)
    assert all(n == 1 for n in stream.inserts.values()), stream.inserts.most_common(3)
    return sorted(stream.payloads)


async def test_batches_leave_by_size(mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        async with uploading(mesh, nodes, store, sync_config(agg.url, batch_size=100)) as up:
            stream = agg.stream(AGENT, store.store_id)
            with trio.fail_after(30):
                await append(store, 250)
                await agg.wait_for(lambda: stream.high_water >= 200)
                await until(up, lambda: up.status()["cursor"] == 201)
            assert [(b.first, b.last) for b in agg.batches] == [(1, 100), (101, 200)]
            status = up.status()
            assert status["behind"] == 50 and status["state"] == "waiting"  # max_delay is 1 h
            with trio.fail_after(30):
                await append(store, 50)
                await agg.wait_for(lambda: stream.high_water >= 300)
            assert [len(b.records) for b in agg.batches] == [100, 100, 100]
            assert exactly_once(agg, store) == list(range(1, 301))
            assert status["aggregator"] == "agg1" and status["url"] == agg.url
        nursery.cancel_scope.cancel()


async def test_a_few_records_leave_after_max_delay(mesh: Mesh, nodes: dict[str, Node],
                                                   tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        config = sync_config(agg.url, batch_size=10_000, max_delay=0.3)
        async with uploading(mesh, nodes, store, config):
            with trio.fail_after(30):
                await append(store, 5)
                await agg.wait_for(lambda: agg.stream(AGENT, store.store_id).high_water == 5)
            [batch] = agg.batches
            assert (batch.first, batch.last, batch.after) == (1, 5, 0)
            # lazily: not before the oldest record had waited max_delay
            assert batch.sent_at - min(r.ts for r in batch.records) >= 0.3 - 0.01
        nursery.cancel_scope.cancel()


async def test_a_restart_resumes_from_the_cursor(mesh: Mesh, nodes: dict[str, Node],
                                                 tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery:
        await nursery.start(agg.serve)
        async with open_store(tmp_path / "store") as store:
            first_id = store.store_id
            async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
                with trio.fail_after(30):
                    await append(store, 30)
                    await until(up, lambda: up.status()["cursor"] == 31)  # acknowledged
            await append(store, 7)  # stored while the uploader is stopped
        sent_before = len(agg.batches)
        async with open_store(tmp_path / "store") as store:
            assert store.store_id == first_id  # the same stream across restarts
            assert store.cursor(CURSOR).position == 31
            async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
                with trio.fail_after(30):
                    await append(store, 13)
                    await until(up, lambda: up.status()["cursor"] == 51)
                assert up.status()["behind"] == 0
            resumed = agg.batches[sent_before:]
            assert resumed[0].after == 30 and resumed[0].first == 31  # nothing sent again
            assert exactly_once(agg, store) == list(range(1, 51))
            assert sum(len(b.records) for b in agg.batches) == 50
        nursery.cancel_scope.cancel()


async def test_a_wiped_data_dir_is_a_new_stream(mesh: Mesh, nodes: dict[str, Node],
                                                tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery:
        await nursery.start(agg.serve)
        ids = []
        for _ in range(2):
            async with open_store(tmp_path / "store") as store:
                ids.append(store.store_id)
                async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
                    with trio.fail_after(30):
                        await append(store, 10)
                        await until(up, lambda u=up: u.status()["cursor"] == 11)  # type: ignore[misc]
            for path in sorted((tmp_path / "store").rglob("*"), reverse=True):  # wipe it
                path.rmdir() if path.is_dir() else path.unlink()
        assert ids[0] != ids[1]
        assert all(sorted(agg.stream(AGENT, i).payloads) == list(range(1, 11)) for i in ids)
        nursery.cancel_scope.cancel()


async def test_server_down_then_up_everything_arrives_once(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)  # to learn a free port...
        agg.stop()  # ...and go down
        async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
            with trio.fail_after(30):
                await append(store, 40)
                await until(up, lambda: up.failures >= 3)
            status = up.status()
            assert status["cursor"] == 1 and status["behind"] == 40
            assert "cannot connect" in status["last_error"] and status["last_success"] is None
            with trio.fail_after(30):
                await nursery.start(agg.serve)  # back up, same port
                await agg.wait_for(lambda: agg.stream(AGENT, store.store_id).high_water == 40)
                await until(up, lambda: up.status()["cursor"] == 41)
            assert exactly_once(agg, store) == list(range(1, 41))
            status = up.status()
            assert status["failures"] == 0 and status["last_success"] is not None
            assert status["backoff_s"] == 0.0
        nursery.cancel_scope.cancel()


async def test_a_lost_acknowledgement_inserts_nothing_twice(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    agg.drop_after_commit = 2  # commits, then hangs up before answering (twice)
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
            with trio.fail_after(30):
                await append(store, 10)
                await until(up, lambda: up.status()["cursor"] == 11)
            # the same batch went three times: two answers lost, the third acknowledged
            assert [(b.first, b.last) for b in agg.batches] == [(1, 10)] * 3
            assert agg.answers == [200]
            assert exactly_once(agg, store) == list(range(1, 11))
            assert "connection lost" in up.status()["last_error"]
        nursery.cancel_scope.cancel()


async def test_ring_overwrite_while_offline_is_declared_and_shown(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    small = StoreConfig(max_bytes=3 * 4096, segment_bytes=4096)
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store", small) as store:
        await nursery.start(agg.serve)
        agg.stop()
        config = sync_config(agg.url, batch_size=50, max_delay=0.1)
        async with uploading(mesh, nodes, store, config) as up:
            with trio.fail_after(30):
                for _ in range(20):  # days offline, in miniature: the ring wraps several times
                    await append(store, 10, size=200)
                await until(up, lambda: up.failures >= 1)
            stats = store.stats()
            lost = stats.cursors[CURSOR]["lost"]
            assert lost > 0 and stats.oldest_seq == lost + 1  # everything before it is gone
            assert up.status()["lost"] == lost
            with trio.fail_after(30):
                await nursery.start(agg.serve)
                stream = agg.stream(AGENT, store.store_id)
                await until(up, lambda: up.acked == 200)
            held = exactly_once(agg, store)
            assert held == list(range(lost + 1, 201))  # all the ring still had...
            assert stream.skipped == lost and stream.lost_total == lost  # ...and the rest declared
            assert agg.batches[0].after == 0 and agg.batches[0].skipped_before == lost
            status = up.status()
            assert status["lost"] == lost and status["skipped_declared"] == lost
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("server", ["untagged", "other-ca"])
async def test_a_server_that_is_not_an_aggregator_gets_nothing(
        make_mesh: Callable[[str], Mesh], mesh: Mesh, nodes: dict[str, Node], tmp_path: Path,
        server: str) -> None:  # fmt: skip
    if server == "untagged":  # a plain member of the mesh posing as the aggregator
        bad = aggregator(mesh, nodes["plain"])
        reason = "without the tag 'aggregator'"
    else:  # an aggregator certificate, from another CA (it would take our certificate)
        rogue = make_mesh("other").node("agg1", tags=("aggregator",))
        bad = aggregator(mesh, rogue)
        reason = "not issued by this mesh's CA"
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(bad.serve)
        async with uploading(mesh, nodes, store, sync_config(bad.url)) as up:
            with trio.fail_after(30):
                await append(store, 10)
                await until(up, lambda: up.failures >= 2)
            assert bad.connections >= 2 and bad.requests == 0  # refused before any request
            status = up.status()
            assert reason in status["last_error"], status["last_error"]
            assert status["cursor"] == 1 and status["aggregator"] is None
        nursery.cancel_scope.cancel()


async def test_fails_over_to_the_next_url_and_sticks_to_it(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    bad = aggregator(mesh, nodes["plain"])
    good = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(bad.serve)
        await nursery.start(good.serve)
        config = sync_config(bad.url, good.url)
        async with uploading(mesh, nodes, store, config) as up:
            with trio.fail_after(30):
                await append(store, 30)
                await good.wait_for(lambda: good.stream(AGENT, store.store_id).high_water == 30)
            assert up.status()["url"] == good.url
            assert bad.requests == 0 and bad.connections == 1  # tried once, then never again
            assert exactly_once(good, store) == list(range(1, 31))
        nursery.cancel_scope.cancel()


async def test_a_4xx_does_not_advance_the_cursor_and_is_logged_once(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    problem = "records[0].payload: not a meshmon result"
    agg.refuse = [(400, {"error": problem})] * 4
    caplog.set_level(logging.INFO, "meshmon.sync")
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
            with trio.fail_after(30):
                await append(store, 10)
                await agg.wait_for(lambda: len(agg.batches) >= 3)
            assert up.status()["cursor"] == 1 and 200 not in agg.answers
            assert problem in up.status()["last_error"]
            with trio.fail_after(30):
                await agg.wait_for(lambda: agg.stream(AGENT, store.store_id).high_water == 10)
            assert [b.first for b in agg.batches] == [1] * 5
        nursery.cancel_scope.cancel()
    refusals = [r for r in caplog.records if "refused the upload" in r.getMessage()]
    assert len(refusals) == 1 and problem in refusals[0].getMessage()
    assert "HTTP 400" in refusals[0].getMessage()


async def test_the_aggregator_is_authoritative_a_wiped_database_gets_the_ring_again(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
            with trio.fail_after(30):
                await append(store, 30)
                await agg.wait_for(lambda: agg.stream(AGENT, store.store_id).high_water == 30)
            agg.streams.clear()  # the aggregator's database was restored from an empty backup
            with trio.fail_after(30):
                await append(store, 10)
                await until(up, lambda: up.status()["cursor"] == 41)
            assert 409 in agg.answers  # it said what it holds, and the uploader went back
            assert exactly_once(agg, store) == list(range(1, 41))
            assert up.status()["cursor"] == 41
        nursery.cancel_scope.cancel()


async def test_an_aggregator_ahead_of_the_cursor_moves_it_forward(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        await append(store, 25)
        agg.stream(AGENT, store.store_id).high_water = 20  # uploaded before the cursor was saved
        async with uploading(mesh, nodes, store, sync_config(agg.url, max_delay=0.1)) as up:
            with trio.fail_after(30):
                await agg.wait_for(lambda: agg.stream(AGENT, store.store_id).high_water == 25)
                await until(up, lambda: up.status()["cursor"] == 26)
            assert exactly_once(agg, store) == list(range(21, 26))  # 1-20 never twice
        nursery.cancel_scope.cancel()


async def test_a_batch_too_large_for_the_aggregator_is_split(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    agg.refuse = [(413, {"error": "body: larger than the aggregator takes"})]
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        async with uploading(mesh, nodes, store, sync_config(agg.url)) as up:
            with trio.fail_after(30):
                await append(store, 10)
                await until(up, lambda: up.status()["cursor"] == 11)
            assert [(b.first, b.last) for b in agg.batches] == [(1, 10), (1, 5), (6, 10)]
            assert exactly_once(agg, store) == list(range(1, 11))
        nursery.cancel_scope.cancel()


async def test_an_aggregator_revoked_after_start_gets_nothing(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    identity, trust = mesh.identity(nodes["agent"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        config = sync_config(agg.url)
        uploader = Uploader(store, identity, trust, config, lambda: config.all_urls)
        await nursery.start(uploader.run)
        with trio.fail_after(30):
            await append(store, 10)
            await until(uploader, lambda: uploader.status()["cursor"] == 11)
        pki.revoke(mesh.ca_dir, "agg1")  # the CA revokes it; the agent learns the new CRL
        assert trust.update_crl(x509.load_pem_x509_crl(mesh.crl.read_bytes()))
        sent = len(agg.batches)
        with trio.fail_after(30):
            await append(store, 10)
            await until(uploader, lambda: uploader.failures >= 2)
        assert len(agg.batches) == sent  # its open connection was dropped, the next refused
        assert "revoked" in uploader.status()["last_error"]
        assert uploader.status()["cursor"] == 11
        nursery.cancel_scope.cancel()


def test_the_aggregator_check_names_each_problem(mesh: Mesh, nodes: dict[str, Node]) -> None:
    _, trust = mesh.identity(nodes["agent"])
    der = {name: x509.load_pem_x509_certificate(nodes[name].cert.read_bytes()).public_bytes(
        serialization.Encoding.DER) for name in ("agg", "plain")}  # fmt: skip
    assert aggregator_problem(trust, der["agg"]) == (None, "agg1")
    problem, name = aggregator_problem(trust, der["plain"])
    assert name == "plain1" and problem is not None and "without the tag 'aggregator'" in problem
    assert aggregator_problem(trust, None)[0] == "the server presented no certificate"
    pki.revoke(mesh.ca_dir, "agg1")
    trust.update_crl(x509.load_pem_x509_crl(mesh.crl.read_bytes()))
    problem, _ = aggregator_problem(trust, der["agg"])
    assert problem is not None and "revoked" in problem


async def test_stored_frames_travel_as_they_are_and_other_records_as_columns(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        datas = await append_pings(store, 120)
        async with uploading(mesh, nodes, store, sync_config(agg.url, batch_size=50)) as up:
            stream = agg.stream(AGENT, store.store_id)
            with trio.fail_after(30):
                await agg.wait_for(lambda: stream.high_water >= 120)
                await until(up, lambda: up.status()["acked"] >= 120)
            assert agg.versions[3] >= 2 and up.status()["frame_batches"] == agg.versions[3]
            assert [stream.payloads[seq] for seq in range(1, 121)] == datas
            with trio.fail_after(30):
                await append(store, 50)  # results without a summary: columns (version 2)
                await agg.wait_for(lambda: stream.high_water >= 170)
            assert agg.versions[2] >= 1
            assert exactly_once(agg, store) == list(range(1, 171))
        nursery.cancel_scope.cancel()


async def test_an_aggregator_that_does_not_read_frames_gets_columns(
        mesh: Mesh, nodes: dict[str, Node], tmp_path: Path) -> None:  # fmt: skip
    agg = aggregator(mesh, nodes["agg"])
    agg.unknown_versions = {3}
    async with trio.open_nursery() as nursery, open_store(tmp_path / "store") as store:
        await nursery.start(agg.serve)
        datas = await append_pings(store, 100)
        async with uploading(mesh, nodes, store, sync_config(agg.url, batch_size=50)) as up:
            stream = agg.stream(AGENT, store.store_id)
            with trio.fail_after(30):
                await agg.wait_for(lambda: stream.high_water >= 100)
                await until(up, lambda: up.status()["acked"] >= 100)
            assert agg.answers.count(400) == 1 and agg.versions[3] == 0
            assert up.frames_by_url == {agg.url: False} and up.status()["frame_batches"] == 0
            assert [stream.payloads[seq] for seq in range(1, 101)] == datas
            assert exactly_once(agg, store) == list(range(1, 101))
        nursery.cancel_scope.cancel()
