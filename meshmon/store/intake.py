"""Checking a batch of records before the store gives them seqs. Pure functions.

``append_batch`` takes ``(ts, check, target, payload)`` tuples, or ``(ts, check, target,
payload, summary)`` where ``summary`` is ``(word, rtt)`` (what the writer says of the record,
kept beside it in the frame's summary columns, see :mod:`meshmon.store.batch`) or ``None``, from
callers the store cannot trust to be careful: a plugin's odd payload or a NaN timestamp must
fail the whole batch with :class:`~meshmon.store.errors.InvalidRecord` before anything is
written, never half of it. :func:`split_batch` does every check and hands back the columns the
writer frames.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add
from typing import Any

import cbor2

from meshmon.store.errors import InvalidRecord
from meshmon.store.index import SeriesTable

RecordIn = tuple[float, str, str, Any] | tuple[float, str, str, Any, "tuple[int, float] | None"]
"""What ``append_batch`` takes: (timestamp, check, target, payload bytes or a CBOR-able value),
perhaps with a summary ``(word, rtt)`` (a uint32 and a float; NaN: no RTT) or ``None``."""
Summaries = tuple[Sequence[int], Sequence[float]]
"""A batch's summary columns: words (0: none) and RTTs (NaN: none)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A checked batch, as columns in append order."""

    tss: tuple[float, ...]
    checks: tuple[str, ...]
    targets: tuple[str, ...]
    payloads: tuple[bytes, ...]
    sids: list[int]
    """Series ids (interned now if new)."""
    summaries: Summaries | None = None
    """The summary columns, if any record has a summary."""

    def rows(self, start: int) -> list[tuple[float, str, str, bytes, Any]]:
        """Records ``start ..`` as ``(ts, check, target, payload, summary or None)``."""
        sums = list(zip(*self.summaries, strict=True)) if self.summaries else [None] * len(
            self.tss)  # fmt: skip
        return list(zip(self.tss, self.checks, self.targets, self.payloads, sums,
                        strict=True))[start:]  # fmt: skip


def encode_payload(value: Any) -> bytes:
    """``value`` as CBOR bytes (bytes pass through as already encoded)."""
    if type(value) is bytes:
        return value
    try:
        return cbor2.dumps(value)
    except Exception as exc:
        raise InvalidRecord(f"payload cannot be encoded as CBOR: {exc}") from None


def intern(series: SeriesTable, check: str, target: str) -> int:
    """The series id of (check, target), interned if new; a bad name is an InvalidRecord."""
    try:
        return series.intern(check, target)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from None


def split_batch(records: Sequence[RecordIn], series: SeriesTable, max_record: int) -> Batch:
    """Check ``records`` (at least one) and return them as columns.

    Raises:
        InvalidRecord: a record is not a 4-tuple, a timestamp is not finite, a payload cannot
            be encoded, a name is refused by the series table, or a record would not fit in
            ``max_record`` bytes (series key + payload). Nothing is half-done: new series may
            have been interned, which costs nothing and is harmless.
    """
    try:
        columns = list(zip(*records, strict=True))
    except (TypeError, ValueError):
        columns = _evened(records)
    if len(columns) == 4:
        tss, checks, targets, payloads = columns
        summaries = None
    elif len(columns) == 5:
        tss, checks, targets, payloads, given = columns
        summaries = summary_columns(given)
    else:
        raise InvalidRecord("each record must be a (ts, check, target, payload) tuple, "
                            "perhaps with a summary")  # fmt: skip
    try:
        finite = all(map(math.isfinite, tss))
    except TypeError:
        finite = False
    if not finite:
        raise InvalidRecord("every timestamp must be a finite number of seconds")
    if set(map(type, payloads)) != {bytes}:
        payloads = tuple(map(encode_payload, payloads))
    found = list(map(series.by_pair.get, zip(checks, targets, strict=True)))
    if None in found:
        sids = [intern(series, c, t) for c, t in zip(checks, targets, strict=True)]
    else:
        sids = found  # type: ignore[assignment]
    blens = list(map(add, map(len, map(series.keys.__getitem__, sids)), map(len, payloads)))
    if max(blens) > max_record:
        raise InvalidRecord(f"a record of {max(blens)} bytes does not fit in a segment "
                            f"(at most {max_record}); raise store.segment_bytes")  # fmt: skip
    return Batch(tss, checks, targets, payloads, sids, summaries)


def _evened(records: Sequence[RecordIn]) -> list[tuple[Any, ...]]:
    """The columns of records of 4 and 5 items (a batch gathered from several callers), the
    missing summaries as ``None``."""
    try:
        if not {len(r) for r in records} <= {4, 5}:
            raise TypeError
        return list(zip(*(r if len(r) == 5 else (*r, None) for r in records), strict=True))
    except TypeError:
        raise InvalidRecord("each record must be a (ts, check, target, payload) tuple, "
                            "perhaps with a summary") from None  # fmt: skip


def summary_columns(given: Sequence[Any]) -> Summaries | None:
    """The summary columns of the records' summaries (``None`` if none has one).

    Raises:
        InvalidRecord: a summary is not (an unsigned 32-bit word, a float).
    """
    if None in given:
        if given.count(None) == len(given):
            return None
        given = [(0, math.nan) if s is None else s for s in given]
    try:
        words, rtts = zip(*given, strict=True)
        return array("I", words), array("d", rtts)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRecord("a summary must be (word, rtt): an unsigned 32-bit integer and a "
                            "float") from None  # fmt: skip
