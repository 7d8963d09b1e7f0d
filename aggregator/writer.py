"""The exactly-once COPY path: one agent batch, one transaction.

Theory of operation
-------------------
Each ``(agent, store)`` stream has one row in ``streams`` whose ``high_water`` says that every
seq at or below it is committed. :meth:`BatchWriter.write` handles one batch in one transaction:

1. lock the stream's row (``SELECT ... FOR UPDATE``; inserted first if the stream is new), so
   batches of one stream serialise whichever aggregator and writer handles them;
2. refuse an undeclared gap: a batch starting above ``high_water + 1`` must declare the missing
   seqs overwritten (``after <= high_water``), else 409 with ``expected = high_water + 1``;
3. binary-COPY only the records above ``high_water`` (a retried or overlapping batch inserts
   nothing twice), each with its derived columns (kind, success, RTT, loss, error): sent by
   the agent in a version 2 batch, derived here for a version 1 batch (:mod:`aggregator.rows`);
4. advance ``high_water`` and the stream's counters, replace the agent's member view if the
   batch carries a newer one, note the time range for the rollups (plain PostgreSQL);
5. commit, then answer :class:`~meshmon.wire.ingest.Ack`.

A crash anywhere before the commit leaves nothing; after it, the agent's retry finds its seqs
below the mark. On plain PostgreSQL a record's day partition is created on demand when COPY finds
none (the transaction is retried once), and records older than the retention window are
counted in ``streams.expired`` rather than stored (they would be dropped at once).

:class:`Ingestor` drives writers from trio: psycopg's async connection is asyncio-only, so each
writer owns a sync connection and works in ``trio.to_thread``; batches reach the writers
through a bounded channel, whose back-pressure reaches the HTTP handlers. One writer idles
while each commit is flushed; two overlap one batch's commit with the next batch's COPY; more
gain nothing, the per-row Python work being bound to one core by the GIL (measured on 2 cores,
PostgreSQL 15, 200 k ping/TCP records from 20 agents: 2 writers beat 1 in most paired runs, 4
never beat 2). The COPY stream is built from the batch's columns a block at a time
(:mod:`aggregator.copybin`, ~0.85 µs a row); with decoding and checking a version 2 body
(~0.5 µs a row), that is the aggregator's per-row Python, where decoding each payload of a
version 1 body took ~10 µs.

Errors: :class:`~aggregator.errors.IngestRefused` for the batch's own faults (nothing written),
:class:`~aggregator.errors.DatabaseUnavailable` when PostgreSQL is down or busy (the writer
reconnects on its next batch).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import cbor2
import psycopg
import trio
from psycopg import errors as pgerrors
from psycopg.types.json import Jsonb

from aggregator import copybin, partitions
from aggregator.copybin import COPY_SQL
from aggregator.errors import DatabaseUnavailable, IngestRefused, not_the_peer
from aggregator.procwriter import WriterProcess, answer
from aggregator.rows import from_records
from aggregator.schema import SchemaInfo
from meshmon.wire import ingest as wire_ingest
from meshmon.wire.columns import TS_MIN_US, ColumnBatch, encode_columns
from meshmon.wire.ingest import INCIDENT_CHECK, Ack, Batch, SyncRecord

log = logging.getLogger(__name__)

__all__ = ["Ack", "BatchWriter", "DatabaseUnavailable", "IngestRefused", "Ingestor",
           "IngestorConfig"]  # fmt: skip

BUSY_WINDOW = 2.0
"""Seconds after a batch last waited for a writer during which ingest counts as busy."""
_RETRIES = 3
"""Attempts of one batch after a deadlock, a serialisation failure or a missing partition."""


@dataclass(frozen=True, slots=True)
class IngestorConfig:
    """How the aggregator writes batches."""

    writers: int = 2
    """Connections writing at once. Two overlap one batch's commit with another's COPY; more
    gain nothing on the GIL-bound Python side (see the module docstring)."""
    queue: int = 8
    """Batches waiting for a writer before :meth:`Ingestor.ingest` callers wait in turn."""
    strict_payloads: bool = False
    """Version 1 bodies: check every field of every result (``decode_result``, ~60 µs a record)
    instead of the fields the derived columns need (~2 µs); see :mod:`aggregator.summary`.
    (A version 2 body carries the agent's own summary of each result: nothing to decode.)"""
    raw_retention_days: float | None = None
    """Plain PostgreSQL: records older than this when they arrive are counted, not stored."""
    connect_timeout: float = 5.0
    """Seconds to wait for PostgreSQL when (re)connecting."""
    processes: int = 0
    """Writers in child processes (:mod:`aggregator.procwriter`), each decoding the bodies it
    is handed and writing them; 0: ``writers`` threads of this process."""


@dataclass(slots=True)
class _Outcome:
    inserted: int = 0
    expired: int = 0
    lo: float = math.inf
    hi: float = -math.inf


class BatchWriter:
    """Writes batches on one sync connection, one transaction each (not thread-safe: one
    thread at a time)."""

    def __init__(self, conninfo: str, schema: SchemaInfo,
                 config: IngestorConfig = IngestorConfig()) -> None:  # fmt: skip
        self.conninfo = conninfo
        self.schema = schema
        self.config = config
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def write(self, peer_name: str, batch: Batch | ColumnBatch) -> Ack:
        """Commit ``batch`` exactly once and acknowledge it.

        Raises:
            IngestRefused: the batch is not the peer's, has an undeclared gap, or a record
                cannot be stored; nothing was written.
            DatabaseUnavailable: PostgreSQL is down or busy; nothing is known to be written.
        """
        if peer_name != batch.agent:
            raise IngestRefused(403, f"agent: the batch says {batch.agent!r} but the client "
                                f"certificate is {peer_name!r}; an agent uploads only its own "
                                "results")  # fmt: skip
        for attempt in range(_RETRIES):
            conn = self._connection()
            try:
                return self._transaction(conn, batch)
            except _MissingPartition:
                self._create_partitions(conn, batch)
            except pgerrors.TransactionRollback as exc:
                log.info("batch of %s retried after %s", batch.agent, exc.sqlstate)
            except (IngestRefused, DatabaseUnavailable):
                raise
            except pgerrors.DataError as exc:
                raise IngestRefused(422, _data_error(batch, exc)) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.close()
                raise DatabaseUnavailable(f"database unavailable: {_short(exc)}") from exc
            if attempt == _RETRIES - 1:
                break
        raise DatabaseUnavailable("database busy: the batch kept conflicting; retry later")

    # ------------------------------------------------------------------ internals

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.close()
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True,
                                   connect_timeout=max(1, round(self.config.connect_timeout)),
                                   application_name="meshmon-aggregator")  # fmt: skip
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"database unavailable: {_short(exc)}") from exc
        self._conn = conn
        return conn

    def _transaction(self, conn: psycopg.Connection[Any], batch: Batch | ColumnBatch) -> Ack:
        with conn.transaction():
            high_water = self._lock_stream(conn, batch)
            skipped = 0
            if batch.first > high_water + 1:
                if batch.after > high_water:
                    raise IngestRefused(
                        409, f"sequence gap: the aggregator has {batch.agent}/{batch.store} up "
                        f"to seq {high_water}, the batch starts at {batch.first} and declares "
                        f"nothing skipped before {batch.after + 1}; resume from "
                        f"{high_water + 1}", expected=high_water + 1)  # fmt: skip
                skipped = batch.first - 1 - high_water
            outcome = _Outcome()
            start = max(0, high_water + 1 - batch.first)
            if start <= batch.last - batch.first:
                outcome = self._copy(conn, batch, start)
            new_mark = max(high_water, batch.last)
            self._update_stream(conn, batch, new_mark, skipped, outcome)
            if batch.members is not None:
                self._report_members(conn, batch)
            if outcome.inserted and not self.schema.timescale:
                conn.execute("INSERT INTO rollup_pending (agent, lo, hi) VALUES "
                             "(%s, to_timestamp(%s), to_timestamp(%s))",
                             (batch.agent, outcome.lo, outcome.hi))  # fmt: skip
        return Ack(high_water=new_mark, inserted=outcome.inserted)

    @staticmethod
    def _lock_stream(conn: psycopg.Connection[Any], batch: Batch | ColumnBatch) -> int:
        query = "SELECT high_water FROM streams WHERE agent = %s AND store = %s FOR UPDATE"
        row = conn.execute(query, (batch.agent, batch.store)).fetchone()
        if row is None:
            conn.execute("INSERT INTO streams (agent, store) VALUES (%s, %s) "
                         "ON CONFLICT DO NOTHING", (batch.agent, batch.store))  # fmt: skip
            row = conn.execute(query, (batch.agent, batch.store)).fetchone()
            assert row is not None
        return int(row[0])

    def _copy(self, conn: psycopg.Connection[Any], batch: Batch | ColumnBatch,
              start: int) -> _Outcome:  # fmt: skip
        """COPY the records from ``start`` (an index into the batch) on."""
        if isinstance(batch, Batch):  # version 1: the columns are derived here
            cols, start = from_records(batch, start, self.config.strict_payloads), 0
        else:
            cols = batch
        ts = cols.ts_us
        n = len(ts)
        rows: range | list[int] = range(start, n)
        cutoff = self._cutoff_us()
        expired = 0
        if min(ts[start:]) < cutoff:
            rows = [i for i in rows if ts[i] >= cutoff]
            expired = n - start - len(rows)
        incidents: list[SyncRecord] = []
        if INCIDENT_CHECK in map(itemgetter(0), cols.series):  # in C: a batch may hold thousands
            incident_series = [k for k, s in enumerate(cols.series) if s[0] == INCIDENT_CHECK]
            six, skip = cols.series_ix, set(incident_series)
            spans = cols.spans()
            incidents = [_incident(cols, i, spans) for i in rows if six[i] in skip]
            rows = [i for i in rows if six[i] not in skip]
        out = _Outcome(expired=expired)
        if rows:
            try:
                with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                    for block in copybin.blocks(cols, rows):
                        copy.write(block)
            except pgerrors.CheckViolation as exc:
                if "no partition" in str(exc):
                    raise _MissingPartition from None
                raise
            if isinstance(rows, range):
                lo, hi = min(ts[rows.start :]), max(ts[rows.start :])
            else:
                lo, hi = min(map(ts.__getitem__, rows)), max(map(ts.__getitem__, rows))
            out.lo, out.hi = lo / 1e6, hi / 1e6
        out.inserted = len(rows) + _insert_incidents(conn, batch, incidents)
        return out

    def _cutoff_us(self) -> int:
        """Records older than this (Unix µs) are counted as expired, not stored."""
        cutoff = self._cutoff()
        return TS_MIN_US if cutoff == -math.inf else math.ceil(cutoff * 1e6)

    def _cutoff(self) -> float:
        days = self.config.raw_retention_days
        if days is None or self.schema.timescale:
            return -math.inf
        return partitions.first_kept_day(time.time(), days) * partitions.DAY

    @staticmethod
    def _update_stream(conn: psycopg.Connection[Any], batch: Batch | ColumnBatch, new_mark: int,
                       skipped: int,
                       out: _Outcome) -> None:  # fmt: skip
        conn.execute("""
            UPDATE streams SET
                high_water = %(mark)s,
                skipped = skipped + %(skipped)s,
                lost_total = greatest(lost_total, %(lost)s),
                records = records + %(inserted)s,
                expired = expired + %(expired)s,
                last_sync = now(),
                last_sent_at = CASE WHEN %(sent)s > 0
                    THEN greatest(last_sent_at, to_timestamp(%(sent)s)) ELSE last_sent_at END,
                last_record_time = greatest(last_record_time, to_timestamp(%(newest)s))
            WHERE agent = %(agent)s AND store = %(store)s""", {
            "mark": new_mark, "skipped": skipped, "lost": batch.lost_total,
            "inserted": out.inserted, "expired": out.expired, "sent": batch.sent_at,
            "newest": out.hi if out.inserted else None, "agent": batch.agent,
            "store": batch.store})  # fmt: skip

    @staticmethod
    def _report_members(conn: psycopg.Connection[Any], batch: Batch | ColumnBatch) -> None:
        """Replace the agent's member view, unless a newer one is already stored."""
        assert batch.members is not None
        sent = batch.sent_at if batch.sent_at > 0 else time.time()
        newer = conn.execute("SELECT 1 FROM members WHERE reporter = %s "
                             "AND reported_at > to_timestamp(%s) LIMIT 1",
                             (batch.agent, sent)).fetchone()  # fmt: skip
        if newer:
            return
        conn.execute("DELETE FROM members WHERE reporter = %s", (batch.agent,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO members (reporter, name, state, incarnation, address, tags, version,"
                " reported_at) VALUES (%s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
                [(batch.agent, m.name, m.state, m.incarnation, m.address, list(m.tags),
                  m.version, sent) for m in batch.members])  # fmt: skip

    def _create_partitions(self, conn: psycopg.Connection[Any], batch: Batch | ColumnBatch,
                           ) -> None:  # fmt: skip
        cutoff = self._cutoff()
        if isinstance(batch, Batch):
            days = {partitions.day_of(r.ts) for r in batch.records if r.ts >= cutoff}
        else:
            day = partitions.DAY * 1_000_000
            days = {t // day for t in batch.ts_us if t >= cutoff * 1e6}
        missing = days - partitions.existing_days(conn)
        if len(missing) > partitions.MAX_ON_DEMAND:
            raise IngestRefused(422, f"records: times spread over {len(missing)} days without a "
                                f"partition (at most {partitions.MAX_ON_DEMAND} are created for "
                                "one batch); is the agent's clock wrong?")  # fmt: skip
        try:
            partitions.create_days(conn, missing)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database busy creating partitions: {_short(exc)}") from exc


def _incident(cols: ColumnBatch, i: int, spans: tuple[list[int], list[int]]) -> SyncRecord:
    """Record ``i`` of the batch (``spans``: where each payload starts and ends)."""
    check, target = cols.series[cols.series_ix[i]]
    return SyncRecord(cols.first + i, cols.ts_us[i] / 1e6, check, target,
                      cols.payloads[spans[0][i] : spans[1][i]])  # fmt: skip


def _insert_incidents(conn: psycopg.Connection[Any], batch: Batch | ColumnBatch,
                      records: list[SyncRecord]) -> int:  # fmt: skip
    """Incident history records (check ``_alerts``) into ``incidents``; a malformed one is
    refused like a malformed result (422, nothing written)."""
    rows = []
    for rec in records:
        where = f"records[{rec.seq - batch.first}].payload"
        try:
            d = cbor2.loads(rec.payload)
            rows.append((dt.datetime.fromtimestamp(rec.ts, dt.UTC), batch.agent, batch.store,
                         rec.seq, str(d["id"]), str(d["event"]), str(d["kind"]), str(d["rule"]),
                         str(d["check"]), str(d["target"]),
                         dt.datetime.fromtimestamp(float(d["opened_at"]), dt.UTC),
                         None if d.get("resolved_at") is None
                         else dt.datetime.fromtimestamp(float(d["resolved_at"]), dt.UTC),
                         [str(p) for p in d.get("probers", [])], Jsonb(d)))  # fmt: skip
        except (ValueError, TypeError, KeyError, OverflowError, cbor2.CBORDecodeError) as exc:
            raise IngestRefused(422, f"{where}: not an incident record ({exc})") from None
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO incidents (time, agent, store, seq, incident_id, event, kind, rule, "
                "check_name, target, opened_at, resolved_at, probers, detail) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    return len(rows)


class _MissingPartition(Exception):
    """COPY met a record whose day has no partition yet."""


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _data_error(batch: Batch | ColumnBatch, exc: pgerrors.DataError) -> str:
    """Name the record PostgreSQL refused, when it is one of ours we can find."""
    pairs = ((f"records[{i}]", (r.check, r.target)) for i, r in enumerate(batch.records)) \
        if isinstance(batch, Batch) else ((f"series[{k}]", s) for k, s in enumerate(batch.series))
    for where, (check, target) in pairs:
        for name, value in (("check", check), ("target", target)):
            if "\x00" in value:
                return f"{where}.{name}: contains a NUL character"
    return f"records: PostgreSQL refused a value ({_short(exc)})"


# ---------------------------------------------------------------------- trio driver


@dataclass(slots=True)
class _Job:
    peer: str
    batch: Batch | ColumnBatch | None
    body: tuple[bytes, str | None] | None = None
    """A request body and its encoding, for a writer process to decode (``batch`` is None)."""
    done: trio.Event = field(default_factory=trio.Event)
    ack: Ack | None = None
    records: int = 0
    error: BaseException | None = None


DECODERS = 2
"""Request bodies decoded at once when the writers are threads (in worker threads): more would
only take turns with the GIL, each holding its body and its decoded columns in memory
meanwhile."""


class Ingestor:
    """Exactly-once ingest from trio: :meth:`run` in a nursery, :meth:`ingest` per request.

    Example::

        ingestor = Ingestor(url, schema)
        await nursery.start(ingestor.run)
        ack = await ingestor.ingest(peer_name, batch)
    """

    def __init__(self, conninfo: str, schema: SchemaInfo,
                 config: IngestorConfig = IngestorConfig()) -> None:  # fmt: skip
        self.conninfo = conninfo
        self.schema = schema
        self.config = config
        self._send: trio.MemorySendChannel[_Job] | None = None
        self.on_write: Callable[[float], None] | None = None
        """Called with the seconds of each batch's transaction (the COPY latency metric)."""
        self._queued_at = -math.inf
        """When a batch last had to wait for a writer (trio's clock)."""
        self._decoding = trio.CapacityLimiter(DECODERS)

    def queued(self) -> int:
        """Batches waiting for a writer."""
        send = self._send
        return 0 if send is None else send.statistics().current_buffer_used

    def busy(self) -> bool:
        """A batch had to wait for a writer within the last :data:`BUSY_WINDOW` seconds: ingest
        runs at its capacity (agents catching up), which the rollups leave to it for a while
        (:mod:`aggregator.rollups`)."""
        return trio.current_time() - self._queued_at < BUSY_WINDOW

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writers until cancelled (the batches in hand finish; queued ones get
        :class:`DatabaseUnavailable`)."""
        send, receive = trio.open_memory_channel[_Job](self.config.queue)
        writers: list[BatchWriter | WriterProcess] = (
            [WriterProcess(self.conninfo, self.schema, self.config)
             for _ in range(self.config.processes)] if self.config.processes else
            [BatchWriter(self.conninfo, self.schema, self.config)
             for _ in range(max(1, self.config.writers))])  # fmt: skip
        for writer in writers:
            if isinstance(writer, WriterProcess):
                await trio.to_thread.run_sync(writer.start)
        try:
            async with trio.open_nursery() as nursery:
                for writer in writers:
                    nursery.start_soon(self._work, writer, receive)
                self._send = send
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._send = None
            send.close()
            while True:
                try:
                    job = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                job.error = DatabaseUnavailable("database unavailable: the aggregator is stopping")
                job.done.set()
            receive.close()
            for writer in writers:
                await trio.to_thread.run_sync(writer.close)

    async def ingest(self, peer_name: str, batch: Batch | ColumnBatch) -> Ack:
        """Commit ``batch`` exactly once (see :meth:`BatchWriter.write`).

        Raises:
            IngestRefused: 403 / 409 / 422, nothing written.
            DatabaseUnavailable: PostgreSQL down or busy, or the ingestor is not running.
        """
        if self.config.processes:  # a writer process takes the batch as a body
            body, encoding = wire_ingest.encode_batch(batch) if isinstance(batch, Batch) \
                else encode_columns(batch)  # fmt: skip
            return (await self.ingest_body(peer_name, body, encoding))[0]
        return (await self._submit(_Job(peer_name, batch))).ack  # type: ignore[return-value]

    async def ingest_body(self, peer_name: str, body: bytes,
                          encoding: str | None) -> tuple[Ack, int]:  # fmt: skip
        """Decode a request body and commit it exactly once: (the acknowledgement, records in
        the batch). In a writer process when there are some, else in a thread of this one.

        Raises:
            wire.BatchError: the body does not decode (answer 400).
            IngestRefused: 403 / 409 / 422, nothing written.
            DatabaseUnavailable: PostgreSQL down or busy, or the ingestor is not running.
        """
        if self.config.processes:
            job = await self._submit(_Job(peer_name, None, (body, encoding)))
            assert job.ack is not None
            return job.ack, job.records
        # in a worker thread: inflating releases the GIL, and the event loop stays free
        batch = await trio.to_thread.run_sync(wire_ingest.decode_batch, body, encoding,
                                              limiter=self._decoding)  # fmt: skip
        if batch.agent != peer_name:
            raise not_the_peer(batch.agent, peer_name)
        job = await self._submit(_Job(peer_name, batch))
        assert job.ack is not None
        return job.ack, len(batch.records) if isinstance(batch, Batch) else batch.count

    async def _submit(self, job: _Job) -> _Job:
        send = self._send
        if send is None:
            raise DatabaseUnavailable("database unavailable: the ingestor is not running")
        try:
            await send.send(job)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise DatabaseUnavailable("database unavailable: the ingestor stopped") from None
        if send.statistics().current_buffer_used:
            self._queued_at = trio.current_time()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job

    async def _work(self, writer: BatchWriter | WriterProcess,
                    receive: trio.MemoryReceiveChannel[_Job]) -> None:  # fmt: skip
        async for job in receive:
            started = time.perf_counter()
            if receive.statistics().current_buffer_used:
                self._queued_at = trio.current_time()
            try:
                if job.body is not None:
                    reply = await trio.to_thread.run_sync(writer.call, job.peer,  # type: ignore[union-attr]
                                                          *job.body)  # fmt: skip
                    job.ack, job.records, _ = answer(reply)
                else:
                    job.ack = await trio.to_thread.run_sync(writer.write, job.peer,  # type: ignore[union-attr]
                                                            job.batch)  # fmt: skip
                if self.on_write is not None:
                    self.on_write(time.perf_counter() - started)
            except (IngestRefused, DatabaseUnavailable, wire_ingest.BatchError) as exc:
                job.error = exc
            except Exception as exc:
                log.exception("ingest of a batch from %s failed", job.peer)
                job.error = exc
            finally:
                job.done.set()
