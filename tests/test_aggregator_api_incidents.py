"""``GET /v1/incidents`` over real HTTPS on a real PostgreSQL: incident history uploaded by the
agents that recorded it (the ``_alerts`` records of a sync batch, through the real writer), told
apart into firing and recently resolved; and the route's OpenAPI description."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import trio

from aggregator.writer import Ingestor
from meshmon.alerts.incidents import Incident
from meshmon.alerts.service import incident_json
from meshmon.wire.ingest import INCIDENT_CHECK, SyncRecord
from tests.aggapi_support import Served, database, serve  # noqa: F401
from tests.batches import batch
from tests.conftest import Mesh
from tests.pg import Db

STORE = "ab" * 16
NOW = time.time()


def event(seq: int, at: float, name: str, inc: Incident) -> SyncRecord:
    """The record an agent's store holds for an incident event (``AlertService._note``)."""
    payload = cbor2.dumps({"event": name, **incident_json(inc, at)})
    return SyncRecord(seq, at, INCIDENT_CHECK, inc.key[2], payload)


def incident(ident: str, rule: str, target: str, opened: float, notifier: str = "a1",
             resolved: float | None = None) -> Incident:  # fmt: skip
    return Incident(ident, "target", (rule, "web", target), opened, notifier,
                    resolved_at=resolved, probers=("a1", "a2"))  # fmt: skip


async def test_incidents_firing_and_recent(nursery: trio.Nursery, mesh: Mesh, pg_db: Db,
                                           database: str) -> None:  # noqa: F811
    assert pg_db.schema is not None
    ingestor = Ingestor(database, pg_db.schema)
    await nursery.start(ingestor.run)
    served = await serve(nursery, mesh, database, ingestor=ingestor)
    down = incident("i-down", "web-down", "10.0.0.1", NOW - 7200)  # firing for two hours
    fixed = incident("i-fixed", "web-slow", "10.0.0.2", NOW - 600)
    old = incident("i-old", "web-down", "10.0.0.3", NOW - 3 * 86400)
    old_done = incident("i-old", "web-down", "10.0.0.3", NOW - 3 * 86400,
                        resolved=NOW - 2 * 86400)  # fmt: skip
    # a2 took "i-fixed" over from a1 and resolved it; a1 recorded its firing
    a1 = [event(1, NOW - 7200, "firing", down), event(2, NOW - 600, "firing", fixed),
          event(3, NOW - 3 * 86400 + 60, "firing", old),
          event(4, NOW - 2 * 86400, "resolved", old_done)]  # fmt: skip
    takeover = incident("i-fixed", "web-slow", "10.0.0.2", NOW - 600, notifier="a2",
                        resolved=NOW - 300)  # fmt: skip
    a2 = [event(1, NOW - 300, "resolved", takeover)]
    for name, records in (("a1", a1), ("a2", a2)):
        ack = await ingestor.ingest(name, batch(name, STORE, records))
        assert ack.inserted == len(records)
    reader = mesh.node("reader-agent")  # any mesh certificate reads

    async def get(**params: Any) -> tuple[int, Any]:
        async with served.client(node=reader) as client:
            response = await client.get("/v1/incidents", params=params)
        return response.status_code, response.json()

    status, answer = await get()
    assert status == 200, answer
    assert [i["id"] for i in answer["firing"]] == ["i-down"]
    firing = answer["firing"][0]
    assert (firing["rule"], firing["check"], firing["target"], firing["resolved_at"]) == (
        "web-down", "web", "10.0.0.1", None)
    assert 7100 < firing["duration_s"] < 7200 + 600  # open until now
    assert firing["probers"] == ["a1", "a2"] and firing["notifier"] == "a1"
    # the resolved one: described by its newest event (a2's), recorded by both
    assert [i["id"] for i in answer["recent"]] == ["i-fixed"]
    recent = answer["recent"][0]
    assert recent["notifier"] == "a2" and recent["recorded_by"] == ["a1", "a2"]
    assert 299 < recent["duration_s"] < 301
    assert not answer["truncated"]
    # a wider window brings the one resolved two days ago, newest first
    status, answer = await get(since="3d")
    assert [i["id"] for i in answer["recent"]] == ["i-fixed", "i-old"]
    status, answer = await get(since="3d", limit=1)
    assert [i["id"] for i in answer["recent"]] == ["i-fixed"] and answer["truncated"]
    assert [i["id"] for i in answer["firing"]] == ["i-down"]  # never cut by the limit
    status, answer = await get(since="yesterday")
    assert status == 400 and answer["parameter"] == "since" and "duration" in answer["error"]
    async with served.client() as client:  # no credentials
        assert (await client.get("/v1/incidents")).status_code == 401
        doc = (await client.get("/openapi.json")).json()
    route = doc["paths"]["/v1/incidents"]["get"]
    assert {p["name"] for p in route["parameters"]} == {"since", "limit"}
    schema = doc["components"]["schemas"]["IncidentOut"]
    assert {"id", "rule", "target", "opened_at", "resolved_at", "notifier",
            "duration_s"} <= set(schema["properties"])  # fmt: skip
    assert schema["properties"]["resolved_at"]["description"] == "None while firing."
