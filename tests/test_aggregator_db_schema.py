"""Migrations on a real PostgreSQL: the contract's tables, once each, safe when concurrent."""

from __future__ import annotations

import threading

import psycopg
import pytest

from aggregator import partitions, schema
from aggregator.schema import SchemaError, SchemaInfo, migrate
from tests.pg import Db

CONTRACT = {
    "schema_migrations": ["version", "name", "applied_at"],
    "streams": ["agent", "store", "high_water", "skipped", "lost_total", "records", "expired",
                "first_sync", "last_sync", "last_sent_at", "last_record_time"],
    "results": ["time", "agent", "store", "seq", "check_name", "target", "kind", "success",
                "rtt_ms", "loss", "error", "payload"],
    "results_1m": ["bucket", "check_name", "target", "agent", "count", "failures", "loss",
                   "rtt_min", "rtt_avg", "rtt_max", "rtt_p50", "rtt_p95", "rtt_p99"],
    "members": ["reporter", "name", "state", "incarnation", "address", "tags", "version",
                "reported_at"],
    "api_tokens": ["id", "name", "hash", "scope", "created_at", "last_used"],
}  # fmt: skip
CONTRACT["results_1h"] = CONTRACT["results_1m"]


def _columns(conn: psycopg.Connection[tuple[object, ...]], table: str) -> list[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                        "table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
    return [str(name) for (name,) in rows]


def test_migrate_creates_the_contract_tables_once(pg_empty: Db) -> None:
    with pg_empty.connect() as conn:
        first = migrate(conn)
        assert first == SchemaInfo(version=schema.latest_version(), timescale=False)
        assert migrate(conn) == first  # idempotent
        for table, columns in CONTRACT.items():
            assert _columns(conn, table) == columns, table
        applied = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
        assert [v for v, _ in applied] == list(range(1, first.version + 1))
        assert applied[1][1] == "0002_results.plain"
        # Partitioned by day, today and the coming days created, BRIN on time.
        days = partitions.existing_days(conn)
        assert set(range(min(days), min(days) + partitions.AHEAD + 1)) <= days
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'results'").fetchone()
        assert kind == ("p",)
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'results'")
        assert any("brin" in str(d) for (d,) in index.fetchall())


def test_concurrent_migrations_apply_each_version_once(pg_empty: Db) -> None:
    results: list[SchemaInfo | BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            with pg_empty.connect() as conn:
                start.wait()
                results.append(migrate(conn))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert all(r == SchemaInfo(schema.latest_version(), False) for r in results), results
    with pg_empty.connect() as conn:
        rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY 1").fetchall()
    assert all(n == 1 for _, n in rows) and len(rows) == schema.latest_version()


def test_timescale_required_but_absent_is_named(pg_empty: Db) -> None:
    with pg_empty.connect() as conn, pytest.raises(SchemaError, match="TimescaleDB was asked "
                                                   "for but the timescaledb extension is not "
                                                   "installed"):  # fmt: skip
        migrate(conn, timescale=True)


def test_a_database_keeps_its_variant(pg_db: Db) -> None:
    with pg_db.connect() as conn, pytest.raises(SchemaError, match="already keeps results on "
                                                "plain PostgreSQL partitions"):  # fmt: skip
        migrate(conn, timescale=True)


def test_a_newer_database_is_refused(pg_db: Db) -> None:
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, '0999_future')")
        with pytest.raises(SchemaError, match="version 999, newer than this aggregator"):
            migrate(conn)


def test_a_failing_migration_leaves_nothing(pg_empty: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = schema.migrations()
    broken = schema.Migration(shipped[-1].version + 1, "9999_broken", None,
                              "CREATE TABLE half_done (x int); SELECT no_such_function();")
    monkeypatch.setattr(schema, "migrations", lambda: [*shipped, broken])
    with pg_empty.connect() as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            migrate(conn)
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        assert broken.version not in versions and max(versions) == shipped[-1].version
        # The lock was released: a later migration (here the same, repaired) can run.
        monkeypatch.setattr(schema, "migrations", lambda: shipped)
        assert migrate(conn).version == shipped[-1].version


def test_schema_info_reads_without_changing(pg_db: Db, pg_empty: Db) -> None:
    with pg_db.connect() as conn:
        assert schema.schema_info(conn) == pg_db.schema
    with pg_empty.connect() as conn, pytest.raises(SchemaError, match="no meshmon schema"):
        schema.schema_info(conn)
