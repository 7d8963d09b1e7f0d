"""Rollups (``results_1m``, ``results_1h``) and retention, on plain PostgreSQL and TimescaleDB.

Theory of operation
-------------------
Both storage variants expose the same two rollups, one row per bucket x check x target x agent
with ``count, failures, loss, rtt_min, rtt_avg, rtt_max, rtt_p50, rtt_p95, rtt_p99``, so the
query API reads them the same way.

TimescaleDB: they are continuous aggregates (``materialized_only = false``: the not yet
materialised tail is computed from raw rows at query time). :meth:`Rollups.configure` sets, at
every start, the refresh policies, the compression policy and the retention policies from
:class:`Retention`; TimescaleDB's jobs do the rest. :meth:`Rollups.refresh` forces a refresh.

Plain PostgreSQL: the aggregator maintains tables. Every ingest transaction records the time
range of the rows it committed in ``rollup_pending`` (one row per batch). :meth:`Rollups.refresh`
takes those rows, merges them per agent into minute-aligned ranges, and recomputes exactly
those buckets from the raw rows (delete, then insert the aggregate) in one transaction; the
ranges, hour-aligned, go on to ``rollup_pending_1h`` for the hourly rollup, which runs less often
because an hour bucket is recomputed from up to an hour of raw rows (percentiles cannot be
combined from minute rows). Late rows, such as an agent catching up, only add pending ranges:
their buckets are recomputed whenever they arrive. A rollup run sees at least every row whose
pending range it took (same commit), so nothing is missed; rows committed during a run leave
their own pending range for the next one. An advisory lock lets one aggregator at a time run
them when several share a database.

Ingest comes first: while every writer is busy and batches queue (agents catching up after an
outage), a due rollup run waits, up to ``RollupConfig.defer_max``, so the rows go in at the
database's full speed and their rollups follow.

Retention (:meth:`Rollups.maintain`, hourly): day partitions older than the retention of raw
rows and of minute rollups are dropped whole; hour rollups are deleted by bucket. The same job
creates the coming days' partitions.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import trio

from aggregator import partitions
from aggregator.schema import SchemaInfo

log = logging.getLogger(__name__)

ROLLUP_LOCK = 0x6D657368_6D6F6E02
MAINTAIN_LOCK = 0x6D657368_6D6F6E03
MINUTE = 60
HOUR = 3600
DEFER_POLL = 1.0
"""Seconds between looks at the writers while a rollup run waits for them."""

AGGREGATES = """count(*), count(*) FILTER (WHERE NOT x.success), avg(x.loss),
       min(x.rtt_ms), avg(x.rtt_ms), max(x.rtt_ms),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY x.rtt_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY x.rtt_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY x.rtt_ms)"""
"""The rollup columns after ``bucket, check_name, target, agent`` over raw rows ``x`` (the
continuous aggregates in the TimescaleDB migration say the same)."""
COLUMNS = ("bucket, check_name, target, agent, count, failures, loss, rtt_min, rtt_avg, "
           "rtt_max, rtt_p50, rtt_p95, rtt_p99")  # fmt: skip


class RetentionError(ValueError):
    """Retention settings that contradict each other; the message names them."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each level of history is kept (days; ``None`` keeps it for ever)."""

    raw_days: float | None = 30.0
    """Raw results: a month of full detail (a 100-agent mesh at 10 results/s each writes
    ~2.6 M rows a day, ~0.6 GB)."""
    minute_days: float | None = 90.0
    """Minute rollups: a quarter, for zooming into past incidents."""
    hour_days: float | None = 730.0
    """Hour rollups: two years of trends."""
    compress_after_days: float = 7.0
    """TimescaleDB: chunks older than this are compressed (late rows into them still work)."""

    def __post_init__(self) -> None:
        levels = [("raw_days", self.raw_days), ("minute_days", self.minute_days),
                  ("hour_days", self.hour_days)]  # fmt: skip
        for name, value in levels:
            if value is not None and not (value >= 1 and math.isfinite(value)):
                raise RetentionError(f"retention {name}: {value} must be at least 1 day")
        for (short, a), (long, b) in itertools.pairwise(levels):
            if a is None and b is not None:
                raise RetentionError(f"retention {long}: {b} days, but {short} keeps for ever; "
                                     f"{long} must be at least as long as {short}")
            if a is not None and b is not None and b < a:
                raise RetentionError(f"retention {long}: {b} days is shorter than {short} "
                                     f"({a}); rollups are recomputed from raw rows, so they "
                                     "must be kept at least as long")  # fmt: skip


