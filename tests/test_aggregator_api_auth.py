"""The aggregator API's authentication, over real HTTPS on loopback and a real PostgreSQL:
tokens and their scopes, mesh client certificates (valid, revoked, from another CA), ingest's
certificate requirement, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import httpx
import pytest
import trio

from aggregator.writer import Ingestor
from meshmon import pki
from meshmon.wire import ingest as wire
from tests.aggapi_support import Served, database, serve  # noqa: F401
from tests.conftest import Mesh
from tests.pg import Db


@pytest.fixture
async def served(nursery: trio.Nursery, mesh: Mesh, database: str) -> Served:  # noqa: F811
    return await serve(nursery, mesh, database, token_ttl=60.0)


@pytest.fixture
async def ingesting(nursery: trio.Nursery, mesh: Mesh, pg_db: Db,
                    database: str) -> Served:  # noqa: F811
    """The API with ingest enabled (the ingestor decodes the bodies)."""
    assert pg_db.schema is not None
    ingestor = Ingestor(database, pg_db.schema)
    await nursery.start(ingestor.run)
    return await serve(nursery, mesh, database, ingestor=ingestor)


async def test_no_credentials_get_401_saying_how_to_get_a_token(served: Served) -> None:
    async with served.client() as client:
        for path in ("/v1/agents", "/v1/members", "/v1/results", "/v1/uptime",
                     "/v1/matrix?tag=x", "/v1/whoami", "/v1/tokens"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert "meshmon aggregator token create" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"


async def test_read_token_reads_but_cannot_manage_tokens(served: Served) -> None:
    token = served.token("grafana", "read")
    async with served.client(token=token) as client:
        response = await client.get("/v1/whoami")
        assert response.status_code == 200
        assert response.json() == {"kind": "token", "name": "grafana", "scope": "read",
                                   "certificate": None}
        assert (await client.get("/v1/agents")).json() == []
        for method, path in (("GET", "/v1/tokens"), ("POST", "/v1/tokens"),
                             ("DELETE", "/v1/tokens/grafana")):
            response = await client.request(method, path, json={"name": "x"})
            assert response.status_code == 403, (method, path)
            assert "needs admin" in response.json()["error"]
    assert [r[0] for r in served.sql("SELECT name FROM api_tokens")] == ["grafana"]


async def test_admin_token_manages_tokens_and_a_revoked_token_is_refused(served: Served) -> None:
    admin = served.token("ops", "admin")
    async with served.client(token=admin) as client:
        created = await client.post("/v1/tokens", json={"name": "dash", "scope": "read"})
        assert created.status_code == 201
        secret = created.json()["token"]
        assert secret.startswith("mmt_")
        listed = (await client.get("/v1/tokens")).json()
        assert [(t["name"], t["scope"]) for t in listed] == [("ops", "admin"), ("dash", "read")]
        assert all("token" not in t and "hash" not in t for t in listed)
        # only the hash is stored
        stored = served.sql("SELECT hash FROM api_tokens WHERE name = 'dash'")[0][0]
        assert secret not in str(stored) and len(str(stored)) == 64
        duplicate = await client.post("/v1/tokens", json={"name": "dash"})
        assert duplicate.status_code == 400 and "dash" in duplicate.json()["error"]
        bad = await client.post("/v1/tokens", json={"name": "no spaces"})
        assert bad.status_code == 400 and "token name" in bad.json()["error"]
        async with served.client(token=secret) as reader:
            assert (await reader.get("/v1/whoami")).status_code == 200  # cached from now on
            assert (await client.delete("/v1/tokens/dash")).status_code == 204
            refused = await reader.get("/v1/whoami")
            assert refused.status_code == 401
            assert "revoked" in refused.json()["error"]
        assert (await client.delete("/v1/tokens/dash")).status_code == 404


async def test_token_revoked_in_the_database_stops_working_after_the_cache_time(
    nursery: trio.Nursery, mesh: Mesh, database: str  # noqa: F811
) -> None:
    served = await serve(nursery, mesh, database, token_ttl=0.0)
    token = served.token("cron", "read")
    async with served.client(token=token) as client:
        assert (await client.get("/v1/agents")).status_code == 200
        served.sql("DELETE FROM api_tokens WHERE name = 'cron'")  # what `token revoke` does
        assert (await client.get("/v1/agents")).status_code == 401


async def test_malformed_and_forged_tokens_are_refused(served: Served) -> None:
    real = served.token("real", "admin")
    token_id = real.split("_")[1]
    forged = f"mmt_{token_id}_{'A' * 43}"
    for header in (f"Bearer {forged}", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer",
                   f"Bearer mmt_999_{'A' * 43}"):
        async with httpx.AsyncClient(base_url=served.url, verify=served.tls(),
                                     headers={"Authorization": header}) as client:
            response = await client.get("/v1/agents")
            assert response.status_code == 401, header
            assert response.json()["error"]


async def test_mesh_client_certificate_reads(served: Served) -> None:
    agent = served.mesh.node("edge-1", tags=("edge",))
    async with served.client(node=agent) as client:
        response = await client.get("/v1/whoami")
        assert response.status_code == 200
        assert response.json() == {"kind": "certificate", "name": "edge-1", "scope": "read",
                                   "certificate": "edge-1"}
        assert (await client.get("/v1/members")).status_code == 200
        assert (await client.get("/v1/tokens")).status_code == 403  # read scope only


async def test_revoked_client_certificate_is_refused_once_the_crl_changes(
    served: Served,
) -> None:
    agent = served.mesh.node("edge-2")
    admin = served.token("ops", "admin")
    async with served.client(node=agent) as client:
        assert (await client.get("/v1/whoami")).status_code == 200
        pki.revoke(served.mesh.ca_dir, "edge-2")
        # the same keep-alive connection: the CRL file is re-read, the certificate refused
        response = await client.get("/v1/whoami")
        assert response.status_code == 403
        assert "revoked" in response.json()["error"]
    # a revoked certificate is refused even beside a valid admin token
    async with served.client(node=agent, token=admin) as client:
        response = await client.get("/v1/agents")
        assert response.status_code == 403
        body = wire.encode_batch(_batch("edge-2"))[0]
        response = await client.post(wire.PATH, content=body)
        assert response.status_code == 403 and "revoked" in response.json()["error"]


async def test_certificate_from_another_ca_is_refused(
    served: Served, make_mesh: Callable[[str], Mesh]
) -> None:
    other = make_mesh("other")
    intruder = other.node("edge-1")
    ctx = served.tls(ca=served.mesh.ca_cert)
    ctx.load_cert_chain(intruder.cert, intruder.key)
    async with httpx.AsyncClient(base_url=served.url, verify=ctx) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/v1/whoami")
        with pytest.raises(httpx.TransportError):
            await client.post(wire.PATH, content=wire.encode_batch(_batch("edge-1"))[0])
    assert served.sql("SELECT count(*) FROM results") == [(0,)]


def _batch(agent: str, n: int = 2) -> wire.Batch:
    records = tuple(wire.SyncRecord(i, 1.7e9 + i, "ping", "10.0.0.1", b"\x80")
                    for i in range(1, n + 1))
    return wire.Batch(agent=agent, store="0" * 32, after=0, first=1, last=n, records=records)


async def test_ingest_needs_a_client_certificate(served: Served) -> None:
    body = wire.encode_batch(_batch("edge-1"))[0]
    async with served.client() as client:
        response = await client.post(wire.PATH, content=body)
        assert response.status_code == 401
        assert "client certificate" in response.json()["error"]
    token = served.token("ops", "admin")
    async with served.client(token=token) as client:
        response = await client.post(wire.PATH, content=body)
        assert response.status_code == 403
        assert "bearer token cannot upload" in response.json()["error"]
    assert served.sql("SELECT count(*) FROM results") == [(0,)]


@pytest.mark.parametrize(("body", "encoding", "problem"), [
    (b"\xff\x00garbage", None, "body: not CBOR"),
    (cbor2.dumps([]), None, "body: expected a CBOR map"),
    (cbor2.dumps({"v": 4}), None, "v: protocol version 4, this aggregator speaks 1, 2 and 3"),
    (cbor2.dumps({"v": 2}), None, "agent: missing"),
    (cbor2.dumps({"v": 1, "agent": "edge-1"}), None, "records: missing"),
    (b"not deflate", "deflate", "body: not valid deflate data"),
    (b"\x80", "br", "Content-Encoding: 'br' is not supported"),
])  # fmt: skip
async def test_malformed_body_is_400_naming_the_problem_and_nothing_is_written(
    ingesting: Served, body: bytes, encoding: str | None, problem: str
) -> None:
    served = ingesting
    agent = served.mesh.node("edge-1")
    headers = {"Content-Encoding": encoding} if encoding else {}
    async with served.client(node=agent) as client:
        response = await client.post(wire.PATH, content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"].startswith(problem)
    assert served.sql("SELECT count(*) FROM results") == [(0,)]
    assert served.sql("SELECT count(*) FROM streams") == [(0,)]


async def test_batch_naming_another_agent_is_refused(ingesting: Served) -> None:
    served = ingesting
    agent = served.mesh.node("edge-1")
    async with served.client(node=agent) as client:
        response = await client.post(wire.PATH, content=wire.encode_batch(_batch("edge-9"))[0])
    assert response.status_code == 403
    assert "edge-9" in response.json()["error"] and "edge-1" in response.json()["error"]
    assert served.sql("SELECT count(*) FROM results") == [(0,)]


async def test_openapi_lists_every_route_and_needs_no_credentials(served: Served) -> None:
    from fastapi.routing import APIRoute

    app = None
    async with served.client() as client:
        doc = (await client.get("/openapi.json")).json()
        assert (await client.get("/docs")).status_code == 200
        health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    from aggregator.app import create_app

    app = create_app(served.services)
    routes = {(r.path, m.lower()) for r in app.routes if isinstance(r, APIRoute)
              for m in r.methods}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
    assert {"/v1/ingest", "/v1/agents", "/v1/members", "/v1/results", "/v1/matrix",
            "/v1/uptime", "/v1/incidents", "/v1/tokens", "/healthz"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_database_down_answers_503(nursery: trio.Nursery, mesh: Mesh) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = await serve(nursery, mesh, f"host=127.0.0.1 port={port} user=x dbname=x")
    agent = mesh.node("edge-1")
    async with served.client(node=agent) as client:
        health = await client.get("/healthz")
        assert health.status_code == 503 and "database unavailable" in health.json()["database"]
        response = await client.get("/v1/agents")
        assert response.status_code == 503 and "database unavailable" in response.json()["error"]
    async with served.client(token="mmt_1_" + "A" * 43) as client:
        assert (await client.get("/v1/agents")).status_code == 503
