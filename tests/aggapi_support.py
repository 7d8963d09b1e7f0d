"""Support for the aggregator API tests: a real HTTPS server over a real PostgreSQL (the
database layer's ``pg_db`` fixture: a fresh migrated database per test) and a mesh."""

from __future__ import annotations

import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from aggregator import partitions
from aggregator.app import Services, create_app
from aggregator.auth import Authenticator, CrlWatch, create_token
from aggregator.config import QueryConfig
from aggregator.dbpool import Pool
from aggregator.https import serve_https, server_context
from tests.conftest import Mesh, Node
from tests.pg import Db

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


@pytest.fixture
def database(pg_db: Db) -> str:
    """A fresh migrated database (plain PostgreSQL, partitions for the past week too)."""
    import time

    with pg_db.connect() as conn:
        today = partitions.day_of(time.time())
        partitions.create_days(conn, range(today - 8, today + 1))
    return pg_db.url