@dataclass(frozen=True, slots=True)
class RollupConfig:
    """When the aggregator's own jobs run (plain PostgreSQL; TimescaleDB runs its policies)."""

    minute_interval: float = 30.0
    """Seconds between minute-rollup runs: the freshest minute rows lag by up to this."""
    hour_interval: float = 300.0
    """Seconds between hour-rollup runs (each recomputes up to an hour of raw rows per touched
    series)."""
    maintain_interval: float = 3600.0
    """Seconds between retention and partition-ahead runs."""
    defer_max: float = 300.0
    """Longest a due rollup run waits while ingest runs at its capacity (agents catching up
    after an outage): the rows first, their rollups at most this much later. A run recomputes
    its buckets from the raw rows, so it costs the database about as much as loading them;
    deferred, it competes with no batch (measured: an hour of 100 agents' results, 3.6 M rows,
    caught up in ~37 s instead of ~60 s)."""


@dataclass(frozen=True, slots=True)
class RefreshStats:
    minute_ranges: int
    minute_rows: int
    hour_ranges: int
    hour_rows: int


class Rollups:
    """Maintains the rollups and retention of one database."""

    def __init__(self, conninfo: str, schema: SchemaInfo, retention: Retention = Retention(),
                 config: RollupConfig = RollupConfig(),
                 busy: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.conninfo = conninfo
        self.schema = schema
        self.retention = retention
        self.config = config
        self.busy = busy
        """Ingest runs at its capacity now (:meth:`aggregator.writer.Ingestor.busy`): rollup
        runs wait, up to ``config.defer_max``."""
        self._waited: set[str] = set()

    # ------------------------------------------------------------------ sync API

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True,
                               application_name="meshmon-aggregator-rollups")  # fmt: skip

    def configure(self, conn: psycopg.Connection[Any]) -> None:
        """TimescaleDB: (re)set its policies from :attr:`retention`. Plain: nothing."""
        if not self.schema.timescale:
            return
        r = self.retention
        conn.execute("SELECT remove_retention_policy('results', if_exists => true)")
        if r.raw_days is not None:
            conn.execute("SELECT add_retention_policy('results', drop_after => %s::interval)",
                         (_days(r.raw_days),))  # fmt: skip
        conn.execute("SELECT remove_compression_policy('results', if_exists => true)")
        conn.execute("SELECT add_compression_policy('results', compress_after => %s::interval)",
                     (_days(r.compress_after_days),))  # fmt: skip
        # The refresh window must stay inside the raw rows kept: refreshing a bucket whose raw
        # rows retention dropped would empty it.
        window = None if r.raw_days is None else _days(max(r.raw_days - 1, 0.5))
        for view, end, every, keep in (("results_1m", "1 minute", "1 minute", r.minute_days),
                                       ("results_1h", "1 hour", "10 minutes", r.hour_days)):
            conn.execute("SELECT remove_continuous_aggregate_policy(%s, if_exists => true)",
                         (view,))  # fmt: skip
            conn.execute("SELECT add_continuous_aggregate_policy(%s, start_offset => "
                         "%s::interval, end_offset => %s::interval, "
                         "schedule_interval => %s::interval)", (view, window, end, every))
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (view,))
            if keep is not None:
                conn.execute("SELECT add_retention_policy(%s, drop_after => %s::interval)",
                             (view, _days(keep)))  # fmt: skip

    def refresh(self, conn: psycopg.Connection[Any]) -> RefreshStats:
        """Bring both rollups up to date with every row committed so far."""
        if self.schema.timescale:
            for view in ("results_1m", "results_1h"):
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
            return RefreshStats(0, 0, 0, 0)
        m_ranges, m_rows = self.refresh_minutes(conn)
        h_ranges, h_rows = self.refresh_hours(conn)
        return RefreshStats(m_ranges, m_rows, h_ranges, h_rows)

    def refresh_minutes(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """Plain PostgreSQL: recompute the minute buckets touched since the last run."""
        return self._refresh(conn, "rollup_pending", "results_1m", MINUTE, "rollup_pending_1h")

    def refresh_hours(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """Plain PostgreSQL: recompute the hour buckets touched since the last run."""
        return self._refresh(conn, "rollup_pending_1h", "results_1h", HOUR, None)

    def maintain(self, conn: psycopg.Connection[Any], now: float | None = None) -> list[str]:
        """Plain PostgreSQL: create the coming days' partitions and apply retention; the names
        of what was dropped (TimescaleDB: its policies do this, nothing here)."""
        if self.schema.timescale:
            return []
        now = time.time() if now is None else now
        with conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (MAINTAIN_LOCK,))
            if not got.fetchone()[0]:  # type: ignore[index]
                return []
        partitions.ensure_around(conn, now)
        dropped: list[str] = []
        r = self.retention
        if r.raw_days is not None:
            dropped += partitions.drop_before(conn, "results",
                                              partitions.first_kept_day(now, r.raw_days))
        if r.minute_days is not None:
            dropped += partitions.drop_before(conn, "results_1m",
                                              partitions.first_kept_day(now, r.minute_days))
        if r.hour_days is not None:
            cur = conn.execute("DELETE FROM results_1h WHERE bucket < to_timestamp(%s)",
                               (now - r.hour_days * 86_400,))  # fmt: skip
            if cur.rowcount:
                dropped.append(f"results_1h: {cur.rowcount} rows")
        return dropped

    # ------------------------------------------------------------------ trio driver

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Configure (TimescaleDB) or refresh and maintain on timers (plain), until cancelled.

        A database outage is logged once and retried at the next tick."""
        await trio.to_thread.run_sync(self._configure_once)
        task_status.started()
        if self.schema.timescale:
            await trio.sleep_forever()
        due = dict.fromkeys(("minute", "hour", "maintain"), trio.current_time())
        every = {"minute": self.config.minute_interval, "hour": self.config.hour_interval,
                 "maintain": self.config.maintain_interval}  # fmt: skip
        failing = False
        while True:
            now = trio.current_time()
            wake = math.inf
            for job in [j for j, at in due.items() if at <= now]:
                if job != "maintain" and self._defer(job, now - due[job]):
                    wake = now + DEFER_POLL
                    continue
                try:
                    await self._run_tick(job)
                    if failing:
                        log.info("rollups: the database is back")
                    failing = False
                except psycopg.OperationalError as exc:
                    if not failing:
                        log.warning("rollups: database unavailable (%s); retrying",
                                    str(exc).strip().splitlines()[0] if str(exc) else exc)
                    failing = True
                due[job] = trio.current_time() + every[job]
            await trio.sleep_until(min([wake, *(at for at in due.values() if at > now)]))

    def _defer(self, job: str, late: float) -> bool:
        """Whether the due ``job`` (a rollup), ``late`` seconds past its time, waits for ingest."""
        if self.busy is not None and late < self.config.defer_max and self.busy():
            self._waited.add(job)
            return True
        if job in self._waited:
            self._waited.discard(job)
            log.info("rollups: the %s rollup ran %.0f s late, after the writers' backlog", job,
                     late)  # fmt: skip
        return False

    async def _run_tick(self, job: str) -> None:
        """:meth:`_tick` in a worker thread; cancelled (the aggregator stops), its query is
        cancelled too, rolling the run back, rather than kept waiting for (a run after a catch-up
        can take a while; the next start runs it again)."""
        running: list[psycopg.Connection[Any]] = []
        try:
            await trio.to_thread.run_sync(self._tick, job, running, abandon_on_cancel=True)
        except trio.Cancelled:
            for conn in running:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel()  # from another thread, as libpq's cancel request is made for
            raise

    def _configure_once(self) -> None:
        try:
            with self.connect() as conn:
                self.configure(conn)
        except psycopg.OperationalError as exc:
            log.warning("rollups: could not configure the policies (%s)", exc)

    def _tick(self, job: str, running: list[psycopg.Connection[Any]] | None = None) -> None:
        with self.connect() as conn:
            if running is not None:
                running.append(conn)
            if job == "minute":
                self.refresh_minutes(conn)
            elif job == "hour":
                self.refresh_hours(conn)
            else:
                self.maintain(conn)

    # ------------------------------------------------------------------ internals

    def _refresh(self, conn: psycopg.Connection[Any], pending: str, table: str, width: int,
                 forward: str | None) -> tuple[int, int]:  # fmt: skip
        with conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (ROLLUP_LOCK,))
            if not got.fetchone()[0]:  # type: ignore[index]
                return 0, 0  # another aggregator is at it; its run covers these rows
            taken = conn.execute(f"DELETE FROM {pending} RETURNING agent, "
                                 "extract(epoch FROM lo)::float8, extract(epoch FROM hi)::float8"
                                 ).fetchall()  # fmt: skip
            ranges = merge_ranges(taken, width, self._oldest(width))
            if not ranges:
                return 0, 0
            agents = [a for a, _, _ in ranges]
            los = [lo for _, lo, _ in ranges]
            his = [hi for _, _, hi in ranges]
            params = {"agents": agents, "los": los, "his": his, "lo": min(los), "hi": max(his),
                      "width": f"{width} seconds"}  # fmt: skip
            ranges_sql = ("SELECT agent, to_timestamp(lo) AS lo, to_timestamp(hi) AS hi FROM "
                          "unnest(%(agents)s::text[], %(los)s::float8[], %(his)s::float8[]) "
                          "AS r(agent, lo, hi)")  # fmt: skip
            conn.execute(f"""
                WITH r AS ({ranges_sql})
                DELETE FROM {table} m USING r
                WHERE m.agent = r.agent AND m.bucket >= r.lo AND m.bucket < r.hi""", params)
            cur = conn.execute(f"""
                WITH r AS ({ranges_sql})
                INSERT INTO {table} ({COLUMNS})
                SELECT date_bin(%(width)s::interval, x.time, TIMESTAMPTZ '2000-01-01 00:00+00'),
                       x.check_name, x.target, x.agent, {AGGREGATES}
                FROM results x JOIN r ON x.agent = r.agent AND x.time >= r.lo AND x.time < r.hi
                WHERE x.time >= to_timestamp(%(lo)s) AND x.time < to_timestamp(%(hi)s)
                GROUP BY 1, 2, 3, 4""", params)  # fmt: skip
            written = max(cur.rowcount, 0)
            if forward is not None:
                conn.execute(f"INSERT INTO {forward} (agent, lo, hi) SELECT agent, "
                             "to_timestamp(lo), to_timestamp(hi) FROM unnest(%(agents)s::text[], "
                             "%(los)s::float8[], %(his)s::float8[]) AS r(agent, lo, hi)", params)
        return len(ranges), written

    def _oldest(self, width: int) -> float:
        """Rows before this are past the rollup's retention: not recomputed."""
        days = self.retention.minute_days if width == MINUTE else self.retention.hour_days
        if days is None:
            return -math.inf
        return partitions.first_kept_day(time.time(), days) * partitions.DAY


def merge_ranges(rows: list[tuple[Any, ...]], width: int,
                 oldest: float = -math.inf) -> list[tuple[str, float, float]]:  # fmt: skip
    """Per agent, the ``[lo, hi)`` ranges of whole buckets of ``width`` seconds covering the
    pending ``(agent, lo, hi)`` rows (inclusive times), overlapping or adjacent ones merged."""
    floor = math.floor(oldest / width) * width if math.isfinite(oldest) else -math.inf
    per_agent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for agent, lo, hi in rows:
        lo_b = math.floor(float(lo) / width) * width
        hi_b = (math.floor(float(hi) / width) + 1) * width
        if hi_b > floor:
            per_agent[str(agent)].append((max(lo_b, floor), hi_b))
    merged: list[tuple[str, float, float]] = []
    for agent, spans in sorted(per_agent.items()):
        spans.sort()
        cur_lo, cur_hi = spans[0]
        for lo, hi in spans[1:]:
            if lo <= cur_hi:
                cur_hi = max(cur_hi, hi)
            else:
                merged.append((agent, cur_lo, cur_hi))
                cur_lo, cur_hi = lo, hi
        merged.append((agent, cur_lo, cur_hi))
    return merged


def _days(days: float) -> str:
    return f"{days * 86_400:.0f} seconds"
