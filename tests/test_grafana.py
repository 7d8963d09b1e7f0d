"""The Grafana dashboard's SQL runs against the aggregator's real schema on a real PostgreSQL.

Every query Grafana would send — template variables, panels, annotations — is expanded here the
way Grafana does it (its SQL data source quotes multi-value variables and joins them with
commas; the PostgreSQL backend then replaces the ``$__`` macros, as in grafana's
``pkg/tsdb/grafana-postgresql-datasource/macros.go``), for a fixed time range, and run as the
read-only role of ``examples/grafana/grafana-reader.sql`` on data written by the aggregator's own
writer and rolled up by its rollup job. Each must return rows of the expected shape.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cbor2
import psycopg
import pytest
import yaml

from aggregator import queries as agg_queries
from aggregator.rollups import Rollups
from aggregator.writer import BatchWriter
from meshmon import results as r
from meshmon.wire.ingest import MemberReport, SyncRecord
from tests.batches import batch, result_for
from tests.conftest import Mesh
from tests.pg import Db

GRAFANA = Path(__file__).parent.parent / "examples" / "grafana"
DASHBOARD = json.loads((GRAFANA / "meshmon-dashboard.json").read_text())
DATASOURCE = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "meshmon.yaml")
                            .read_text())["datasources"][0]  # fmt: skip
STORE = "0123456789abcdef0123456789abcdef"
AGENTS = ("a1", "a2", "a3")
STEP = 30.0
"""Seconds between two runs of a check in the data below."""

# --- Grafana's expansion ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")  # macros.go: sExpr
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def quote(value: str) -> str:
    """The SQL data source's ``quoteLiteral``."""
    return "'" + value.replace("'", "''") + "'"


def go_float(x: float) -> str:
    """Go's ``%v`` of a float64 (shortest form; an exponent from 1e21, as the intervals here
    never reach it)."""
    return str(int(x)) if x == int(x) and abs(x) < 1e21 else repr(x)


