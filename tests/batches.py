"""Sync batches of realistic results for the aggregator's tests (agent-side shapes, no agent)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence

import psycopg

from meshmon import results as r
from meshmon.results import ResultDecodeError, decode_result
from meshmon.results.encoded import encoded, stored_value
from meshmon.store import StoredColumns
from meshmon.sync.build import RecordReader
from meshmon.wire.columns import ColumnBatch, column_batch
from meshmon.wire.ingest import INCIDENT_CHECK, Batch, MemberReport, SyncRecord

CHECKS = (("ping-lan", "10.0.0.1"), ("ping-lan", "10.0.0.2"), ("tcp-web", "10.0.0.3:443"))


def result_for(agent: str, check: str, target: str, ts: float, seq: int,
               rng: random.Random) -> r.MonitoringResult:  # fmt: skip
    """A plausible result: pings with some loss, TCP connects that sometimes fail."""
    if check.startswith("tcp"):
        ok = rng.random() > 0.2
        return r.TcpConnect(agent=agent, check=check, target=target, family=4, started_at=ts,
                            duration_ms=2.0, seq=seq,
                            result=r.TcpConnectResult(ok, round(rng.uniform(0.1, 5), 3) if ok
                                                      else None, None if ok else "refused",
                                                      "10.0.0.3", 443))  # fmt: skip
    sent = 3
    got = rng.choice((3, 3, 3, 2, 0))
    rtts = tuple(round(rng.uniform(0.05, 20.0), 3) for _ in range(got))
    avg = sum(rtts) / got if got else None
    return r.Ping(agent=agent, check=check, target=target, family=4, started_at=ts,
                  duration_ms=3.0, seq=seq,
                  result=r.PingResult(got, sent - got, rtts, (), avg, target))  # fmt: skip


def records(agent: str, first: int, count: int, t0: float, step: float = 0.5,
            seed: int = 0) -> list[SyncRecord]:  # fmt: skip
    """``count`` records with seqs from ``first``, times from ``t0`` every ``step`` seconds."""
    rng = random.Random(f"{agent}/{first}/{seed}")
    out = []
    for i in range(count):
        seq = first + i
        check, target = CHECKS[seq % len(CHECKS)]
        ts = t0 + i * step
        payload = r.encode_result(result_for(agent, check, target, ts, seq, rng))
        out.append(SyncRecord(seq, ts, check, target, payload))
    return out


def batch(agent: str, store: str, recs: Sequence[SyncRecord], after: int | None = None,
          members: tuple[MemberReport, ...] | None = None, lost_total: int = 0,
          sent_at: float = 0.0) -> Batch:  # fmt: skip
    """A batch of ``recs`` (contiguous); ``after`` defaults to the seq before the first."""
    first = recs[0].seq if recs else (after or 0) + 1
    after = first - 1 if after is None else after
    return Batch(agent=agent, store=store, after=after, first=first,
                 last=first + len(recs) - 1, records=tuple(recs),
                 skipped_before=first - after - 1, lost_total=lost_total, sent_at=sent_at,
                 members=members)  # fmt: skip


def split(agent: str, store: str, recs: Sequence[SyncRecord], size: int) -> Iterable[Batch]:
    for i in range(0, len(recs), size):
        yield batch(agent, store, recs[i:i + size])


def digest(rows: Iterable[tuple[object, ...]]) -> str:
    """An order-independent checksum of ``(agent, store, seq, payload)`` rows."""
    lines = sorted(f"{a}/{s}/{q}/{hashlib.sha256(bytes(p)).hexdigest()}"  # type: ignore[arg-type]
                   for a, s, q, p in rows)  # fmt: skip
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def records_digest(agent: str, store: str, recs: Iterable[SyncRecord]) -> str:
    return digest((agent, store, rec.seq, rec.payload) for rec in recs)


def db_digest(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, str]:
    """Row count and checksum of the results table."""
    rows = conn.execute("SELECT agent, store, seq, payload FROM results").fetchall()
    return len(rows), digest(rows)


def stored_columns(recs: Sequence[SyncRecord], degraded: bool = False,
                   summaries: bool = False) -> StoredColumns:  # fmt: skip
    """``recs`` as the agent's store hands them to the uploader: each payload stored as
    ``[encoded result, degraded]`` (incident records, check ``_alerts``, as they are), and with
    ``summaries`` each result's summary where it has one, as the agent appends it
    (:meth:`meshmon.results.encoded.EncodedResult.stored`)."""
    out = StoredColumns(recs[0].seq if recs else 1)
    ids: dict[tuple[str, str], int] = {}
    for rec in recs:
        gid = ids.setdefault((rec.check, rec.target), len(ids))
        out.names[gid] = (rec.check, rec.target)
        stored = rec.payload if rec.check == INCIDENT_CHECK else stored_value(rec.payload,
                                                                               degraded)
        word, rtt = summary_of(rec.payload) if summaries else (0, math.nan)
        out.words.append(word)
        out.rtts.append(rtt)
        out.tss.append(rec.ts)
        out.gids.append(gid)
        out.payloads += stored
        out.plens.append(len(stored))
    return out


def summary_of(payload: bytes) -> tuple[int, float]:
    """The summary the agent stores beside ``payload`` ((0, NaN): none)."""
    try:
        result = decode_result(payload)
    except ResultDecodeError:
        return 0, math.nan
    return encoded(result).stored(False)[1] or (0, math.nan)


def columns(agent: str, store: str, recs: Sequence[SyncRecord], after: int | None = None,
            members: tuple[MemberReport, ...] | None = None, lost_total: int = 0,
            sent_at: float = 0.0, reader: RecordReader | None = None) -> ColumnBatch:  # fmt: skip
    """``recs`` as a version 2 batch, built the way the agent's uploader builds it."""
    first = recs[0].seq if recs else (after or 0) + 1
    after = first - 1 if after is None else after
    fields = (reader or RecordReader(agent)).columns(stored_columns(recs))
    return column_batch(agent=agent, store=store, after=after, first=first,
                        last=first + len(recs) - 1, skipped_before=first - after - 1,
                        lost_total=lost_total, sent_at=sent_at, members=members,
                        **fields)  # fmt: skip
