"""The aggregator's metrics and health, on the listener of ``[aggregator.metrics] listen``.

Theory of operation
-------------------
:class:`Observed` is built first by :func:`serve_metrics` and learns the service's parts as
:mod:`aggregator.server` creates them (the pool, the address HTTPS listens on). It counts what
passes through, once per batch, never per record: every answer of ``POST /v1/ingest`` by HTTP
status (an ASGI wrapper around the application, so refusals from authentication, decoding and
the writer all count alike), the records and inserted rows of accepted batches (a wrapper
around the ingestor), and each batch transaction's duration (the writer's ``on_write`` hook:
lock, COPY and commit).

What lives in the database is read at scrape time, through the pool: whether PostgreSQL answers,
and each agent's stream: how old the newest record it delivered is (``stream_lag``), when it
last synced. Per-agent series are bounded by ``max_series``: the most lagging agents are shown,
the total and the worst lag always. ``/readyz`` asks the database (``SELECT 1``) and whether
HTTPS listens. Nothing is served when ``listen`` is empty, but the counting costs too little to
switch off.
"""

from __future__ import annotations

import collections
import platform
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from meshmon.version import __version__
from meshmon.wire import ingest as wire

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from aggregator.config import ServerConfig
    from aggregator.dbpool import Pool
    from meshmon.metrics.health import Check
    from meshmon.metrics.loop import LoopLag

