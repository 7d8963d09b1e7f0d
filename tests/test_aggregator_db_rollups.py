"""Rollups equal a direct aggregate of the raw rows, late rows included; retention drops days."""

from __future__ import annotations

import math
import time

import psycopg
import pytest
import trio
import trio.testing

from aggregator import partitions
from aggregator.rollups import (
    ROLLUP_LOCK,
    RefreshStats,
    Retention,
    RetentionError,
    RollupConfig,
    Rollups,
    merge_ranges,
)
from aggregator.writer import BUSY_WINDOW, BatchWriter, Ingestor, IngestorConfig
from tests.batches import batch, records, split
from tests.pg import Db

STORE = "0123456789abcdef0123456789abcdef"
DIRECT = """
    SELECT date_bin(%s::interval, time, TIMESTAMPTZ '2000-01-01 00:00+00') AS b, check_name,
           target, agent, count(*), count(*) FILTER (WHERE NOT success), avg(loss),
           min(rtt_ms), avg(rtt_ms), max(rtt_ms),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY rtt_ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY rtt_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY rtt_ms)
    FROM results GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""
STORED = """SELECT bucket, check_name, target, agent, count, failures, loss, rtt_min, rtt_avg,
                   rtt_max, rtt_p50, rtt_p95, rtt_p99 FROM {} ORDER BY 1, 2, 3, 4"""


def _same(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not math.isclose(u, v, rel_tol=1e-12, abs_tol=1e-12):
                    return False
            elif u != v:
                return False
    return True


def _check(db: Db) -> None:
    with db.connect() as conn:
        for table, width in (("results_1m", "1 minute"), ("results_1h", "1 hour")):
            direct = conn.execute(DIRECT, (width,)).fetchall()
            stored = conn.execute(STORED.format(table)).fetchall()  # type: ignore[arg-type]
            assert direct, "there is data to roll up"
            assert _same(direct, stored), table


def test_rollups_equal_the_raw_aggregate_including_late_rows(pg_db: Db) -> None:
    assert pg_db.schema is not None
    w = BatchWriter(pg_db.url, pg_db.schema)
    rollups = Rollups(pg_db.url, pg_db.schema)
    now = time.time()
    for agent in ("a1", "a2", "a3"):
        recs = records(agent, 1, 900, now - 3 * 3600, step=7.0)  # three hours, some failures
        for b in split(agent, STORE, recs[:600], 150):
            w.write(agent, b)
    with rollups.connect() as conn:
        stats = rollups.refresh(conn)
    assert stats.minute_ranges == 3 and stats.minute_rows > 0 and stats.hour_rows > 0
    _check(pg_db)
    # More rows, some in buckets already rolled up (the same minute, continued), an agent
    # catching up on old buckets, and a new agent.
    for agent in ("a1", "a2", "a3"):
        recs = records(agent, 1, 900, now - 3 * 3600, step=7.0)
        w.write(agent, batch(agent, STORE, recs[600:]))
    w.write("a4", batch("a4", STORE, records("a4", 1, 300, now - 5 * 3600, step=30.0)))
    with rollups.connect() as conn:
        rollups.refresh(conn)
        assert rollups.refresh(conn) == RefreshStats(0, 0, 0, 0)  # nothing pending any more
    _check(pg_db)
    with pg_db.connect() as conn:
        failures = conn.execute("SELECT sum(failures), sum(count) FROM results_1h").fetchone()
    assert failures is not None and 0 < failures[0] < failures[1] == 3 * 900 + 300


def test_a_refresh_held_by_another_aggregator_is_left_to_it(pg_db: Db) -> None:
    assert pg_db.schema is not None
    BatchWriter(pg_db.url, pg_db.schema).write("a1", batch("a1", STORE, records(
        "a1", 1, 50, time.time() - 600)))  # fmt: skip
    rollups = Rollups(pg_db.url, pg_db.schema)
    with pg_db.connect() as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ROLLUP_LOCK,))
        with rollups.connect() as conn:
            assert rollups.refresh(conn) == RefreshStats(0, 0, 0, 0)
        other.execute("SELECT pg_advisory_unlock(%s)", (ROLLUP_LOCK,))
    with rollups.connect() as conn:
        assert rollups.refresh(conn).minute_rows > 0  # the pending rows were kept
    _check(pg_db)


def test_retention_drops_old_partitions_and_hours(pg_db: Db) -> None:
    assert pg_db.schema is not None
    now = time.time()
    w = BatchWriter(pg_db.url, pg_db.schema)
    old = records("a1", 1, 40, now - 20 * 86_400, step=86_400 / 4)   # days -20 .. -11
    recent = records("a1", 41, 40, now - 3600, step=30)
    w.write("a1", batch("a1", STORE, old + recent))
    keep_all = Rollups(pg_db.url, pg_db.schema, Retention(None, None, None))
    rollups = Rollups(pg_db.url, pg_db.schema, Retention(raw_days=5, minute_days=15,
                                                         hour_days=16))  # fmt: skip
    with rollups.connect() as conn:
        keep_all.refresh(conn)  # rolled up while a longer retention was configured
        today = partitions.day_of(now)
        assert {today - 20, today - 11, today} <= partitions.existing_days(conn)
        dropped = rollups.maintain(conn, now)
        assert partitions.partition_name("results", today - 20) in dropped
        assert partitions.partition_name("results_1m", today - 20) in dropped
        assert any(d.startswith("results_1h:") for d in dropped)
        kept_days = partitions.existing_days(conn)
        assert min(kept_days) >= partitions.first_kept_day(now, 5)
        assert set(range(today, today + partitions.AHEAD + 1)) <= kept_days
        oldest = conn.execute("SELECT min(time) FROM results").fetchone()
        assert oldest is not None and oldest[0].timestamp() >= now - 6 * 86_400
        count = conn.execute("SELECT count(*) FROM results").fetchone()
        assert count == (40,)
        minute_days = conn.execute("SELECT min(bucket) FROM results_1m").fetchone()
        assert minute_days is not None and minute_days[0].timestamp() >= now - 16 * 86_400
        hours = conn.execute("SELECT min(bucket) FROM results_1h").fetchone()
        assert hours is not None and hours[0].timestamp() >= now - 16 * 86_400 - 3600
        assert rollups.maintain(conn, now) == []


def test_retention_settings_must_nest() -> None:
    with pytest.raises(RetentionError, match="minute_days: 10 days is shorter than raw_days"):
        Retention(raw_days=30, minute_days=10)
    with pytest.raises(RetentionError, match="hour_days: 100 days, but minute_days keeps for ever"):
        Retention(raw_days=None, minute_days=None, hour_days=100)
    with pytest.raises(RetentionError, match=r"raw_days: 0\.5 must be at least 1 day"):
        Retention(raw_days=0.5)


async def test_the_rollup_job_runs_on_its_timer(pg_db: Db) -> None:
    assert pg_db.schema is not None
    BatchWriter(pg_db.url, pg_db.schema).write("a1", batch("a1", STORE, records(
        "a1", 1, 100, time.time() - 900)))  # fmt: skip
    rollups = Rollups(pg_db.url, pg_db.schema,
                      config=RollupConfig(minute_interval=0.1, hour_interval=0.1))

    def rolled() -> bool:
        with pg_db.connect() as conn:
            row = conn.execute("SELECT (SELECT count(*) FROM results_1h), "
                               "(SELECT count(*) FROM rollup_pending_1h)").fetchone()
            return row is not None and row[0] > 0 and row[1] == 0

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(rollups.run)
            while not await trio.to_thread.run_sync(rolled):  # noqa: ASYNC110 - polls the db
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    _check(pg_db)


@pytest.mark.parametrize(("rows", "width", "oldest", "expected"), [
    ([], 60, -math.inf, []),
    ([("a", 61.0, 61.5)], 60, -math.inf, [("a", 60, 120)]),
    ([("a", 59.9, 60.0)], 60, -math.inf, [("a", 0, 120)]),
    ([("a", 0.0, 10.0), ("a", 100.0, 110.0), ("a", 500.0, 501.0)], 60, -math.inf,
     [("a", 0, 120), ("a", 480, 540)]),
    ([("b", 0.0, 10.0), ("a", 30.0, 200.0)], 60, -math.inf, [("a", 0, 240), ("b", 0, 60)]),
    ([("a", 10.0, 4000.0)], 3600, -math.inf, [("a", 0, 7200)]),
    ([("a", 10.0, 4000.0), ("a", 5.0, 5.0)], 3600, 3700.0, [("a", 3600, 7200)]),
    ([("a", 10.0, 20.0)], 60, 3700.0, []),
])  # fmt: skip
def test_merge_ranges(rows: list[tuple[str, float, float]], width: int, oldest: float,
                      expected: list[tuple[str, float, float]]) -> None:  # fmt: skip
    assert merge_ranges(rows, width, oldest) == expected


def test_rollups_of_an_idle_database_do_nothing(pg_db: Db) -> None:
    assert pg_db.schema is not None
    rollups = Rollups(pg_db.url, pg_db.schema)
    with rollups.connect() as conn:
        assert rollups.refresh(conn) == RefreshStats(0, 0, 0, 0)
        assert isinstance(conn, psycopg.Connection)


async def test_rollups_wait_while_ingest_runs_at_its_capacity(pg_db: Db) -> None:
    assert pg_db.schema is not None
    BatchWriter(pg_db.url, pg_db.schema).write("a1", batch("a1", STORE, records(
        "a1", 1, 100, time.time() - 900)))  # fmt: skip
    busy = True
    rollups = Rollups(pg_db.url, pg_db.schema, busy=lambda: busy,
                      config=RollupConfig(minute_interval=0.05, hour_interval=0.05))

    def pending() -> int:
        with pg_db.connect() as conn:
            row = conn.execute("SELECT count(*) FROM rollup_pending").fetchone()
            return int(row[0]) if row else 0

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(rollups.run)
            for _ in range(5):  # several rounds of the loop: the rows stay pending
                await trio.sleep(0.1)
                assert await trio.to_thread.run_sync(pending) == 1
            busy = False
            while await trio.to_thread.run_sync(pending):  # noqa: ASYNC110 - polls the db
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    _check(pg_db)


def test_a_rollup_waits_for_ingest_at_most_defer_max() -> None:
    rollups = Rollups("", None, config=RollupConfig(defer_max=60.0),  # type: ignore[arg-type]
                      busy=lambda: True)  # fmt: skip
    assert rollups._defer("minute", 59.0)
    assert not rollups._defer("minute", 60.0)
    assert not Rollups("", None)._defer("minute", 0.0)  # type: ignore[arg-type]


async def test_ingest_is_busy_while_batches_wait_for_a_writer(
    pg_db: Db, mock_clock: trio.testing.MockClock
) -> None:
    assert pg_db.schema is not None
    ingestor = Ingestor(pg_db.url, pg_db.schema, IngestorConfig(writers=1, queue=8))
    async with trio.open_nursery() as nursery:
        await nursery.start(ingestor.run)
        assert not ingestor.busy()
        async with trio.open_nursery() as agents:
            for name in ("a1", "a2", "a3", "a4"):
                agents.start_soon(ingestor.ingest, name, batch(name, STORE, records(
                    name, 1, 50, time.time() - 600)))  # fmt: skip
        assert ingestor.busy()  # the mock clock stands still: a batch waited just now
        mock_clock.jump(BUSY_WINDOW)
        assert not ingestor.busy()
        nursery.cancel_scope.cancel()
