"""``POST /v1/ingest`` end to end: a mesh agent's certificate, a CBOR batch over real HTTPS,
the database layer's exactly-once writer on a real PostgreSQL, the CBOR acknowledgement; and
what the query API then says about the agent (its certificate tags, its stream, its members)."""

from __future__ import annotations

import time
import zlib

import trio

from aggregator.writer import Ingestor
from meshmon.wire import ingest as wire
from tests.aggapi_support import Served, database, serve  # noqa: F401
from tests.batches import batch, records
from tests.conftest import Mesh
from tests.pg import Db

STORE = "0123456789abcdef0123456789abcdef"


async def _serve(nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str) -> Served:  # noqa: F811
    assert pg_db.schema is not None and pg_db.url == database
    ingestor = Ingestor(database, pg_db.schema)
    await nursery.start(ingestor.run)
    return await serve(nursery, mesh, database, ingestor=ingestor)


async def post(served: Served, node: object, body: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, object]:  # fmt: skip
    async with served.client(node=node) as client:  # type: ignore[arg-type]
        response = await client.post(wire.PATH, content=body, headers=headers or {})
    if response.headers["content-type"] == wire.CONTENT_TYPE:
        return response.status_code, wire.decode_ack(response.content)
    return response.status_code, response.json()


async def send(served: Served, node: object, b: wire.Batch) -> tuple[int, object]:
    body, encoding = wire.encode_batch(b)
    return await post(served, node, body, {"Content-Encoding": encoding} if encoding else None)


async def test_batch_is_acknowledged_once_and_the_agent_appears_with_its_certificate_tags(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1", tags=("edge", "eu"))
    now = time.time()
    recs = records("edge-1", 1, 200, now - 120)
    members = (wire.MemberReport("edge-1", "alive", 2, "127.0.0.2:7946", ("edge", "eu"), "0.1.0"),
               wire.MemberReport("edge-2", "suspect", 5, "127.0.0.3:7946", ("edge",), "0.1.0"))
    body, encoding = wire.encode_batch(batch("edge-1", STORE, recs, members=members,
                                             lost_total=4, sent_at=now))  # fmt: skip
    assert encoding == "deflate"  # 200 records compress
    status, ack = await post(served, agent, body, {"Content-Encoding": encoding})
    assert (status, ack) == (200, wire.Ack(high_water=200, inserted=200))
    # the acknowledgement was lost: the same batch again inserts nothing
    status, ack = await post(served, agent, body, {"Content-Encoding": encoding})
    assert (status, ack) == (200, wire.Ack(high_water=200, inserted=0))
    assert served.sql("SELECT count(*) FROM results") == [(200,)]
    assert served.sql("SELECT agent, tags FROM agent_certs") == [("edge-1", ["edge", "eu"])]
    token = served.token("reader")
    async with served.client(token=token) as client:
        agents = (await client.get("/v1/agents")).json()
        assert [(a["agent"], a["tags"], a["records"], a["lost_total"]) for a in agents] == [
            ("edge-1", ["edge", "eu"], 200, 4)]
        assert agents[0]["stores"][0]["high_water"] == 200
        assert agents[0]["lag_s"] < 600
        views = (await client.get("/v1/members")).json()
        assert [(m["reporter"], m["name"], m["state"], m["certificate_tags"]) for m in views] == [
            ("edge-1", "edge-1", "alive", ["edge", "eu"]), ("edge-1", "edge-2", "suspect", None)]
        got = (await client.get("/v1/results", params={"since": "10m"})).json()
        assert len(got["rows"]) == 200 and got["resolution"] == "raw"
        assert {r["agent"] for r in got["rows"]} == {"edge-1"}


async def test_gap_is_409_with_where_to_resume_and_nothing_is_written(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1")
    now = time.time()
    first = records("edge-1", 1, 10, now - 60)
    assert (await send(served, agent, batch("edge-1", STORE, first)))[0] == 200
    # seqs 11..20 never sent, and the batch does not declare them overwritten
    later = records("edge-1", 21, 5, now - 30)
    status, body = await send(served, agent, batch("edge-1", STORE, later))
    assert status == 409
    assert body["expected"] == 11 and "gap" in body["error"]  # type: ignore[index]
    assert served.sql("SELECT count(*) FROM results") == [(10,)]
    # declared as overwritten by the ring, the same records are accepted and counted
    declared = batch("edge-1", STORE, later, after=10)
    status, ack = await send(served, agent, declared)
    assert (status, ack) == (200, wire.Ack(high_water=25, inserted=5))
    assert served.sql("SELECT skipped FROM streams") == [(10,)]


async def test_a_record_the_aggregator_cannot_store_is_refused_whole(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1")
    recs = records("edge-1", 1, 3, time.time() - 60)
    broken = [recs[0], wire.SyncRecord(2, recs[1].ts, "ping", "x", b"\xff\xfe"), recs[2]]
    status, body = await send(served, agent, batch("edge-1", STORE, broken))
    assert status in (400, 422)
    assert "records" in body["error"] or "seq 2" in body["error"]  # type: ignore[index]
    assert served.sql("SELECT count(*) FROM results") == [(0,)]


async def test_a_reissued_certificate_updates_the_agent_tags(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    old = mesh.node("edge-1", tags=("edge",))
    recs = records("edge-1", 1, 4, time.time() - 60)
    assert (await send(served, old, batch("edge-1", STORE, recs[:2])))[0] == 200
    new = mesh.node("edge-1", tags=("edge", "core"))  # the CA re-issues with another tag
    assert (await send(served, new, batch("edge-1", STORE, recs[2:])))[0] == 200
    assert served.sql("SELECT tags FROM agent_certs") == [(["edge", "core"],)]


async def test_uncompressed_and_deflate_bodies_decode_alike(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1")
    recs = records("edge-1", 1, 50, time.time() - 60)
    body, encoding = wire.encode_batch(batch("edge-1", STORE, recs[:25]))
    plain = zlib.decompress(body) if encoding else body
    assert await post(served, agent, plain) == (200, wire.Ack(25, 25))
    body, encoding = wire.encode_batch(batch("edge-1", STORE, recs[25:]))
    packed = body if encoding else zlib.compress(body)
    assert await post(served, agent, packed, {"Content-Encoding": "deflate"}) == (
        200, wire.Ack(50, 25))
