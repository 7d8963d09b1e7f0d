"""Version 2 batches (columns) through the exactly-once COPY writer on a real PostgreSQL: the
same guarantees as version 1, and the same rows for the same records."""

from __future__ import annotations

import math
import time

import cbor2
import pytest

from aggregator.errors import IngestRefused
from aggregator.writer import BatchWriter, IngestorConfig
from meshmon import results as r
from meshmon.wire.ingest import Ack, SyncRecord
from tests.batches import batch, columns, db_digest, records, records_digest
from tests.pg import Db

STORE = "0123456789abcdef0123456789abcdef"
COLUMNS = ("extract(epoch FROM time)::float8, check_name, target, kind, success, rtt_ms, loss, "
           "error, payload")  # fmt: skip


def writer(db: Db, **config: object) -> BatchWriter:
    assert db.schema is not None
    return BatchWriter(db.url, db.schema, IngestorConfig(**config))  # type: ignore[arg-type]


def stream(db: Db) -> tuple[object, ...] | None:
    with db.connect() as conn:
        return conn.execute("SELECT high_water, skipped, lost_total, records, expired FROM "
                            "streams WHERE agent = 'a1'").fetchone()  # fmt: skip


def table(db: Db) -> dict[int, tuple[object, ...]]:
    with db.connect() as conn:
        return {seq: tuple(rest) for seq, *rest in conn.execute(
            f"SELECT seq, {COLUMNS} FROM results")}  # fmt: skip


def no_reply(seq: int, ts: float) -> SyncRecord:
    result = r.Ping(agent="a1", check="ping-lan", target="10.0.0.1", family=4, started_at=ts,
                    duration_ms=3.0, result=r.PingResult(0, 3, (), (), None, "10.0.0.1"))
    return SyncRecord(seq, ts, "ping-lan", "10.0.0.1", r.encode_result(result))


def test_a_batch_is_inserted_once_with_the_rows_of_version_1(pg_db: Db) -> None:
    recs = records("a1", 1, 120, time.time() - 600)
    recs[9] = no_reply(10, recs[9].ts)
    w = writer(pg_db)
    assert w.write("a1", columns("a1", STORE, recs)) == Ack(high_water=120, inserted=120)
    assert w.write("a1", columns("a1", STORE, recs)) == Ack(high_water=120, inserted=0)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (120, records_digest("a1", STORE, recs))
    assert stream(pg_db) == (120, 0, 0, 120, 0)
    v2 = table(pg_db)
    assert v2[10][4:7] == (False, None, 1.0)  # no reply: no RTT (NULL), all lost
    with pg_db.connect() as conn:
        conn.execute("TRUNCATE results, streams")
    writer(pg_db).write("a1", batch("a1", STORE, recs))  # the same records in version 1
    assert table(pg_db) == v2


def test_overlapping_batches_and_an_undeclared_gap(pg_db: Db) -> None:
    recs = records("a1", 1, 100, time.time() - 600)
    w = writer(pg_db)
    assert w.write("a1", columns("a1", STORE, recs[:60])).inserted == 60
    assert w.write("a1", columns("a1", STORE, recs[39:])) == Ack(high_water=100, inserted=40)
    assert w.write("a1", batch("a1", STORE, recs[10:20])) == Ack(high_water=100, inserted=0)
    more = records("a1", 101, 20, time.time() - 60)
    with pytest.raises(IngestRefused) as info:
        w.write("a1", columns("a1", STORE, more[5:]))  # after=105: claims 101..105 were acked
    assert info.value.status == 409 and info.value.extra == {"expected": 101}
    assert w.write("a1", columns("a1", STORE, more[5:], after=100, lost_total=5)) == Ack(120, 15)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (115, records_digest("a1", STORE, recs + more[5:]))
    assert stream(pg_db) == (120, 5, 5, 115, 0)


def test_expired_rows_are_counted_and_old_days_get_partitions(pg_db: Db) -> None:
    now = time.time()
    old = records("a1", 1, 10, now - 12 * 86_400, step=3600)
    recent = records("a1", 11, 10, now - 3600)
    assert writer(pg_db).write("a1", columns("a1", STORE, old + recent)) == Ack(20, 20)
    mixed = records("a1", 21, 10, now - 12 * 86_400) + records("a1", 31, 5, now - 60)
    ack = writer(pg_db, raw_retention_days=7).write("a1", columns("a1", STORE, mixed))
    assert ack == Ack(high_water=35, inserted=5)
    with pg_db.connect() as conn:
        assert db_digest(conn) == (25, records_digest("a1", STORE, old + recent + mixed[10:]))
    assert stream(pg_db) == (35, 0, 0, 25, 10)


def test_incident_history_and_unreadable_records(pg_db: Db) -> None:
    t0 = time.time() - 60
    recs = list(records("a1", 1, 3, t0))
    event = {"event": "firing", "id": "abcd1234abcd1234", "kind": "target", "rule": "down",
             "check": "ping", "target": "10.0.0.9", "opened_at": t0, "resolved_at": None,
             "probers": ["a1"], "notifier": "a1"}  # fmt: skip
    recs.append(SyncRecord(4, t0 + 5, "_alerts", "10.0.0.9", cbor2.dumps(event)))
    recs.append(SyncRecord(5, t0 + 6, "ping-lan", "10.0.0.1", b"\xa1not a result"))
    assert writer(pg_db).write("a1", columns("a1", STORE, recs)) == Ack(5, 5)
    rows = table(pg_db)
    assert sorted(rows) == [1, 2, 3, 5]
    kind, success, rtt, loss, error = rows[5][3:8]
    assert (kind, success, rtt, loss) == ("unknown", False, None, None)
    assert isinstance(error, str) and error.startswith("unreadable result: ")
    with pg_db.connect() as conn:
        assert conn.execute("SELECT seq, rule FROM incidents").fetchall() == [(4, "down")]
    bad = SyncRecord(6, t0 + 7, "_alerts", "10.0.0.9", cbor2.dumps({"event": "firing"}))
    with pytest.raises(IngestRefused) as info:
        writer(pg_db).write("a1", columns("a1", STORE, [bad], after=5))
    assert info.value.status == 422 and info.value.message.startswith("records[0].payload:")
    assert stream(pg_db) == (5, 0, 0, 5, 0)


def test_a_batch_for_another_agent_is_refused(pg_db: Db) -> None:
    with pytest.raises(IngestRefused) as info:
        writer(pg_db).write("mallory", columns("a1", STORE, records("a1", 1, 5, time.time())))
    assert info.value.status == 403
    assert stream(pg_db) is None


def test_times_are_the_agents_to_the_microsecond(pg_db: Db) -> None:
    recs = records("a1", 1, 50, 1.7e9 + 0.123456, step=0.37)
    writer(pg_db).write("a1", columns("a1", STORE, recs))
    got = table(pg_db)
    assert all(math.isclose(got[rec.seq][0], rec.ts, abs_tol=1e-6) for rec in recs)
