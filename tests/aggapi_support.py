"""Support for the aggregator API tests: a real PostgreSQL, a real HTTPS server, a mesh.

TEMPORARY (until the database layer is merged): the server is started with pg_ctl and the
contract tables are created from :data:`CONTRACT_DDL`; both are to be replaced by
``aggregator.postgres.EmbeddedPostgres`` and ``aggregator.schema.migrate``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from aggregator.app import Services, create_app
from aggregator.auth import Authenticator, CrlWatch, create_token
from aggregator.config import QueryConfig
from aggregator.dbpool import Pool
from aggregator.https import serve_https, server_context
from tests.conftest import Mesh, Node

PG_BIN = Path("/usr/lib/postgresql/15/bin")

CONTRACT_DDL = """
CREATE TABLE streams (agent text, store text, high_water bigint, skipped bigint,
  lost_total bigint, records bigint, first_sync timestamptz, last_sync timestamptz,
  last_sent_at timestamptz, last_record_time timestamptz, PRIMARY KEY (agent, store));
CREATE TABLE results (time timestamptz NOT NULL, agent text NOT NULL, store text NOT NULL,
  seq bigint NOT NULL, check_name text NOT NULL, target text NOT NULL, kind text NOT NULL,
  success boolean NOT NULL, rtt_ms double precision, loss double precision, error text,
  payload bytea NOT NULL);
CREATE TABLE results_1m (bucket timestamptz, check_name text, target text, agent text,
  count bigint, failures bigint, loss double precision, rtt_min double precision,
  rtt_avg double precision, rtt_max double precision, rtt_p50 double precision,
  rtt_p95 double precision, rtt_p99 double precision);
CREATE TABLE results_1h (LIKE results_1m);
CREATE TABLE members (reporter text, name text, state text, incarnation bigint, address text,
  tags text[], version text, reported_at timestamptz, PRIMARY KEY (reporter, name));
CREATE TABLE api_tokens (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, hash text NOT NULL,
  scope text NOT NULL CHECK (scope IN ('read', 'admin')), created_at timestamptz,
  last_used timestamptz);
CREATE TABLE agent_certs (agent text PRIMARY KEY, tags text[] NOT NULL, serial text NOT NULL,
  fingerprint text NOT NULL, not_after timestamptz NOT NULL, first_seen timestamptz NOT NULL,
  last_seen timestamptz NOT NULL);
"""


class Postgres:
    """A throwaway PostgreSQL server (run as the postgres user when we are root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.port = 0
        self._counter = itertools.count(1)

    def _run(self, *args: str) -> None:
        user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        subprocess.run(list(args), check=True, capture_output=True, cwd=self.root,
                       user=user.pw_uid if user else None, group=user.pw_gid if user else None)

    def start(self) -> None:
        import socket

        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run(str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                  "--auth=trust", "--no-locale", "-E", "UTF8")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-w", "-l",
                  str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def fresh_database(self) -> str:
        """A new database with the contract tables; its conninfo."""
        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = self.url(name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(CONTRACT_DDL)
        return url


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="aggapi-pg-", dir="/tmp"))
    pg = Postgres(root)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres: Postgres) -> str:
    """A fresh database with the aggregator's tables; its conninfo."""
    return postgres.fresh_database()


# --- a served aggregator ------------------------------------------------------------------------



_servers = itertools.count(1)


@dataclass
class Served:
    """An aggregator app on real HTTPS on loopback, over a real database."""

    url: str
    mesh: Mesh
    database: str
    services: Services

    def tls(self, node: Node | None = None, ca: Path | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the mesh CA, presenting ``node``'s certificate."""
        ctx = ssl.create_default_context(cafile=str(ca or self.mesh.ca_cert))
        ctx.check_hostname = False
        if node is not None:
            ctx.load_cert_chain(node.cert, node.key)
        return ctx

    def client(self, node: Node | None = None, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, verify=self.tls(node), headers=headers,
                                 timeout=20)

    def token(self, name: str, scope: str = "read") -> str:
        with psycopg.connect(self.database, autocommit=True) as conn:
            return create_token(conn, name, scope)[0]

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


async def serve(nursery: trio.Nursery, mesh: Mesh, database: str, *, ingestor: object = None,
                token_ttl: float = 5.0, query: QueryConfig | None = None,
                tags: tuple[str, ...] = ("aggregator",)) -> Served:
    """Start the API on 127.0.0.1 (a free port) with a fresh server certificate."""
    node = mesh.node(f"server-{next(_servers)}", tags=tags)
    identity, trust = mesh.identity(node)
    pool = Pool(database, 2)
    auth = Authenticator(pool, CrlWatch(trust, mesh.crl, interval=0.0), token_ttl=token_ttl)
    services = Services(pool=pool, auth=auth, ingestor=ingestor,  # type: ignore[arg-type]
                        query=query or QueryConfig())
    app = create_app(services)
    bound = await nursery.start(serve_https, app, server_context(identity, trust), "127.0.0.1", 0)
    return Served(f"https://127.0.0.1:{bound[0][1]}", mesh, database, services)
