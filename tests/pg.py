"""A real PostgreSQL for the tests: one embedded server per session, a fresh database per test.

The server is :class:`aggregator.postgres.EmbeddedPostgres` itself (the aggregator's embedded
default), with durability settings off for speed. Each test gets its own database: empty
(``pg_empty``) or already migrated (``pg_db``, copied from a migrated template, which is much
faster than migrating each time).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from aggregator.postgres import EmbeddedPostgres
from aggregator.schema import SchemaInfo, migrate

FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "max_connections": "200"}  # fmt: skip
"""Durability off: the tests crash the server on purpose only in servers of their own."""
TEMPLATE = "meshmon_template"
_counter = itertools.count()


def scratch_dir(prefix: str = "meshmon-pg-") -> Path:
    """A temporary folder the server's user can reach (under /tmp, searchable by others)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@dataclass(frozen=True)
class Db:
    """One test database."""

    server: EmbeddedPostgres
    name: str
    url: str
    schema: SchemaInfo | None

    def connect(self, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url, autocommit=True, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL server, with a migrated template database."""
    root = scratch_dir()
    server = EmbeddedPostgres(root / "pg", settings=FAST)
    server.start()
    try:
        with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        with psycopg.connect(server.url_for(TEMPLATE)) as conn:
            migrate(conn, timescale=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _create(server: EmbeddedPostgres, template: str) -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return name


def _drop(server: EmbeddedPostgres, name: str) -> None:
    if not server.running:
        return
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def pg_empty(pg_server: EmbeddedPostgres) -> Iterator[Db]:
    """A fresh, empty database."""
    name = _create(pg_server, "template0")
    yield Db(pg_server, name, pg_server.url_for(name), None)
    _drop(pg_server, name)


@pytest.fixture
def pg_db(pg_server: EmbeddedPostgres) -> Iterator[Db]:
    """A fresh database with the aggregator's schema (plain PostgreSQL variant)."""
    name = _create(pg_server, TEMPLATE)
    with psycopg.connect(pg_server.url_for(name)) as conn:
        schema = migrate(conn)  # the template's partitions may be from another day
    yield Db(pg_server, name, pg_server.url_for(name), schema)
    _drop(pg_server, name)
