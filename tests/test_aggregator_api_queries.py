"""The aggregator's query routes on data inserted into a real PostgreSQL, asked over real HTTPS:
agents and lag, members by reporter, results by range / check / target / agent at each
resolution, the tag-group matrix, uptime; and the resolution rule as a table."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
import trio

from aggregator import queries
from meshmon.results import Ping, PingResult
from meshmon.results.codec import encode_result
from tests.aggapi_support import Served, database, serve  # noqa: F401
from tests.conftest import Mesh

NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
T0 = NOW - dt.timedelta(minutes=30)
"""The data sits in two minutes, T0 and T0 + 1 min, half an hour ago."""


def _ping(agent: str, target: str, rtt: float | None) -> bytes:
    ok = rtt is not None
    result = PingResult(successes=1 if ok else 0, failures=0 if ok else 1,
                        success_latencies=(rtt,) if ok else (), errors=() if ok else ("timeout",),
                        avg_response_time_ms=rtt, resolved_ip="127.0.0.1")
    return encode_result(Ping(agent=agent, check="mesh", target=target, family=4,
                              started_at=T0.timestamp(), duration_ms=1.0, result=result))


# (agent, check, target, minute offset, second, rtt or None for a failure)
RAW = [
    ("a1", "mesh", "a2", 0, 10, 1.0), ("a1", "mesh", "a2", 0, 40, 3.0),
    ("a1", "mesh", "a2", 1, 10, 5.0), ("a1", "mesh", "a3", 0, 10, None),
    ("a1", "mesh", "a3", 1, 10, 2.0), ("a2", "mesh", "a1", 0, 20, 4.0),
    ("a3", "mesh", "b1", 0, 20, 7.0), ("b1", "mesh", "a3", 1, 20, 8.0),
    ("a1", "web", "10.0.0.1", 0, 30, 9.0), ("a2", "web", "10.0.0.1", 1, 30, None),
]


def _insert(served: Served, mesh: Mesh) -> None:
    with psycopg.connect(served.database, autocommit=True) as conn:
        for name, tags in (("a1", ("edge",)), ("a2", ("edge",)), ("a3", ("edge", "core")),
                           ("b1", ("core",))):
            node = mesh.node(name, tags=tags)
            queries.record_certificate(conn, mesh.identity(node)[0].peer)
        for seq, (agent, check, target, minute, second, rtt) in enumerate(RAW, 1):
            at = T0 + dt.timedelta(minutes=minute, seconds=second)
            conn.execute(
                "INSERT INTO results VALUES (%s, %s, %s, %s, %s, %s, 'ping', %s, %s, %s, %s, %s)",
                (at, agent, "0" * 32, seq, check, target, rtt is not None, rtt,
                 0.0 if rtt is not None else 1.0, None if rtt is not None else "timeout",
                 _ping(agent, target, rtt)))
        # the 1-minute rollup of exactly these rows, as the database layer maintains it
        conn.execute(
            "INSERT INTO results_1m SELECT date_trunc('minute', time), check_name, target, "
            "agent, count(*), count(*) FILTER (WHERE NOT success), avg(loss), min(rtt_ms), "
            "avg(rtt_ms), max(rtt_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY rtt_ms), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY rtt_ms), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY rtt_ms) FROM results "
            "GROUP BY 1, 2, 3, 4")
        conn.execute(
            "INSERT INTO results_1h SELECT date_trunc('hour', time), check_name, target, "
            "agent, count(*), count(*) FILTER (WHERE NOT success), avg(loss), min(rtt_ms), "
            "avg(rtt_ms), max(rtt_ms), NULL, NULL, NULL FROM results GROUP BY 1, 2, 3, 4")
        streams = [
            ("a1", "1" * 32, 100, 2, 5, 98, NOW - dt.timedelta(hours=2), NOW - dt.timedelta(
                minutes=5), NOW - dt.timedelta(minutes=5), NOW - dt.timedelta(minutes=6)),
            ("a1", "2" * 32, 7, 0, 0, 7, NOW - dt.timedelta(days=3), NOW - dt.timedelta(days=1),
             None, NOW - dt.timedelta(days=1)),
            ("a2", "3" * 32, 50, 0, 0, 50, NOW - dt.timedelta(hours=1), NOW - dt.timedelta(
                seconds=30), NOW - dt.timedelta(seconds=31), NOW - dt.timedelta(seconds=40)),
        ]
        for row in streams:
            conn.execute("INSERT INTO streams (agent, store, high_water, skipped, lost_total, "
                         "records, first_sync, last_sync, last_sent_at, last_record_time) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
        members = [("a1", "a1", "alive", 3, "127.0.0.2:7946", ["edge"]),
                   ("a1", "a2", "suspect", 1, "127.0.0.3:7946", ["edge", "core"]),
                   ("a2", "a2", "alive", 1, "127.0.0.3:7946", ["edge"]),
                   ("a2", "zz", "dead", 0, "127.0.0.9:7946", [])]
        for reporter, name, state, inc, address, tags in members:
            conn.execute("INSERT INTO members VALUES (%s, %s, %s, %s, %s, %s, '0.1.0', now())",
                         (reporter, name, state, inc, address, tags))


@pytest.fixture
async def data(nursery: trio.Nursery, mesh: Mesh, database: str) -> tuple[Served, str]:  # noqa: F811
    served = await serve(nursery, mesh, database)
    _insert(served, mesh)
    return served, served.token("reader")


async def get(data: tuple[Served, str], path: str, **params: Any) -> Any:
    served, token = data
    async with served.client(token=token) as client:
        response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


RANGE = {"start": (T0 - dt.timedelta(minutes=5)).isoformat(),
         "end": (T0 + dt.timedelta(minutes=5)).isoformat()}


async def test_agents_with_stores_last_sync_and_lag(data: tuple[Served, str]) -> None:
    agents = await get(data, "/v1/agents")
    assert [a["agent"] for a in agents] == ["a1", "a2"]
    a1, a2 = agents
    assert a1["tags"] == ["edge"] and a2["tags"] == ["edge"]
    assert (a1["records"], a1["skipped"], a1["lost_total"]) == (105, 2, 5)
    assert [s["store"] for s in a1["stores"]] == ["1" * 32, "2" * 32]  # newest sync first
    assert dt.datetime.fromisoformat(a1["last_sync"]) == NOW - dt.timedelta(minutes=5)
    assert 6 * 60 <= a1["lag_s"] < 6 * 60 + 600  # its newest record is ~6 minutes old
    assert 5 * 60 <= a1["since_sync_s"] < a1["lag_s"]
    assert a2["lag_s"] < a1["lag_s"]
    assert a1["stores"][1]["last_sent_at"] is None


async def test_members_labelled_by_reporter_with_certificate_tags(
    data: tuple[Served, str],
) -> None:
    members = await get(data, "/v1/members")
    assert [(m["reporter"], m["name"]) for m in members] == [
        ("a1", "a1"), ("a1", "a2"), ("a2", "a2"), ("a2", "zz")]
    claimed = {(m["reporter"], m["name"]): (m["tags"], m["certificate_tags"]) for m in members}
    # a1 claims a2 is in "core"; a2's own certificate says otherwise, and both are shown
    assert claimed[("a1", "a2")] == (["edge", "core"], ["edge"])
    assert claimed[("a2", "zz")] == ([], None)
    only = await get(data, "/v1/members", reporter="a2", name="a2")
    assert [(m["state"], m["address"]) for m in only] == [("alive", "127.0.0.3:7946")]


async def test_raw_results_filtered_by_check_target_and_agent(data: tuple[Served, str]) -> None:
    answer = await get(data, "/v1/results", **RANGE)
    assert answer["resolution"] == "raw" and not answer["truncated"]
    assert len(answer["rows"]) == len(RAW)
    times = [r["time"] for r in answer["rows"]]
    assert times == sorted(times)
    web = await get(data, "/v1/results", check="web", **RANGE)
    assert [(r["agent"], r["success"], r["error"]) for r in web["rows"]] == [
        ("a1", True, None), ("a2", False, "timeout")]
    one = await get(data, "/v1/results", agent="a1", target="a2", **RANGE)
    assert [r["rtt_ms"] for r in one["rows"]] == [1.0, 3.0, 5.0]
    # the range is [start, end): only the first minute
    first = await get(data, "/v1/results", agent="a1", target="a2", start=T0.isoformat(),
                      end=(T0 + dt.timedelta(minutes=1)).isoformat())
    assert [r["rtt_ms"] for r in first["rows"]] == [1.0, 3.0]
    newest = await get(data, "/v1/results", order="desc", limit=2, **RANGE)
    assert newest["truncated"] and [r["target"] for r in newest["rows"]] == ["10.0.0.1", "a3"]
    latest = await get(data, "/v1/results", latest="true", agent="a1", **RANGE)
    assert [(r["target"], r["rtt_ms"]) for r in latest["rows"]] == [
        ("10.0.0.1", 9.0), ("a2", 5.0), ("a3", 2.0)]


async def test_detail_decodes_the_stored_result(data: tuple[Served, str]) -> None:
    rows = (await get(data, "/v1/results", detail="true", agent="a1", target="a3",
                      **RANGE))["rows"]  # fmt: skip
    assert rows[0]["result"]["errors"] == ["timeout"]
    assert rows[1]["result"]["success_latencies"] == [2.0]


async def test_rollup_resolutions_and_the_automatic_choice(data: tuple[Served, str]) -> None:
    minute = await get(data, "/v1/results", resolution="1m", agent="a1", target="a2", **RANGE)
    assert minute["resolution"] == "1m"
    assert [(r["count"], r["rtt_min_ms"], r["rtt_avg_ms"], r["rtt_max_ms"]) for r in
            minute["rows"]] == [(2, 1.0, 2.0, 3.0), (1, 5.0, 5.0, 5.0)]  # fmt: skip
    assert minute["rows"][0]["time"] == T0.isoformat()
    # a day is answered from the 1-minute rollup, a week from the 1-hour one
    day = await get(data, "/v1/results", since="1d", agent="a1", target="a2")
    assert day["resolution"] == "1m" and len(day["rows"]) == 2
    week = await get(data, "/v1/results", since="7d", agent="a1", target="a2")
    assert week["resolution"] == "1h"
    assert sum(r["count"] for r in week["rows"]) == 3
    assert max(r["rtt_max_ms"] for r in week["rows"]) == 5.0


async def test_matrix_of_a_tag_group_by_certificate_tags(data: tuple[Served, str]) -> None:
    answer = await get(data, "/v1/matrix", tag="edge", **RANGE)
    assert answer["rows"] == answer["columns"] == ["a1", "a2", "a3"]
    assert [m["check"] for m in answer["matrices"]] == ["mesh"]
    cells = answer["matrices"][0]["cells"]
    assert cells[0][0] is None and cells[2][0] is None  # nobody probes itself; a3 probes b1
    assert cells[0][1] == {"count": 3, "failures": 0, "loss": 0.0, "rtt_avg_ms": 3.0,
                           "rtt_min_ms": 1.0, "rtt_max_ms": 5.0}
    assert cells[0][2] == {"count": 2, "failures": 1, "loss": 0.5, "rtt_avg_ms": 2.0,
                           "rtt_min_ms": 2.0, "rtt_max_ms": 2.0}
    assert cells[1][0]["rtt_avg_ms"] == 4.0
    # the same answer from the 1-minute rollup
    rolled = await get(data, "/v1/matrix", tag="edge", resolution="1m", **RANGE)
    assert rolled["matrices"] == answer["matrices"]
    # core probed from edge: only a3 is core among targets; b1 is not an edge prober
    cross = await get(data, "/v1/matrix", tag="core", from_tag="edge", **RANGE)
    assert (cross["rows"], cross["columns"]) == (["a1", "a2", "a3"], ["a3", "b1"])
    cells = cross["matrices"][0]["cells"]
    assert cells[0][0]["count"] == 2 and cells[2][1]["rtt_avg_ms"] == 7.0
    assert cells[1] == [None, None]
    empty = await get(data, "/v1/matrix", tag="nobody", **RANGE)
    assert (empty["rows"], empty["matrices"]) == ([], [])


async def test_uptime_per_target(data: tuple[Served, str]) -> None:
    answer = await get(data, "/v1/uptime", **RANGE)
    by_target = {(t["check"], t["target"]): t for t in answer["targets"]}
    assert by_target[("web", "10.0.0.1")]["uptime_pct"] == 50.0
    assert by_target[("mesh", "a3")]["count"] == 3
    assert by_target[("mesh", "a3")]["uptime_pct"] == pytest.approx(200 / 3)
    assert by_target[("mesh", "a2")]["uptime_pct"] == 100.0
    rolled = await get(data, "/v1/uptime", resolution="1m", **RANGE)
    assert [(t["target"], t["count"], t["failures"]) for t in rolled["targets"]] == [
        (t["target"], t["count"], t["failures"]) for t in answer["targets"]]
    one = await get(data, "/v1/uptime", agent="a2", check="web", **RANGE)
    assert [(t["target"], t["uptime_pct"]) for t in one["targets"]] == [("10.0.0.1", 0.0)]


async def test_bad_parameters_are_400_naming_the_parameter(data: tuple[Served, str]) -> None:
    served, token = data
    async with served.client(token=token) as client:
        for params, name in (({"start": "yesterday"}, "start"), ({"since": "ten"}, "since"),
                             ({"resolution": "5m"}, "resolution"), ({"limit": "0"}, "limit"),
                             ({"start": NOW.isoformat(), "end": T0.isoformat()}, "start"),
                             ({"since": "1h", "start": T0.isoformat()}, "since")):
            response = await client.get("/v1/results", params=params)
            assert response.status_code == 400, params
            assert response.json()["parameter"] == name
            assert response.json()["error"].startswith(f"{name}: ")
        response = await client.get("/v1/matrix")
        assert response.status_code == 400 and response.json()["parameter"] == "tag"


@pytest.mark.parametrize(("span", "expected"), [
    (60, "raw"), (2 * 3600, "raw"), (2 * 3600 + 1, "1m"), (3 * 86400, "1m"),
    (3 * 86400 + 1, "1h"), (365 * 86400, "1h"),
])  # fmt: skip
def test_resolution_rule(span: int, expected: str) -> None:
    end = NOW
    assert queries.choose_resolution(end - dt.timedelta(seconds=span), end, 2 * 3600.0,
                                     3 * 86400.0) == expected

