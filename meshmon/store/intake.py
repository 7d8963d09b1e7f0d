"""Checking a batch of records before the store gives them seqs. Pure functions.

``append_batch`` takes ``(ts, check, target, payload)`` tuples from callers the store cannot
trust to be careful: a plugin's odd payload or a NaN timestamp must fail the whole batch with
:class:`~meshmon.store.errors.InvalidRecord` before anything is written, never half of it.
:func:`split_batch` does every check and hands back the columns the writer frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add
from typing import Any

import cbor2

from meshmon.store.errors import InvalidRecord
from meshmon.store.index import SeriesTable

RecordIn = tuple[float, str, str, Any]
"""What ``append_batch`` takes: (timestamp, check, target, payload bytes or a CBOR-able value)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A checked batch, as columns in append order."""

    tss: tuple[float, ...]
    checks: tuple[str, ...]
    targets: tuple[str, ...]
    payloads: tuple[bytes, ...]
    sids: list[int]
    """Series ids (interned now if new)."""


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
        tss, checks, targets, payloads = zip(*records, strict=True)
    except (TypeError, ValueError):
        raise InvalidRecord("each record must be a (ts, check, target, payload) tuple") from None
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
    return Batch(tss, checks, targets, payloads, sids)
