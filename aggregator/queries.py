"""The SQL behind the query API: plain synchronous functions of a psycopg connection.

Theory of operation
-------------------
Each function takes a connection (run in a worker thread by :class:`aggregator.dbpool.Pool`)
and returns JSON-ready dicts (times as ISO 8601 strings with their offset). They read the
contract tables only, the same on plain PostgreSQL and TimescaleDB: ``streams``, ``members``,
``results`` and its rollups ``results_1m`` / ``results_1h``, and ``agent_certs`` (each
agent's certificate tags, written at ingest).

Resolution. A time range is answered from raw results when it is short, from the 1-minute
rollup up to a few days and from the 1-hour rollup beyond (:func:`choose_resolution`; the
limits are ``[aggregator.query]`` settings). A rollup bucket is counted whole when it overlaps
the range. Aggregates over several buckets are weighted exactly where the rollups allow:
counts and failures add up; loss is the count-weighted mean of the buckets' mean loss; the
mean RTT is weighted by the bucket's successful results (those that carry an RTT); min and
max are exact; percentiles cannot be merged and are only given per bucket.

Trust. Group membership (the tag of a matrix) comes only from ``agent_certs``: tags the CA put
in an agent's certificate, seen by the aggregator when the agent uploaded. Tags in ``members``
are what some reporter said and are shown as such, labelled with the reporter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshmon.pki import PeerIdentity

Resolution = Literal["raw", "1m", "1h"]
RESOLUTIONS: tuple[Resolution, ...] = ("raw", "1m", "1h")
_TABLES = {"1m": "results_1m", "1h": "results_1h"}
_WIDTH = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1)}


def choose_resolution(start: dt.datetime, end: dt.datetime, raw_max: float,
                      minute_max: float) -> Resolution:  # fmt: skip
    """The resolution for a range: raw up to ``raw_max`` seconds, 1m up to ``minute_max``,
    else 1h."""
    span = (end - start).total_seconds()
    if span <= raw_max:
        return "raw"
    return "1m" if span <= minute_max else "1h"


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 with offset (UTC), or None."""
    return None if value is None else value.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True)
class Filters:
    """The selection shared by the range queries."""

    start: dt.datetime
    end: dt.datetime
    check: str | None = None
    target: str | None = None
    agent: str | None = None

    def where(self, time_col: str, resolution: Resolution) -> tuple[str, list[Any]]:
        """A WHERE clause over ``time_col`` (buckets overlapping the range count) and params."""
        start = self.start if resolution == "raw" else self.start - _WIDTH[resolution]
        op = ">=" if resolution == "raw" else ">"
        clauses = [f"{time_col} {op} %s", f"{time_col} < %s"]
        params: list[Any] = [start, self.end]
        for column, value in (("check_name", self.check), ("target", self.target),
                              ("agent", self.agent)):  # fmt: skip
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        return " AND ".join(clauses), params


# --- agents and members ---------------------------------------------------------------------


def agents(conn: Any) -> list[dict[str, Any]]:
    """Every agent that ever synced: its streams (one per store), last sync and lag.

    ``lag_s`` is how old the newest result the aggregator holds from the agent is (what a
    reader of the central history misses); ``since_sync_s`` is the time since its last
    accepted batch. Both use the database's clock.
    """
    rows = conn.execute(
        "SELECT s.agent, s.store, s.high_water, s.skipped, s.lost_total, s.records, "
        "s.first_sync, s.last_sync, s.last_sent_at, s.last_record_time, c.tags, now() "
        "FROM streams s LEFT JOIN agent_certs c ON c.agent = s.agent "
        "ORDER BY s.agent, s.last_sync DESC NULLS LAST, s.store").fetchall()  # fmt: skip
    by_agent: dict[str, list[Any]] = {}
    for row in rows:
        by_agent.setdefault(row[0], []).append(row)
    out = []
    for agent, streams in by_agent.items():
        now, tags = streams[0][11], streams[0][10]
        last_sync = max((s[7] for s in streams if s[7] is not None), default=None)
        last_record = max((s[9] for s in streams if s[9] is not None), default=None)
        out.append({
            "agent": agent, "tags": None if tags is None else list(tags),
            "last_sync": iso(last_sync), "last_record_time": iso(last_record),
            "since_sync_s": _age(now, last_sync), "lag_s": _age(now, last_record),
            "records": sum(s[5] or 0 for s in streams),
            "skipped": sum(s[3] or 0 for s in streams),
            "lost_total": sum(s[4] or 0 for s in streams),
            "stores": [{
                "store": s[1], "high_water": s[2], "records": s[5], "skipped": s[3],
                "lost_total": s[4], "first_sync": iso(s[6]), "last_sync": iso(s[7]),
                "last_sent_at": iso(s[8]), "last_record_time": iso(s[9]),
            } for s in streams],
        })  # fmt: skip
    return out


