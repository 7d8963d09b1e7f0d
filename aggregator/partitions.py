"""Day partitions of ``results`` and ``results_1m`` on plain PostgreSQL.

Theory of operation
-------------------
Both tables are ``PARTITION BY RANGE`` on their time column, one partition per UTC day, named
``results_p20261122`` and ``results_1m_p20261122``; a day's two partitions are created together.
The aggregator creates them ahead of time (today and the next :data:`AHEAD` days, at start and
by the maintenance job), and the writer creates the partition of any other day a batch needs
(an agent catching up after days offline) before its COPY. Retention drops whole partitions,
which costs nothing whatever their size, unlike ``DELETE``.

Creating a partition locks its parent briefly; two aggregators creating the same day race
harmlessly (the loser finds it there). ``lock_timeout`` bounds the wait behind a long query, so
ingest reports the database busy rather than stalling.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import errors, sql

log = logging.getLogger(__name__)

DAY = 86_400
AHEAD = 2
"""Days of partitions created beyond today."""
TABLES = ("results", "results_1m")
LOCK_TIMEOUT = "5s"
MAX_ON_DEMAND = 62
"""Most day partitions one batch may have created (a wrong clock must not create thousands)."""
_NAME = re.compile(r"^results_p(\d{8})$")
_EPOCH = dt.date(1970, 1, 1)


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of a Unix time."""
    return int(ts // DAY)


def first_kept_day(now: float, retention_days: float) -> int:
    """The oldest day retention keeps: partitions of earlier days are dropped, records of
    earlier days are not stored."""
    return day_of(now - retention_days * DAY)


def day_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day)


def partition_name(table: str, day: int) -> str:
    return f"{table}_p{day_date(day):%Y%m%d}"


def existing_days(conn: psycopg.Connection[Any]) -> set[int]:
    """Days that have a ``results`` partition."""
    rows = conn.execute("""
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'results'::regclass""").fetchall()  # fmt: skip
    days = set()
    for (name,) in rows:
        match = _NAME.match(name)
        if match:
            date = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
            days.add((date - _EPOCH).days)
    return days


def create_days(conn: psycopg.Connection[Any], days: Iterable[int]) -> list[int]:
    """Create the partitions of ``days`` that are missing; the days created.

    Runs its own short transactions: call it outside a transaction (autocommit or idle).
    """
    created = []
    for day in sorted(set(days)):
        lo = dt.datetime.combine(day_date(day), dt.time(), dt.UTC)
        hi = lo + dt.timedelta(days=1)
        made = False
        for table in TABLES:
            name = partition_name(table, day)
            stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} "
                           "FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name), sql.Identifier(table), sql.Literal(lo), sql.Literal(hi))
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(LOCK_TIMEOUT)))
                    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                          (name,)).fetchone()  # fmt: skip
                    if exists and exists[0]:
                        continue
                    conn.execute(stmt)
                    made = True
            except (errors.DuplicateTable, errors.UniqueViolation):
                continue  # another aggregator created it at the same moment
        if made:
            log.info("created the partitions of %s", day_date(day))
            created.append(day)
    return created


def ensure_around(conn: psycopg.Connection[Any], now: float) -> list[int]:
    """Partitions for today and the next :data:`AHEAD` days."""
    today = day_of(now)
    return create_days(conn, range(today, today + AHEAD + 1))


def drop_before(conn: psycopg.Connection[Any], table: str, first_kept: int) -> list[str]:
    """Drop the day partitions of ``table`` older than day ``first_kept``; their names."""
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    rows = conn.execute("""
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = %s::regclass""", (table,)).fetchall()  # fmt: skip
    dropped = []
    for (name,) in sorted(rows):
        match = pattern.match(name)
        if match is None:
            continue
        date = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
        if (date - _EPOCH).days >= first_kept:
            continue
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        log.info("retention: dropped %s", name)
        dropped.append(name)
    return dropped
