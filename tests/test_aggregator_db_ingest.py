"""The exactly-once COPY path against a real PostgreSQL: retries, overlaps, gaps, concurrency."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from aggregator.errors import IngestRefused
from aggregator.writer import BatchWriter, Ingestor, IngestorConfig
from meshmon import results as r
from meshmon.wire.ingest import Ack, Batch, MemberReport, SyncRecord
from tests.batches import batch, db_digest, digest, records, records_digest, split
from tests.pg import Db

STORE = "0123456789abcdef0123456789abcdef"
OTHER_STORE = "fedcba9876543210fedcba9876543210"


def writer(db: Db, **config: object) -> BatchWriter:
    assert db.schema is not None
    return BatchWriter(db.url, db.schema, IngestorConfig(**config))  # type: ignore[arg-type]


def stream(db: Db, agent: str = "a1", store: str = STORE) -> tuple[object, ...] | None:
    with db.connect() as conn:
        return conn.execute("SELECT high_water, skipped, lost_total, records, expired FROM "
                            "streams WHERE agent = %s AND store = %s",
                            (agent, store)).fetchone()  # fmt: skip


def test_a_batch_is_inserted_once_and_a_retry_inserts_nothing(pg_db: Db) -> None:
    recs = records("a1", 1, 120, time.time() - 600)
    w = writer(pg_db)
    assert w.write("a1", batch("a1", STORE, recs)) == Ack(high_water=120, inserted=120)
    # The acknowledgement was lost: the agent sends the same batch again.
    assert w.write("a1", batch("a1", STORE, recs)) == Ack(high_water=120, inserted=0)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (120, records_digest("a1", STORE, recs))
    assert stream(pg_db) == (120, 0, 0, 120, 0)


def test_derived_columns_match_the_model(pg_db: Db) -> None:
    recs = records("a1", 1, 60, time.time() - 600)
    writer(pg_db).write("a1", batch("a1", STORE, recs))
    with pg_db.connect() as conn:
        rows = {seq: rest for seq, *rest in conn.execute(
            "SELECT seq, extract(epoch FROM time)::float8, check_name, target, kind, success, "
            "rtt_ms, loss, error FROM results")}  # fmt: skip
    for rec in recs:
        result = r.decode_result(rec.payload)
        loss = result.result.loss if isinstance(result.result, r.PingResult) else (
            0.0 if result.is_successful() else 1.0)
        ts, check, target, kind, success, rtt, got_loss, error = rows[rec.seq]
        assert ts == pytest.approx(rec.ts, abs=1e-6)
        assert (check, target, kind, success, rtt, got_loss, error) == (
            rec.check, rec.target, result.kind, result.is_successful(),
            result.response_time_ms(), loss, result.error_message())


def test_overlapping_batches_insert_each_record_once(pg_db: Db) -> None:
    recs = records("a1", 1, 100, time.time() - 600)
    w = writer(pg_db)
    assert w.write("a1", batch("a1", STORE, recs[:60])).inserted == 60
    assert w.write("a1", batch("a1", STORE, recs[39:])) == Ack(high_water=100, inserted=40)
    assert w.write("a1", batch("a1", STORE, recs[10:20])) == Ack(high_water=100, inserted=0)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (100, records_digest("a1", STORE, recs))


def test_an_undeclared_gap_is_refused_with_where_to_resume(pg_db: Db) -> None:
    recs = records("a1", 1, 30, time.time() - 600)
    w = writer(pg_db)
    w.write("a1", batch("a1", STORE, recs[:10]))
    with pytest.raises(IngestRefused) as info:
        w.write("a1", batch("a1", STORE, recs[14:]))  # after=14: claims 11..14 were acked
    assert info.value.status == 409
    assert info.value.extra == {"expected": 11}
    assert "resume from 11" in info.value.message
    with pytest.raises(IngestRefused) as new_stream:
        w.write("a1", batch("a1", OTHER_STORE, records("a1", 5, 3, time.time())))
    assert new_stream.value.extra == {"expected": 1}
    assert stream(pg_db) == (10, 0, 0, 10, 0)
    assert stream(pg_db, store=OTHER_STORE) is None
    with pg_db.connect() as conn:
        assert db_digest(conn)[0] == 10


def test_a_declared_gap_is_accepted_and_counted(pg_db: Db) -> None:
    recs = records("a1", 1, 40, time.time() - 600)
    w = writer(pg_db)
    w.write("a1", batch("a1", STORE, recs[:10]))
    # The agent's ring overwrote 11..14 before they were synced; it says so.
    ack = w.write("a1", batch("a1", STORE, recs[14:20], after=10, lost_total=4))
    assert ack == Ack(high_water=20, inserted=6)
    # Declared from an older acknowledgement: only the part above the mark counts.
    ack = w.write("a1", batch("a1", STORE, recs[24:30], after=15, lost_total=8))
    assert ack == Ack(high_water=30, inserted=6)
    # Nothing left at all: an empty batch declaring the rest overwritten.
    ack = w.write("a1", Batch(agent="a1", store=STORE, after=30, first=41, last=40, records=(),
                              skipped_before=10, lost_total=18))
    assert ack == Ack(high_water=40, inserted=0)
    assert stream(pg_db) == (40, 4 + 4 + 10, 18, 22, 0)


def test_a_batch_for_another_agent_is_refused(pg_db: Db) -> None:
    with pytest.raises(IngestRefused) as info:
        writer(pg_db).write("mallory", batch("a1", STORE, records("a1", 1, 5, time.time())))
    assert info.value.status == 403
    assert "'a1'" in info.value.message and "'mallory'" in info.value.message
    assert stream(pg_db) is None


@pytest.mark.parametrize(("field", "bad"), [("payload", b"\xff\x00garbage"),
                                            ("payload", b"\x83\x02dping\x01"),
                                            ("ts", 1e20), ("ts", float("nan"))])  # fmt: skip
def test_a_bad_record_refuses_the_whole_batch(pg_db: Db, field: str, bad: object) -> None:
    recs = records("a1", 1, 20, time.time() - 600)
    rec = recs[7]
    recs[7] = SyncRecord(rec.seq, bad if field == "ts" else rec.ts, rec.check,  # type: ignore[arg-type]
                         rec.target, bad if field == "payload" else rec.payload)  # type: ignore[arg-type]
    with pytest.raises(IngestRefused) as info:
        writer(pg_db).write("a1", batch("a1", STORE, recs))
    assert info.value.status == 422
    assert info.value.message.startswith(f"records[7].{field}:")
    assert stream(pg_db) is None
    with pg_db.connect() as conn:
        assert db_digest(conn)[0] == 0


def test_a_nul_in_a_name_is_refused_naming_the_record(pg_db: Db) -> None:
    recs = records("a1", 1, 5, time.time() - 600)
    recs[3] = SyncRecord(recs[3].seq, recs[3].ts, "bad\x00check", recs[3].target, recs[3].payload)
    with pytest.raises(IngestRefused) as info:
        writer(pg_db).write("a1", batch("a1", STORE, recs))
    assert (info.value.status, info.value.message) == (422, "records[3].check: contains a NUL "
                                                       "character")  # fmt: skip


def test_members_are_the_reporters_latest_view(pg_db: Db) -> None:
    w = writer(pg_db)
    now = time.time()
    view = (MemberReport("a1", "alive", 3, "127.0.0.1:7946", ("lan",), "0.1.0"),
            MemberReport("a2", "suspect", 1, "127.0.0.2:7946", (), "0.1.0"))
    recs = records("a1", 1, 10, now - 60)
    w.write("a1", batch("a1", STORE, recs[:5], members=view, sent_at=now))
    w.write("a1", batch("a1", STORE, recs[5:], members=view[:1], sent_at=now + 5))
    # A retry of an older batch carries an older view: it does not win.
    w.write("a1", batch("a1", STORE, recs[:5], members=view, sent_at=now))
    with pg_db.connect() as conn:
        rows = conn.execute("SELECT reporter, name, state, incarnation, address, tags, version "
                            "FROM members").fetchall()  # fmt: skip
    assert rows == [("a1", "a1", "alive", 3, "127.0.0.1:7946", ["lan"], "0.1.0")]


def test_old_days_get_partitions_and_expired_records_are_counted(pg_db: Db) -> None:
    now = time.time()
    old = records("a1", 1, 10, now - 12 * 86_400, step=3600)   # 12 days ago, over 10 hours
    recent = records("a1", 11, 10, now - 3600)
    ack = writer(pg_db).write("a1", batch("a1", STORE, old + recent))
    assert ack == Ack(high_water=20, inserted=20)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (20, records_digest("a1", STORE, old + recent))
    old2 = records("a1", 21, 10, now - 12 * 86_400)
    ack = writer(pg_db, raw_retention_days=7).write("a1", batch("a1", STORE, old2))
    assert ack == Ack(high_water=30, inserted=0)
    assert stream(pg_db) == (30, 0, 0, 20, 10)


def test_two_writers_on_one_stream_insert_exactly_once(pg_db: Db) -> None:
    """Two aggregators (writers) receive the same agent's batches, split differently, at the
    same time: every record lands once."""
    recs = records("a1", 1, 3000, time.time() - 3000, step=1.0)
    plans = [list(split("a1", STORE, recs, 70)), list(split("a1", STORE, recs, 110))]
    acks: list[list[Ack]] = [[], []]
    start = threading.Barrier(2)

    def send(i: int) -> None:
        w = writer(pg_db)
        start.wait()
        for b in plans[i]:
            acks[i].append(w.write("a1", b))
        w.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(a.inserted for a in acks[0] + acks[1]) == 3000
    assert acks[0][-1].high_water == acks[1][-1].high_water == 3000
    with pg_db.connect() as conn:
        assert db_digest(conn) == (3000, records_digest("a1", STORE, recs))
    assert stream(pg_db) == (3000, 0, 0, 3000, 0)


async def test_ingestors_in_trio_concurrent_agents_and_duplicates(pg_db: Db) -> None:
    """Two Ingestors (two aggregators) serve five agents at once; each agent sends each batch
    to both (as after a lost acknowledgement): every record once, acks monotonic."""
    assert pg_db.schema is not None
    agents = [f"agent-{i}" for i in range(5)]
    sent = {a: records(a, 1, 400, time.time() - 900, step=1.0) for a in agents}
    ingestors = [Ingestor(pg_db.url, pg_db.schema, IngestorConfig(writers=2, queue=4))
                 for _ in range(2)]  # fmt: skip
    inserted = 0

    async def agent(name: str) -> None:
        nonlocal inserted
        mark = 0

        async def send(ing: Ingestor, b: Batch) -> None:
            nonlocal inserted, mark
            ack = await ing.ingest(name, b)
            inserted += ack.inserted
            assert ack.high_water >= b.last
            mark = max(mark, ack.high_water)

        for b in split(name, STORE, sent[name], 50):
            async with trio.open_nursery() as both:
                for ing in ingestors:
                    both.start_soon(send, ing, b)
        assert mark == 400

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for ing in ingestors:
                await nursery.start(ing.run)
            async with trio.open_nursery() as clients:
                for a in agents:
                    clients.start_soon(agent, a)
            nursery.cancel_scope.cancel()
    assert inserted == 5 * 400
    with pg_db.connect() as conn:
        assert db_digest(conn) == (2000, digest((a, STORE, rec.seq, rec.payload)
                                               for a in agents for rec in sent[a]))


async def test_ingest_refusals_reach_the_caller(pg_db: Db) -> None:
    assert pg_db.schema is not None
    ing = Ingestor(pg_db.url, pg_db.schema)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(ing.run)
            with pytest.raises(IngestRefused) as info:
                await ing.ingest("a1", batch("a1", STORE, records("a1", 3, 2, time.time())))
            assert info.value.status == 409
            nursery.cancel_scope.cancel()


def test_incident_history_lands_in_its_own_table(pg_db: Db) -> None:
    import cbor2

    t0 = time.time() - 60
    recs = list(records("a1", 1, 3, t0))
    event = {"event": "firing", "id": "abcd1234abcd1234", "kind": "target", "rule": "down",
             "check": "ping", "target": "10.0.0.9", "opened_at": t0, "resolved_at": None,
             "probers": ["a1", "a2"], "notifier": "a1"}  # fmt: skip
    recs.append(SyncRecord(4, t0 + 5, "_alerts", "10.0.0.9", cbor2.dumps(event)))
    assert writer(pg_db).write("a1", batch("a1", STORE, recs)) == Ack(high_water=4, inserted=4)
    with pg_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (3,)
        assert conn.execute("SELECT incident_id, event, rule, target, probers FROM incidents"
                            ).fetchall() == [("abcd1234abcd1234", "firing", "down", "10.0.0.9",
                                              ["a1", "a2"])]  # fmt: skip
    bad = SyncRecord(5, t0 + 6, "_alerts", "10.0.0.9", cbor2.dumps({"event": "firing"}))
    with pytest.raises(IngestRefused) as err:
        writer(pg_db).write("a1", batch("a1", STORE, [bad], after=4))
    assert err.value.status == 422 and "records[0].payload" in str(err.value.body())
    assert stream(pg_db)[0] == 4  # nothing written, the mark did not move
