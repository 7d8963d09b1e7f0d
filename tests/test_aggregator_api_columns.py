"""``POST /v1/ingest`` with version 2 bodies over real HTTPS into a real PostgreSQL: accepted
exactly once beside version 1, and a malformed column refused with 400 naming it and nothing
written."""

from __future__ import annotations

import time
import zlib
from array import array

import cbor2
import trio

from meshmon.wire import columns as v2
from meshmon.wire import ingest as wire
from tests.aggapi_support import Served, database  # noqa: F401
from tests.batches import batch, columns, records
from tests.conftest import Mesh
from tests.pg import Db
from tests.test_aggregator_api_ingest import STORE, _serve, post, send


async def send_v2(served: Served, node: object, b: v2.ColumnBatch) -> tuple[int, object]:
    body, encoding = v2.encode_columns(b)
    return await post(served, node, body, {"Content-Encoding": encoding} if encoding else None)


async def test_version_2_and_version_1_batches_share_one_stream(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1", tags=("edge",))
    recs = records("edge-1", 1, 300, time.time() - 300)
    assert await send_v2(served, agent, columns("edge-1", STORE, recs[:200])) == (
        200, wire.Ack(high_water=200, inserted=200))
    assert await send(served, agent, batch("edge-1", STORE, recs[150:])) == (
        200, wire.Ack(high_water=300, inserted=100))
    assert await send_v2(served, agent, columns("edge-1", STORE, recs)) == (
        200, wire.Ack(high_water=300, inserted=0))
    assert served.sql("SELECT count(*), count(DISTINCT seq) FROM results") == [(300, 300)]
    assert served.sql("SELECT agent, tags FROM agent_certs") == [("edge-1", ["edge"])]


async def test_a_malformed_column_is_refused_naming_it_and_nothing_is_written(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    agent = mesh.node("edge-1")
    good = columns("edge-1", STORE, records("edge-1", 1, 50, time.time() - 60))
    data, encoding = v2.encode_columns(good)
    obj = cbor2.loads(zlib.decompress(data) if encoding else data)
    ix = array("H", obj["series_ix"])
    ix[17] = 40
    obj["series_ix"] = ix.tobytes()
    status, answer = await post(served, agent, cbor2.dumps(obj))
    assert status == 400
    assert answer == {"error": "series_ix[17]: 40, but the batch has 3 series"}
    obj["series_ix"] = good.series_ix.tobytes()[:-2]
    status, answer = await post(served, agent, zlib.compress(cbor2.dumps(obj)),
                                {"Content-Encoding": "deflate"})  # fmt: skip
    assert status == 400
    assert answer == {"error": "series_ix: 49 items for the 50 records 1..50"}
    assert served.sql("SELECT count(*) FROM results") == [(0,)]
    assert served.sql("SELECT count(*) FROM streams") == [(0,)]
    assert await send_v2(served, agent, good) == (200, wire.Ack(high_water=50, inserted=50))


async def test_a_batch_of_another_agent_is_refused(
    nursery: trio.Nursery, mesh: Mesh, pg_db: Db, database: str  # noqa: F811
) -> None:
    served = await _serve(nursery, mesh, pg_db, database)
    mallory = mesh.node("mallory")
    status, answer = await send_v2(served, mallory, columns("edge-1", STORE, records(
        "edge-1", 1, 5, time.time())))  # fmt: skip
    assert status == 403 and "'edge-1'" in answer["error"]  # type: ignore[index]
    assert served.sql("SELECT count(*) FROM streams") == [(0,)]
