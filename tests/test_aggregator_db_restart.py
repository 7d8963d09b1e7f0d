"""PostgreSQL stopped and killed in the middle of ingest: 503, then success, nothing lost or
duplicated."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import trio

from aggregator.errors import DatabaseUnavailable
from aggregator.postgres import EmbeddedPostgres
from aggregator.schema import migrate
from aggregator.writer import BatchWriter, Ingestor
from meshmon.wire.ingest import Ack, Batch
from tests.batches import db_digest, records, records_digest, split
from tests.harness import wait_for
from tests.pg import FAST, scratch_dir

STORE = "00000000000000000000000000000001"


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A server of the test's own, to stop and kill (durable settings: it must survive)."""
    root = scratch_dir()
    server = EmbeddedPostgres(root / "pg", settings={"max_connections": FAST["max_connections"]})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _active_copy(server: EmbeddedPostgres) -> bool:
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND query LIKE 'COPY results%'").fetchone()  # fmt: skip
            return bool(row and row[0])
    except psycopg.OperationalError:
        return False


def _write_until_done(w: BatchWriter, b: Batch, server: EmbeddedPostgres) -> tuple[Ack, int]:
    """Retry like an agent does (with a deadline): the ack and the number of 503s met."""
    failures = 0
    deadline = time.monotonic() + 60
    while True:
        try:
            return w.write("a1", b), failures
        except DatabaseUnavailable:
            failures += 1
            assert time.monotonic() < deadline, "the database did not come back"
            time.sleep(0.1)


def test_postgres_stopped_and_killed_mid_ingest(own_server: EmbeddedPostgres) -> None:
    with psycopg.connect(own_server.url) as conn:
        schema = migrate(conn)
    recs = records("a1", 1, 20_000, time.time() - 3600, step=0.1)
    small = list(split("a1", STORE, recs[:2000], 500))
    big = Batch("a1", STORE, 2000, 2001, 20_000, tuple(recs[2000:]))
    w = BatchWriter(own_server.url, schema)
    for b in small[:2]:
        assert w.write("a1", b).inserted == 500

    # Stopped between batches: the next one gets DatabaseUnavailable, then goes through.
    own_server.stop()
    with pytest.raises(DatabaseUnavailable, match="database unavailable"):
        w.write("a1", small[2])
    own_server.start()
    assert w.write("a1", small[2]).inserted == 500
    assert w.write("a1", small[3]).inserted == 500

    # Killed (-9) in the middle of a COPY: another session holds the day partitions locked, so
    # the COPY has started and waits at its first row when the server dies.
    blocker = psycopg.connect(own_server.url)
    blocker.execute("LOCK TABLE " + ", ".join(
        name for (name,) in blocker.execute("SELECT inhrelid::regclass::text FROM pg_inherits "
                                            "WHERE inhparent = 'results'::regclass")))
    box: dict[str, tuple[Ack, int]] = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", _write_until_done(
        w, big, own_server)))
    worker.start()
    wait_for("the COPY to wait for its partition", lambda: _active_copy(own_server), timeout=30)
    own_server.kill()
    blocker.close()
    own_server.start()  # crash recovery from the WAL
    worker.join(90)
    ack, failures = box["r"]
    assert ack == Ack(high_water=20_000, inserted=18_000)
    assert failures >= 1
    with psycopg.connect(own_server.url) as conn:
        assert db_digest(conn) == (20_000, records_digest("a1", STORE, recs))
        row = conn.execute("SELECT high_water, records FROM streams").fetchone()
    assert row == (20_000, 20_000)


async def test_ingestor_answers_503_while_down_and_recovers(own_server: EmbeddedPostgres) -> None:
    with psycopg.connect(own_server.url) as conn:
        schema = migrate(conn)
    recs = records("a1", 1, 600, time.time() - 600)
    batches = list(split("a1", STORE, recs, 100))
    ing = Ingestor(own_server.url, schema)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(ing.run)
            assert (await ing.ingest("a1", batches[0])).inserted == 100
            await trio.to_thread.run_sync(own_server.stop)
            for b in batches[1:3]:
                with pytest.raises(DatabaseUnavailable):
                    await ing.ingest("a1", b)
            await trio.to_thread.run_sync(own_server.start)
            total = 100
            for b in batches[1:]:
                total += (await ing.ingest("a1", b)).inserted
            nursery.cancel_scope.cancel()
    assert total == 600
    with psycopg.connect(own_server.url) as conn:
        assert db_digest(conn) == (600, records_digest("a1", STORE, recs))
