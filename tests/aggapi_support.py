"""Support for the aggregator API tests: a real HTTPS server over a real PostgreSQL (the
database layer's ``pg_db`` fixture: a fresh migrated database per test) and a mesh."""

from __future__ import annotations

import itertools
import os
import re
import signal
import ssl
import subprocess
import sys
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
from tests.harness import wait_for
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


# --- a real `meshmon aggregator run` process -----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("MESHMON_")},
       "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
"""The environment of CLI processes: this checkout first, no stray ``MESHMON_*`` settings."""


class AggregatorProc:
    """``meshmon aggregator run`` on the embedded PostgreSQL in ``folder`` (which the server's
    user must reach: use :func:`tests.pg.scratch_dir`), listening on 127.0.0.1, a free port."""

    def __init__(self, folder: Path, mesh: Mesh, name: str = "agg-1", extra: str = "") -> None:
        node = mesh.node(name, tags=("aggregator",))
        self.folder = folder
        self.config = folder / "aggregator.toml"
        self.config.write_text(
            f'[aggregator]\naddress = "127.0.0.1"\nport = 0\ndata_dir = "{folder / "data"}"\n'
            f'[aggregator.tls]\nca_cert = "{mesh.ca_cert}"\ncert = "{node.cert}"\n'
            f'key = "{node.key}"\ncrl = "{mesh.crl}"\n{extra}')
        self.log = folder / "aggregator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> str:
        """Start and wait until it listens; its URL."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshmon", "aggregator", "run", "-c", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=ENV)

        def listening() -> str | None:
            text = self.log.read_text()
            assert self.proc is not None and self.proc.poll() is None, text
            match = re.search(r"listening on (https://127\.0\.0\.1:\d+)", text)
            return match.group(1) if match else None

        self.url = wait_for("the aggregator to listen", listening, timeout=timeout)
        return self.url

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