def _age(now: dt.datetime, then: dt.datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def members(conn: Any, reporter: str | None = None,
            name: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Members as each reporter last described them (its own view, labelled by ``reporter``),
    with the member's certificate tags where the aggregator has seen its certificate."""
    clauses, params = [], []
    for column, value in (("m.reporter", reporter), ("m.name", name)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    rows = conn.execute(
        "SELECT m.reporter, m.name, m.state, m.incarnation, m.address, m.tags, m.version, "
        "m.reported_at, c.tags FROM members m LEFT JOIN agent_certs c ON c.agent = m.name "
        f"{where}ORDER BY m.reporter, m.name", params).fetchall()  # fmt: skip
    return [{
        "reporter": r[0], "name": r[1], "state": r[2], "incarnation": r[3], "address": r[4],
        "tags": list(r[5] or []), "version": r[6], "reported_at": iso(r[7]),
        "certificate_tags": None if r[8] is None else list(r[8]),
    } for r in rows]  # fmt: skip


# --- results --------------------------------------------------------------------------------

_RAW_COLUMNS = "time, agent, check_name, target, kind, success, rtt_ms, loss, error"
_ROLLUP_COLUMNS = ("bucket, agent, check_name, target, count, failures, loss, rtt_min, rtt_avg, "
                   "rtt_max, rtt_p50, rtt_p95, rtt_p99")  # fmt: skip


def results(conn: Any, filters: Filters, resolution: Resolution, limit: int,
            newest_first: bool = False, detail: bool = False,
            latest: bool = False) -> dict[str, Any]:  # fmt: skip
    """Results in the range, raw or one row per rollup bucket and series.

    Args:
        latest: only the newest row of each (agent, check, target) series in the range.

    Returns:
        ``{"resolution", "rows", "truncated"}``; ``truncated`` is true when more than
        ``limit`` rows matched (the oldest ``limit`` are returned, or the newest with
        ``newest_first``).
    """
    order = "DESC" if newest_first else "ASC"
    raw = resolution == "raw"
    time_col = "time" if raw else "bucket"
    columns = (_RAW_COLUMNS + (", payload" if detail else "")) if raw else _ROLLUP_COLUMNS
    table = "results" if raw else _TABLES[resolution]
    where, params = filters.where(time_col, resolution)
    select = f"SELECT {columns} FROM {table} WHERE {where}"
    if latest:
        select = (f"SELECT DISTINCT ON (agent, check_name, target) {columns} FROM {table} "
                  f"WHERE {where} ORDER BY agent, check_name, target, {time_col} DESC")
        select = f"SELECT * FROM ({select}) AS newest"
    rows = conn.execute(f"{select} ORDER BY {time_col} {order}, agent, check_name, target "
                        "LIMIT %s", [*params, limit + 1]).fetchall()  # fmt: skip
    if raw:
        out = [_raw_row(r, detail) for r in rows[:limit]]
    else:
        out = [{
            "time": iso(r[0]), "agent": r[1], "check": r[2], "target": r[3], "count": r[4],
            "failures": r[5], "loss": r[6], "rtt_min_ms": r[7], "rtt_avg_ms": r[8],
            "rtt_max_ms": r[9], "rtt_p50_ms": r[10], "rtt_p95_ms": r[11], "rtt_p99_ms": r[12],
        } for r in rows[:limit]]  # fmt: skip
    return {"resolution": resolution, "rows": out, "truncated": len(rows) > limit}


def _raw_row(r: Sequence[Any], detail: bool) -> dict[str, Any]:
    row = {"time": iso(r[0]), "agent": r[1], "check": r[2], "target": r[3], "kind": r[4],
           "success": r[5], "rtt_ms": r[6], "loss": r[7], "error": r[8]}  # fmt: skip
    if detail:
        from meshmon.results.codec import ResultDecodeError, decode_result, to_dict

        try:
            row["result"] = to_dict(decode_result(bytes(r[9])))["result"]
        except ResultDecodeError as exc:
            row["result"] = {"undecodable": str(exc)}
    return row


# --- aggregates: uptime and the matrix --------------------------------------------------------


def _aggregate_sql(resolution: Resolution) -> tuple[str, str, str]:
    """(select list, table, time column) aggregating results or rollup buckets alike:
    count, failures, mean loss, mean RTT, min RTT, max RTT, first and last time."""
    if resolution == "raw":
        return ("count(*), count(*) FILTER (WHERE NOT success), avg(loss), avg(rtt_ms), "
                "min(rtt_ms), max(rtt_ms), min(time), max(time)", "results", "time")  # fmt: skip
    ok = "(count - failures)"
    return (
        "sum(count), sum(failures), sum(loss * count) / nullif(sum(count), 0), "
        f"sum(rtt_avg * {ok}) FILTER (WHERE rtt_avg IS NOT NULL) / "
        f"nullif(sum({ok}) FILTER (WHERE rtt_avg IS NOT NULL), 0), "
        "min(rtt_min), max(rtt_max), min(bucket), max(bucket)",
        _TABLES[resolution], "bucket",
    )  # fmt: skip


def _stats(values: Sequence[Any]) -> dict[str, Any]:
    count, failures, loss, rtt_avg, rtt_min, rtt_max = values[:6]
    count, failures = int(count or 0), int(failures or 0)
    return {
        "count": count, "failures": failures,
        "loss": None if loss is None else float(loss),
        "rtt_avg_ms": None if rtt_avg is None else float(rtt_avg),
        "rtt_min_ms": None if rtt_min is None else float(rtt_min),
        "rtt_max_ms": None if rtt_max is None else float(rtt_max),
    }  # fmt: skip


def uptime(conn: Any, filters: Filters, resolution: Resolution) -> list[dict[str, Any]]:
    """Per check and target: results counted, failures, and ``uptime_pct`` — the share of
    results that succeeded, every probing agent's results together."""
    select, table, time_col = _aggregate_sql(resolution)
    where, params = filters.where(time_col, resolution)
    rows = conn.execute(
        f"SELECT check_name, target, {select} FROM {table} WHERE {where} "
        "GROUP BY check_name, target ORDER BY check_name, target", params).fetchall()
    out = []
    for r in rows:
        stats = _stats(r[2:8])
        ok = stats["count"] - stats["failures"]
        out.append({
            "check": r[0], "target": r[1], **stats,
            "uptime_pct": 100.0 * ok / stats["count"] if stats["count"] else None,
            "first": iso(r[8]), "last": iso(r[9]),
        })  # fmt: skip
    return out


def agents_with_tag(conn: Any, tag: str) -> list[str]:
    """Agents whose certificate (as seen at ingest) carries ``tag``, sorted."""
    rows = conn.execute("SELECT agent FROM agent_certs WHERE %s = ANY(tags) ORDER BY agent",
                        (tag,)).fetchall()  # fmt: skip
    return [r[0] for r in rows]


def matrix(conn: Any, tag: str, filters: Filters, resolution: Resolution,
           from_tag: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The latency and loss matrix of a tag group, one per check.

    Rows are probing agents (certificate tag ``from_tag``, default ``tag``), columns are target
    agents (certificate tag ``tag``): mesh checks name agents as targets (``target_tags``).
    ``cells[i][j]`` aggregates row i's results on column j over the range (null: none).
    """
    columns = agents_with_tag(conn, tag)
    rows = columns if from_tag is None or from_tag == tag else agents_with_tag(conn, from_tag)
    select, table, time_col = _aggregate_sql(resolution)
    where, params = filters.where(time_col, resolution)
    data = conn.execute(
        f"SELECT check_name, agent, target, {select} FROM {table} WHERE {where} "
        "AND agent = ANY(%s) AND target = ANY(%s) GROUP BY check_name, agent, target "
        "ORDER BY check_name", [*params, rows, columns]).fetchall()  # fmt: skip
    row_index = {name: i for i, name in enumerate(rows)}
    col_index = {name: j for j, name in enumerate(columns)}
    checks: dict[str, list[list[dict[str, Any] | None]]] = {}
    for r in data:
        cells = checks.setdefault(r[0], [[None] * len(columns) for _ in rows])
        cells[row_index[r[1]]][col_index[r[2]]] = _stats(r[3:9])
    return {
        "tag": tag, "rows": rows, "columns": columns,
        "matrices": [{"check": name, "cells": cells} for name, cells in checks.items()],
    }  # fmt: skip


# --- what ingest records --------------------------------------------------------------------


def record_certificate(conn: Any, peer: PeerIdentity) -> None:
    """Remember the certificate an agent uploaded with: its tags are its group membership."""
    conn.execute(
        "INSERT INTO agent_certs (agent, tags, serial, fingerprint, not_after, first_seen, "
        "last_seen) VALUES (%s, %s, %s, %s, %s, now(), now()) ON CONFLICT (agent) DO UPDATE "
        "SET tags = EXCLUDED.tags, serial = EXCLUDED.serial, fingerprint = EXCLUDED.fingerprint, "
        "not_after = EXCLUDED.not_after, last_seen = now()",
        (peer.name, list(peer.tags), format(peer.serial, "x"), peer.fingerprint, peer.not_after))


def ping(conn: Any) -> None:
    """Raise if the database does not answer."""
    conn.execute("SELECT 1").fetchone()
