"""A version 1 batch as columns: the aggregator derives what a version 2 agent sends.

Theory of operation
-------------------
The writer loads columns (:class:`~meshmon.wire.columns.ColumnBatch`, see
:mod:`aggregator.copybin`). A version 1 body carries records one by one and leaves the
derived columns to the aggregator, so :func:`from_records` builds the columns of the records
at and after ``start`` (those above the stream's high-water mark: a retried batch's older
records are neither decoded nor checked, as they will not be stored), deriving each result's
summary with :func:`meshmon.results.summary.summarize`, and refuses what the database cannot
hold (422 naming ``records[i]`` and the field: a time outside the years 1 to 9999, a payload
that is not a result). Incident history records (check ``_alerts``) are not results: their
outcome is not derived.
"""

from __future__ import annotations

from array import array

from aggregator.errors import IngestRefused
from meshmon.results import ResultDecodeError
from meshmon.results.summary import Summary, fast, summarize
from meshmon.wire.columns import INCIDENT, ColumnBatch, Outcome
from meshmon.wire.ingest import INCIDENT_CHECK, Batch

TS_MIN, TS_MAX = -62_135_596_800.0, 253_402_300_799.0
"""Years 1 to 9999: what Python's datetime (and so every reader of the table) can hold."""


def from_records(batch: Batch, start: int, strict: bool = False) -> ColumnBatch:
    """Records ``start ..`` of ``batch`` as columns, their summaries derived.

    Raises:
        IngestRefused: 422 naming the record and field the database cannot hold.
    """
    records = batch.records[start:]
    series: dict[tuple[str, str], int] = {}
    outcomes: dict[Outcome, int] = {}
    ts_us, series_ix, outcome_ix = array("q"), array("H"), array("H")
    rtts, lens = array("d"), array("I")
    for i, rec in enumerate(records, start):
        ts = rec.ts
        if not TS_MIN <= ts <= TS_MAX:  # also NaN
            raise IngestRefused(422, f"records[{i}].ts: {ts!r} is not a time between the years "
                                "1 and 9999")  # fmt: skip
        if rec.check == INCIDENT_CHECK:
            outcome, rtt = INCIDENT, None
        else:
            kind, ok, rtt, loss, error = _summary(i, rec.payload, strict)
            outcome = Outcome(kind, ok, loss, error)
        ts_us.append(round(ts * 1e6))
        series_ix.append(series.setdefault((rec.check, rec.target), len(series)))
        outcome_ix.append(outcomes.setdefault(outcome, len(outcomes)))
        rtts.append(float("nan") if rtt is None else rtt)
        lens.append(len(rec.payload))
    return ColumnBatch(
        agent=batch.agent, store=batch.store, after=batch.after, first=batch.first + start,
        last=batch.last, skipped_before=batch.skipped_before, lost_total=batch.lost_total,
        sent_at=batch.sent_at, members=batch.members, ts_us=ts_us, series=tuple(series),
        series_ix=series_ix, outcomes=tuple(outcomes), outcome_ix=outcome_ix, rtt_ms=rtts,
        payload_len=lens, payloads=b"".join(rec.payload for rec in records),
    )  # fmt: skip


def _summary(i: int, payload: bytes, strict: bool) -> Summary:
    found = None if strict else fast(payload)
    if found is not None:
        return found
    try:
        return summarize(payload, strict=strict)
    except ResultDecodeError as exc:
        raise IngestRefused(422, f"records[{i}].payload: {exc}") from None
