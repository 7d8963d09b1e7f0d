"""Versioned schema migrations, applied at start, on plain PostgreSQL or TimescaleDB.

Theory of operation
-------------------
``aggregator/migrations/`` holds numbered SQL files: ``0001_core.sql`` applies everywhere,
``NNNN_name.plain.sql`` / ``NNNN_name.timescale.sql`` are the two variants of one version.
:func:`migrate` applies, in order, each version the database has not recorded in
``schema_migrations``, each in its own transaction together with its row there, so a version is
applied once or not at all. A session-level advisory lock serialises aggregators that start
together on one database: the second waits, then finds nothing left to do.

The storage variant is chosen once, when the first variant migration runs: TimescaleDB when
its extension can be created (installed *and* in ``shared_preload_libraries``), plain
PostgreSQL otherwise, or as forced by ``timescale=``. It is recorded in the migration's name,
so later starts follow the same variant whatever is installed by then.

After the migrations, on plain PostgreSQL, the day partitions around today exist
(:mod:`aggregator.partitions`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from aggregator import partitions

log = logging.getLogger(__name__)

MIGRATE_LOCK = 0x6D657368_6D6F6E01
"""Advisory lock key held while migrating ("meshmon" + 1)."""
PLAIN = "plain"
TIMESCALE = "timescale"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(plain|timescale))?\.sql$")


class SchemaError(RuntimeError):
    """The database cannot be brought to this aggregator's schema; the message says why."""


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """What :func:`migrate` left: the schema version and the storage variant."""

    version: int
    timescale: bool


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    variant: str | None
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped, sorted by version then variant."""
    found = []
    for entry in resources.files("aggregator.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name.removesuffix(".sql"),
                               match.group(3), entry.read_text(encoding="utf-8")))  # fmt: skip
    return sorted(found, key=lambda m: (m.version, m.variant or ""))


def latest_version() -> int:
    return max(m.version for m in migrations())


def migrate(conn: psycopg.Connection[Any], *, timescale: bool | None = None) -> SchemaInfo:
    """Bring the database to the latest schema.

    Args:
        conn: A connection (its autocommit mode is set on for the duration).
        timescale: ``None`` uses TimescaleDB when it can be created; ``True`` requires it;
            ``False`` keeps plain PostgreSQL partitions.

    Raises:
        SchemaError: the database is newer than this aggregator, or the variant asked for
            is not the one it already has, or TimescaleDB was required and is not usable.
    """
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        started = time.monotonic()
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        waited = time.monotonic() - started
        if waited > 1:
            log.info("waited %.1f s for another aggregator's migration", waited)
        try:
            return _migrate_locked(conn, timescale)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
    finally:
        conn.autocommit = was_autocommit


def schema_info(conn: psycopg.Connection[Any]) -> SchemaInfo:
    """The version and variant of an already migrated database (without changing it)."""
    applied = _applied(conn)
    if not applied:
        raise SchemaError("the database has no meshmon schema yet; start the aggregator once "
                          "(it migrates at start)")  # fmt: skip
    return SchemaInfo(max(applied), _recorded_variant(applied.values()) == TIMESCALE)


def _migrate_locked(conn: psycopg.Connection[Any], timescale: bool | None) -> SchemaInfo:
    conn.execute("""
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer     PRIMARY KEY,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )""")  # fmt: skip
    applied = _applied(conn)
    shipped = migrations()
    newest = max(m.version for m in shipped)
    if applied and max(applied) > newest:
        raise SchemaError(f"the database schema is version {max(applied)}, newer than this "
                          f"aggregator knows ({newest}); upgrade meshmon")  # fmt: skip
    variant = _recorded_variant(applied.values())
    if variant is not None and timescale is not None and (variant == TIMESCALE) != timescale:
        raise SchemaError(f"the database already keeps results on {_label(variant)}; it is not "
                          f"converted to {_label(TIMESCALE if timescale else PLAIN)}")
    for migration in shipped:
        if migration.version in applied:
            continue
        if migration.variant is not None:
            if variant is None:
                variant = _choose_variant(conn, timescale)
            if migration.variant != variant:
                continue
        log.info("applying schema migration %s", migration.name)
        with conn.transaction():
            conn.execute(migration.sql.encode())  # a file we ship; no parameters
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))  # fmt: skip
        applied[migration.version] = migration.name
    info = SchemaInfo(max(applied), variant == TIMESCALE)
    if not info.timescale:
        partitions.ensure_around(conn, time.time())
    return info


def _applied(conn: psycopg.Connection[Any]) -> dict[int, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    return {int(v): str(n) for v, n in rows}


def _recorded_variant(names: Iterable[str]) -> str | None:
    for name in names:
        for variant in (PLAIN, TIMESCALE):
            if str(name).endswith("." + variant):
                return variant
    return None


def _choose_variant(conn: psycopg.Connection[Any], timescale: bool | None) -> str:
    if timescale is False:
        return PLAIN
    problem = timescale_problem(conn)
    if problem is None:
        log.info("TimescaleDB is available: results go to a hypertable")
        return TIMESCALE
    if timescale:
        raise SchemaError(f"TimescaleDB was asked for but {problem}")
    log.info("results go to plain PostgreSQL day partitions (%s)", problem)
    return PLAIN


def timescale_problem(conn: psycopg.Connection[Any]) -> str | None:
    """Why TimescaleDB cannot be used on this server, or None when it can."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'), "
        "current_setting('shared_preload_libraries')").fetchone()  # fmt: skip
    if row is None or not row[0]:
        return "the timescaledb extension is not installed on the server"
    if "timescaledb" not in str(row[1]):
        return ("the timescaledb extension is installed but not loaded: add it to "
                "shared_preload_libraries and restart PostgreSQL")
    return None


def _label(variant: str) -> str:
    return "TimescaleDB" if variant == TIMESCALE else "plain PostgreSQL partitions"