WRITE_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a batch of 5,000 records commits in tens of milliseconds on a healthy database."""
STATUSES = (200, 400, 401, 403, 409, 413, 422, 503)
"""Ingest answers shown from 0: accepted, bad body, no or bad certificate, not this agent's,
sequence gap, too large, unstorable record, database down."""
INGEST_PATH = "/v1/ingest"
QUERY_TIMEOUT = 5.0
"""Seconds a scrape or a readiness check waits for the database."""


@dataclass
class Observed:
    """The aggregator as its metrics see it (see the module docstring)."""

    config: ServerConfig
    node: str
    started_at: float = field(default_factory=time.time)
    pool: Pool | None = None
    listening: list[tuple[str, int]] | None = None
    batches: collections.Counter[int] = field(default_factory=collections.Counter)
    records: int = 0
    inserted: int = 0
    write_counts: list[int] = field(default_factory=lambda: [0] * (len(WRITE_BOUNDS) + 1))
    write_total: float = 0.0
    queued: Callable[[], int] = lambda: 0
    """Batches waiting for a writer."""

    def observe_write(self, seconds: float) -> None:
        """One batch transaction took ``seconds`` (the writer's hook)."""
        self.write_counts[bisect_left(WRITE_BOUNDS, seconds)] += 1
        self.write_total += seconds

    def wrap_app(self, app: Any) -> Any:
        """The ASGI application, counting ``POST /v1/ingest`` answers by status."""

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") != "http" or scope.get("path") != INGEST_PATH:
                await app(scope, receive, send)
                return

            async def watch(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    self.batches[int(message["status"])] += 1
                await send(message)

            await app(scope, receive, watch)

        return counted

    def wrap_ingestor(self, ingestor: Any) -> _Counted:
        """The ingestor, counting the records and inserted rows of accepted batches."""
        return _Counted(ingestor, self)


class _Counted:
    """An ingestor (:class:`aggregator.app.Ingestor`) that counts what it accepts."""

    def __init__(self, inner: Any, observed: Observed) -> None:
        self.inner, self.observed = inner, observed

    async def ingest_body(self, peer_name: str, body: bytes,
                          encoding: str | None) -> tuple[wire.Ack, int]:  # fmt: skip
        ack, records = await self.inner.ingest_body(peer_name, body, encoding)
        self.observed.records += records
        self.observed.inserted += ack.inserted
        return ack, records


# --- scrape time ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Streams:
    count: int
    agents: int
    skipped: int
    worst: float | None
    rows: list[tuple[str, float, float]]
    """(agent, lag seconds, last sync Unix time), most lagging first."""


def _streams(conn: Any, limit: int) -> _Streams:
    count, agents, skipped, worst = conn.execute(
        "SELECT count(*), count(DISTINCT agent), coalesce(sum(skipped), 0), "
        "extract(epoch FROM now() - min(last_record_time)) FROM streams").fetchone()  # fmt: skip
    rows = conn.execute(
        "SELECT agent, extract(epoch FROM now() - max(last_record_time)), "
        "extract(epoch FROM max(last_sync)) FROM streams WHERE last_record_time IS NOT NULL "
        "GROUP BY agent ORDER BY 2 DESC, agent LIMIT %s", (limit,)).fetchall()  # fmt: skip
    return _Streams(int(count), int(agents), int(skipped),
                    None if worst is None else float(worst),
                    [(str(a), float(lag), float(sync)) for a, lag, sync in rows])  # fmt: skip


async def _query(pool: Pool | None, fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """``(result, "")`` or ``(None, why not)``, within :data:`QUERY_TIMEOUT`."""
    import psycopg

    from aggregator.errors import DatabaseUnavailable

    if pool is None:
        return None, "starting: the database is being prepared"
    with trio.move_on_after(QUERY_TIMEOUT):
        try:
            return await pool.run(fn, *args), ""
        except (DatabaseUnavailable, psycopg.Error) as exc:
            return None, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return None, f"the database did not answer within {QUERY_TIMEOUT:g}s"


async def capture(observed: Observed, lag: LoopLag) -> Callable[[], Iterator[Metric | str]]:
    """Copy the counters and read the streams (on the loop); the result builds the families."""
    streams, _ = await _query(observed.pool, _streams, observed.config.metrics.max_series)
    batches = dict(observed.batches)
    numbers = (observed.records, observed.inserted, list(observed.write_counts),
               observed.write_total, observed.queued())
    loop = (list(lag.counts), lag.total, lag.max_recent)

    def build() -> Iterator[Metric | str]:
        from meshmon.metrics import loop as loop_
        from meshmon.metrics.exposition import by_reason, counter, gauge, histogram

        records, inserted, write_counts, write_total, queued = numbers
        yield gauge("meshmon_build_info", "meshmon's version and the Python running it (1).",
                    labels=["version", "python"],
                    rows=[([__version__, platform.python_version()], 1)])  # fmt: skip
        yield by_reason("meshmon_aggregator_ingest_batches_total",
                        "Answers to POST /v1/ingest (one batch each), by HTTP status: 200 "
                        "accepted, others refused.", {str(k): v for k, v in batches.items()},
                        (str(s) for s in STATUSES), label="status")  # fmt: skip
        yield counter("meshmon_aggregator_ingest_records_total",
                      "Records in accepted batches (a retried batch counts again).", records)
        yield counter("meshmon_aggregator_ingest_rows_inserted_total",
                      "Rows inserted (records not stored before: exactly once).", inserted)
        yield histogram("meshmon_aggregator_copy_seconds",
                        "One batch's transaction: lock its stream, COPY, commit.", [],
                        WRITE_BOUNDS, [([], write_counts, write_total)])  # fmt: skip
        yield gauge("meshmon_aggregator_ingest_queue_length",
                    "Batches waiting for a database writer.", queued)  # fmt: skip
        yield gauge("meshmon_aggregator_database_up",
                    "1 when PostgreSQL answered this scrape's query.", int(streams is not None))
        if streams is not None:
            yield gauge("meshmon_aggregator_streams", "Agent stores that ever uploaded.",
                        streams.count)  # fmt: skip
            yield gauge("meshmon_aggregator_agents", "Agents that ever uploaded.", streams.agents)
            yield counter("meshmon_aggregator_records_skipped_total",
                          "Records agents declared lost before upload (overwritten unsynced).",
                          streams.skipped)  # fmt: skip
            if streams.worst is not None:
                yield gauge("meshmon_aggregator_stream_lag_max_seconds",
                            "Age of the newest record of the most lagging agent.", streams.worst)
            yield gauge("meshmon_aggregator_stream_lag_seconds",
                        "Age of the newest record each agent delivered (its most lagging "
                        "agents, up to metrics.max_series).", labels=["agent"],
                        rows=[([a], lag_) for a, lag_, _ in streams.rows])  # fmt: skip
            yield gauge("meshmon_aggregator_stream_last_sync_timestamp_seconds",
                        "When each agent last uploaded (Unix time).", labels=["agent"],
                        rows=[([a], sync) for a, _, sync in streams.rows])  # fmt: skip
        counts, total, worst_loop = loop
        yield histogram("meshmon_event_loop_lag_seconds",
                        "How late a task asking to wake each second ran: the loop's lag.",
                        [], loop_.BOUNDS, [([], counts, total)])  # fmt: skip
        yield gauge("meshmon_event_loop_lag_max_seconds",
                    "Largest event-loop lag over the last minute.", worst_loop)

    return build


async def readiness(observed: Observed) -> dict[str, Check]:
    """The database answers, and HTTPS listens."""
    from aggregator.queries import ping
    from meshmon.metrics.health import Check

    _, why = await _query(observed.pool, ping)
    database = Check(not why, why or "answers")
    if observed.listening is None:
        https = Check(False, "starting: HTTPS is not listening yet")
    else:
        where = ", ".join(f"{h}:{p}" for h, p in observed.listening)
        https = Check(True, f"listening on {where}")
    return {"database": database, "https": https}


@asynccontextmanager
async def serve_metrics(config: ServerConfig, node: str,
                        error: Callable[[str], Exception]) -> AsyncIterator[Observed]:  # fmt: skip
    """Count from now on, and serve ``/metrics``, ``/healthz``, ``/readyz`` when configured.

    Raises:
        ``error(message)``: the listener cannot be bound (the message names
            ``aggregator.metrics.listen``).
    """
    observed = Observed(config, node)
    address = config.metrics.address
    if address is None:
        yield observed
        return
    from meshmon.metrics import health
    from meshmon.metrics.exposition import Exposition
    from meshmon.metrics.listener import ListenerError, open_listener
    from meshmon.metrics.loop import LoopLag
    from meshmon.startup import find

    lag = LoopLag()

    async def scrape() -> Callable[[], Iterator[Metric | str]]:
        return await capture(observed, lag)

    def ready(_: Any) -> Awaitable[Any]:
        return health.ready(lambda: readiness(observed))

    routes = {"/metrics": Exposition(scrape).handle, "/readyz": ready,
              "/healthz": lambda _: health.alive(observed.started_at, node=node)}  # fmt: skip
    try:
        async with open_listener(address, routes, "aggregator.metrics.listen", lag):
            yield observed
    except* ListenerError as group:
        raise error(str(find(group, ListenerError))) from group