def rfc3339nano(t: dt.datetime) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC time: trailing zeros of the fraction dropped."""
    text = t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_interval(text: str) -> float:
    """gtime.ParseInterval for the units a dashboard uses."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if match is None:
        raise ValueError(f"unsupported interval {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def interpolate(sql: str, variables: Mapping[str, Sequence[str]], interval: str) -> str:
    """Template variables as Grafana's frontend replaces them for a SQL data source: each value
    of a multi-value (or include-All) variable quoted, the values joined with commas; built-in
    interval variables as text. Unknown names (the ``$__`` macros) are left for the backend."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name == "__interval":
            return interval
        if name == "__interval_ms":
            return str(int(parse_interval(interval) * 1000))
        if name not in variables:
            assert not name.startswith("__") or _MACRO.match(sql, match.start()), \
                f"unknown built-in variable ${name}"  # fmt: skip
            return match.group(0)
        return ",".join(quote(v) for v in variables[name])

    return _VARIABLE.sub(one, sql)


def macros(sql: str, start: dt.datetime, end: dt.datetime) -> str:
    """The PostgreSQL backend's macros (``evaluateMacro``) with the data source's ``timescaledb``
    off, as provisioned (on, ``$__timeGroup`` becomes ``time_bucket``: no TimescaleDB here to
    run that on); an unknown macro fails, as in Grafana."""

    def one(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeGroup" and sql[match.end():match.end() + 1] == ",":
            name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility rule
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339nano(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339nano(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            assert len(args) == 2, "fill modes are not used by this dashboard"
            seconds = go_float(parse_interval(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise AssertionError(f"unknown macro {name!r}: Grafana would refuse the query")

    return _MACRO.sub(one, sql)


def panel_interval(panel: Mapping[str, Any], start: dt.datetime, end: dt.datetime) -> str:
    """``$__interval``: the range over ~1000 points, at least the panel's minimum interval."""
    auto = max(1, round((end - start).total_seconds() / 1000))
    minimum = panel.get("interval")
    if minimum and parse_interval(minimum) > auto:
        return str(minimum)
    return f"{auto}s"


# --- the data -----------------------------------------------------------------------------

CHECKS = [("mesh", a) for a in AGENTS] + [("ping-lan", "10.0.0.1"), ("tcp-web", "10.0.0.3:443")]


def incident(ident: str, event: str, opened: float, resolved: float | None,
             target: str) -> dict[str, Any]:  # fmt: skip
    return {"event": event, "id": ident, "kind": "target", "rule": "down", "check": "mesh",
            "target": target, "opened_at": opened, "resolved_at": resolved,
            "probers": ["a1", "a2"], "notifier": "a1"}  # fmt: skip


def fill(db: Db, mesh: Mesh, t0: float, t1: float) -> None:
    """Three agents probing each other and two static targets every STEP seconds from t0 to t1,
    their member views, two incidents, their certificates as ingest records them, then the
    rollups."""
    assert db.schema is not None
    with db.connect() as conn:
        for agent in AGENTS:
            agg_queries.record_certificate(conn, mesh.identity(mesh.node(agent))[0].peer)
    writer = BatchWriter(db.url, db.schema)
    members = tuple(MemberReport(a, "alive", 1, f"127.0.0.{i + 2}", ("mesh",), "0.1.0")
                    for i, a in enumerate(AGENTS))  # fmt: skip
    try:
        for agent in AGENTS:
            rng = random.Random(agent)
            recs: list[SyncRecord] = []
            ts = t0
            while ts <= t1:
                for check, target in CHECKS:
                    if target == agent:
                        continue  # an agent does not probe itself
                    result = result_for(agent, check, target, ts, len(recs) + 1, rng)
                    recs.append(SyncRecord(len(recs) + 1, ts, check, target,
                                           r.encode_result(result)))  # fmt: skip
                ts += STEP
            if agent == "a1":  # the notifier's history: one incident over, one still firing
                opened = t0 + 600
                for event, at, resolved, ident in (
                        ("firing", opened, None, "1111222233334444"),
                        ("resolved", opened + 300, opened + 300, "1111222233334444"),
                        ("firing", t1 - 120, None, "5555666677778888")):
                    recs.append(SyncRecord(len(recs) + 1, at, "_alerts", "a3", cbor2.dumps(
                        incident(ident, event, opened if resolved else at, resolved, "a3"))))
            for i in range(0, len(recs), 500):
                chunk = recs[i:i + 500]
                writer.write(agent, batch(agent, STORE, chunk, members=members))
    finally:
        writer.close()
    rollups = Rollups(db.url, db.schema)
    with rollups.connect() as conn:
        rollups.refresh(conn)


# --- shapes -------------------------------------------------------------------------------

TIME = ("time", {"numeric", "float8"})
METRIC = ("metric", {"text"})
FLOAT, INT, TEXT, TS = {"float8"}, {"int8"}, {"text"}, {"timestamptz"}
EXPECTED: dict[str, list[tuple[str, set[str]]]] = {
    "Uptime % per target": [("check", TEXT), ("target", TEXT), ("uptime %", FLOAT),
                            ("minutes up %", FLOAT), ("probes", INT), ("probers", INT)],
    "Agent x agent: average RTT (ms)": [("from", TEXT), ("to", TEXT), ("rtt ms", FLOAT)],
    "Agent x agent: loss %": [("from", TEXT), ("to", TEXT), ("loss %", FLOAT)],
    "Latency p50 / p95 (1-minute rollup)": [TIME, METRIC, ("p50", FLOAT), ("p95", FLOAT)],
    "Loss % (1-minute rollup)": [TIME, METRIC, ("loss %", FLOAT)],
    "Latency per probe (raw results)": [TIME, METRIC, ("rtt", FLOAT)],
    "Latency p50 / p95 (1-hour rollup, long ranges)": [TIME, METRIC, ("p50", FLOAT),
                                                       ("p95", FLOAT)],
    "Recent failures (raw results)": [("time", TS), ("agent", TEXT), ("check", TEXT),
                                      ("target", TEXT), ("kind", TEXT), ("error", TEXT)],
    "Incidents": [("time", TS), ("event", TEXT), ("kind", TEXT), ("rule", TEXT),
                  ("check", TEXT), ("target", TEXT), ("opened", TS), ("resolved", TS),
                  ("duration", FLOAT), ("probers", TEXT), ("notifier", TEXT)],
    "Members": [("name", TEXT), ("state", TEXT), ("alive to", INT), ("reporters", INT),
                ("address", TEXT), ("tags", TEXT), ("version", TEXT), ("reported", TS)],
    "Agents' sync to the aggregator": [("agent", TEXT), ("store", TEXT), ("last sync", TS),
                                       ("newest record age", FLOAT), ("records", INT),
                                       ("skipped", INT), ("lost (agent)", INT),
                                       ("expired", INT)],
    "annotation: Incidents": [("time", TS), ("timeend", TS), ("text", TEXT), ("tags", TEXT)],
}


def queries() -> list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(name, panel or annotation, target) of every query the dashboard sends for data."""
    out: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], panel, target))
    for anno in DASHBOARD["annotations"]["list"]:
        if anno["datasource"].get("uid") == DATASOURCE["uid"]:
            out.append((f"annotation: {anno['name']}", anno, anno["target"]))
    return out


def run(conn: psycopg.Connection[Any], sql: str) -> tuple[list[str], list[str], list[Any]]:
    cur = conn.execute(sql)  # type: ignore[arg-type]
    assert cur.description is not None
    names = [c.name for c in cur.description]
    types = [conn.adapters.types.get(c.type_code).name  # type: ignore[union-attr]
             for c in cur.description]  # fmt: skip
    return names, types, cur.fetchall()


# --- the test -----------------------------------------------------------------------------


def test_the_dashboard_is_provisioned_for_its_data_source() -> None:
    assert DATASOURCE["type"] == "grafana-postgresql-datasource"
    uids = {json.dumps(p["datasource"]) for p in DASHBOARD["panels"] if p["type"] != "row"}
    uids |= {json.dumps(t["datasource"]) for p in DASHBOARD["panels"] for t in p.get("targets", [])}
    uids |= {json.dumps(v["datasource"]) for v in DASHBOARD["templating"]["list"]}
    assert uids == {json.dumps({"type": DATASOURCE["type"], "uid": DATASOURCE["uid"]})}
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert {name for name, _, _ in queries()} == set(EXPECTED)
    names = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert names == ["check", "target", "agent"]
    for name, _, target in queries():  # every variable a query uses is defined
        used = {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(target["rawSql"])}
        assert {u for u in used if not u.startswith("__")} <= set(names), name
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meshmon.yaml")
                              .read_text())["providers"][0]  # fmt: skip
    assert provider["type"] == "file" and provider["options"]["path"]


@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_panel_query_returns_rows_of_the_expected_shape(pg_db: Db, mesh: Mesh,
                                                              selection: str) -> None:
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = end - dt.timedelta(hours=2)
    t1 = (end - dt.timedelta(minutes=1)).timestamp()
    fill(pg_db, mesh, (start + dt.timedelta(minutes=5)).timestamp(), t1)
    with pg_db.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS meshmon_grafana")
        conn.execute((GRAFANA / "grafana-reader.sql").read_text())  # type: ignore[arg-type]
        conn.execute("SET ROLE meshmon_grafana")  # what Grafana's login may read, and no more
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM api_tokens")

        # the variables, in order, as Grafana refreshes them on a time range change
        variables: dict[str, list[str]] = {}
        for var in DASHBOARD["templating"]["list"]:
            sql = macros(interpolate(var["query"], variables, "1m"), start, end)
            _, _, rows = run(conn, sql)
            values = [str(row[0]) for row in rows]
            assert values, var["name"]
            variables[var["name"]] = values
        assert variables["check"] == ["mesh", "ping-lan", "tcp-web"]
        assert variables["target"] == ["10.0.0.1", "10.0.0.3:443", *AGENTS]
        assert variables["agent"] == list(AGENTS)
        if selection == "one":
            variables = {"check": ["mesh"], "target": ["a2"], "agent": ["a1"]}

        found: dict[str, tuple[list[str], list[Any]]] = {}
        for name, panel, target in queries():
            interval = panel_interval(panel, start, end)
            sql = macros(interpolate(target["rawSql"], variables, interval), start, end)
            names, types, rows = run(conn, sql)
            expected = EXPECTED[name]
            assert names == [n for n, _ in expected], name
            for column, kind, (_, allowed) in zip(names, types, expected, strict=True):
                assert kind in allowed, f"{name}: {column} is {kind}, expected {allowed}"
            assert rows, f"{name} returned no rows"
            if target.get("format") == "time_series":  # Grafana needs them sorted by time
                times = [float(row[0]) for row in rows]
                assert times == sorted(times), name
                step = parse_interval(interval)
                assert start.timestamp() - step <= times[0] and times[-1] <= end.timestamp()
            found[name] = (names, rows)

    if selection == "one":
        _, rtt = found["Agent x agent: average RTT (ms)"]
        assert [(row[0], row[1]) for row in rtt] == [("a1", "a2")]
        _, uptime = found["Uptime % per target"]
        assert [(row[0], row[1]) for row in uptime] == [("mesh", "a2")]
        return
    # the tables say what the data holds
    _, uptime = found["Uptime % per target"]
    assert sorted((row[0], row[1]) for row in uptime) == sorted(CHECKS)
    _, matrix = found["Agent x agent: loss %"]
    assert sorted((row[0], row[1]) for row in matrix) == [
        (a, b) for a in AGENTS for b in AGENTS if a != b]
    with pg_db.connect() as conn:
        success = {(c, t): 100 * v for c, t, v in conn.execute(
            "SELECT check_name, target, avg(success::int) FROM results GROUP BY 1, 2")}
        pairs = {(a, t): (100 * lo, rtt) for a, t, lo, rtt in conn.execute(
            "SELECT agent, target, avg(loss), avg(rtt_ms) FROM results WHERE check_name = 'mesh' "
            "GROUP BY 1, 2")}  # fmt: skip
    for check, target, up, minutes_up, *_ in uptime:  # the rollup's figures are the raw ones
        assert math.isclose(up, success[(check, target)], rel_tol=1e-9)
        assert up <= minutes_up <= 100
    for prober, target, loss in matrix:
        assert math.isclose(loss, pairs[(prober, target)][0], rel_tol=1e-9)
    _, rtt = found["Agent x agent: average RTT (ms)"]
    for prober, target, ms in rtt:
        assert math.isclose(ms, pairs[(prober, target)][1], rel_tol=1e-9)
    _, incidents = found["Incidents"]
    assert sorted((row[1], row[5]) for row in incidents) == [
        ("firing", "a3"), ("firing", "a3"), ("resolved", "a3")]
    _, notes = found["annotation: Incidents"]
    assert len(notes) == 2 and sum(row[1] is None for row in notes) == 1  # one still firing
    _, members = found["Members"]
    assert [(row[0], row[1], row[2], row[3]) for row in members] == [
        (a, "alive", 3, 3) for a in AGENTS]
