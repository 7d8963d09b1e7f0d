"""Version 2 of the sync body: a batch as columns, checked a column at a time.

Theory of operation
-------------------
Version 1 (:mod:`meshmon.wire.ingest`) sends each record as a CBOR array, and the aggregator
decodes every result to derive the columns it stores beside it (kind, success, RTT, loss,
error): ~10 µs of Python per record, a tenth of what PostgreSQL's COPY takes in. Version 2 has
the same header and carries the records as columns, so that building, checking and loading a
batch is a handful of whole-array operations (``array``, ``bytes``, ``map``: loops in C)::

    ts          bytes   int64 per record: microseconds since the Unix epoch
    series      array   check, target, check, target...: the names of each series the batch
                        holds, flat
    series_ix   bytes   uint16 per record: its series, an index into ``series``
    outcomes    array   [kind, success, loss, error] of each distinct outcome
    outcome_ix  bytes   uint16 per record: an index into ``outcomes``
    rtt_ms      bytes   float64 per record: the response time, NaN where there is none
    payload_len bytes   uint32 per record
    payloads    bytes   the records' encoded results (:func:`~meshmon.results.encode_result`)
                        back to back

Packed columns are little-endian. Seqs are not sent: the records are ``first .. last``, in
order, so there are ``last - first + 1`` of each packed item. ``MAX_RECORDS`` (50,000) keeps
every index within uint16.

The agent derives the outcome and RTT of each record when it reads it for the upload
(:mod:`meshmon.sync.build`); the aggregator takes its word for its own results, as it does for
the payload, and checks only what the database needs: types, lengths, indexes in range, times
between the years 1 and 9999, finite response times, losses between 0 and 1, no NUL in text.
Records of the check ``_alerts`` are incident history: their outcome says nothing and is
ignored. A stored record the agent cannot read as a result goes as it is, with the kind
``unknown`` and the reason as its error (:data:`UNREADABLE`), rather than holding up every
record behind it.

Every refusal is a :class:`~meshmon.wire.ingest.BatchError` naming the column (``ts``), the
item (``ts[17]``) or the field (``outcomes[2].loss``) at fault.
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass, fields
from itertools import accumulate, chain
from operator import add
from typing import Any, NamedTuple

import cbor2

from meshmon.wire.ingest import (
    MAX_RECORDS,
    BatchError,
    BatchHeader,
    SyncRecord,
    compress,
    get,
    header_fields,
    header_from,
    validate_header,
)

VERSION = 2
TS_MIN_US, TS_MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
"""Years 1 to 9999 in microseconds: what Python's datetime (and every reader) can hold."""
MAX_KIND = 64
"""Longest result kind accepted."""
_SWAP = sys.byteorder == "big"
"""Packed columns are little-endian: swapped on a big-endian host."""

assert MAX_RECORDS <= 0xFFFF, "series and outcome indexes are uint16"


class Outcome(NamedTuple):
    """What the aggregator stores beside a result, besides its RTT."""

    kind: str
    """The result's kind (``ping``, ``tcp``...), ``unknown`` if the agent could not read it."""
    success: bool
    loss: float | None
    """Fraction of probes lost, 0 to 1."""
    error: str | None


INCIDENT = Outcome("incident", False, None, None)
"""The outcome an agent gives incident history records (it is not used)."""
UNREADABLE = "unknown"
"""The kind of a stored record the agent could not read as a result."""


@dataclass(frozen=True, slots=True, eq=False)
class ColumnBatch(BatchHeader):
    """One upload in version 2: records ``first .. last`` of one store, as columns.

    Build it with :func:`column_batch` (which checks it) or :func:`decode_columns`.
    """

    ts_us: array[int]
    """``q``: microseconds since the Unix epoch."""
    series: tuple[tuple[str, str], ...]
    series_ix: array[int]
    """``H``: an index into ``series`` per record."""
    outcomes: tuple[Outcome, ...]
    outcome_ix: array[int]
    """``H``: an index into ``outcomes`` per record."""
    rtt_ms: array[float]
    """``d``: NaN where the result has no response time."""
    payload_len: array[int]
    """``I``."""
    payloads: bytes
    payload_at: list[int] | None = None
    """Where each payload starts in ``payloads`` when they are not back to back (a batch read
    from stored values, which ``payloads`` then holds whole: :mod:`meshmon.sync.build`), else
    None. A body always carries them back to back (:meth:`packed`)."""

    def spans(self) -> tuple[list[int], list[int]]:
        """(starts, ends) of the payloads in ``payloads``."""
        if self.payload_at is not None:
            return self.payload_at, list(map(add, self.payload_at, self.payload_len))
        ends = list(accumulate(self.payload_len, initial=0))
        return ends[:-1], ends[1:]

    def packed(self) -> bytes:
        """The payloads back to back."""
        if self.payload_at is None:
            return self.payloads
        return b"".join(map(self.payloads.__getitem__, map(slice, *self.spans())))

    @property
    def records(self) -> tuple[SyncRecord, ...]:
        """The records one by one, as in version 1 (for tests and tools: the aggregator never
        builds them)."""
        starts, ends = self.spans()
        return tuple(SyncRecord(self.first + i, self.ts_us[i] / 1e6,
                                *self.series[self.series_ix[i]],
                                self.payloads[starts[i] : ends[i]])
                     for i in range(self.count))  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColumnBatch):
            return NotImplemented
        return self.packed() == other.packed() and all(
            _same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
            if f.name not in ("payloads", "payload_at"))  # fmt: skip

    __hash__ = None  # type: ignore[assignment]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, array):
        return bool(a.tobytes() == b.tobytes())  # NaN RTTs compare equal by their bits
    same: bool = a == b
    return same


_PACKED = (("ts", "ts_us", "q"), ("series_ix", "series_ix", "H"),
           ("outcome_ix", "outcome_ix", "H"), ("rtt_ms", "rtt_ms", "d"),
           ("payload_len", "payload_len", "I"))  # fmt: skip
"""(wire key, attribute, array type) of each packed column."""


def column_batch(**fields: Any) -> ColumnBatch:
    """A checked :class:`ColumnBatch` (the fields by name).

    Raises:
        BatchError: naming the first problem found.
    """
    batch = ColumnBatch(**fields)
    validate(batch)
    return batch


def encode_columns(batch: ColumnBatch) -> tuple[bytes, str | None]:
    """The request body and its ``Content-Encoding`` (``deflate`` or ``None``)."""
    obj: dict[str, Any] = {"v": VERSION, **header_fields(batch)}
    for key, attr, _ in _PACKED:
        obj[key] = _pack(getattr(batch, attr))
    obj["series"] = list(chain.from_iterable(batch.series))
    obj["outcomes"] = [list(o) for o in batch.outcomes]
    obj["payloads"] = batch.packed()
    return compress(cbor2.dumps(obj))


def decode_columns(obj: dict[str, Any]) -> ColumnBatch:
    """A version 2 body (its CBOR map, see :func:`meshmon.wire.ingest.load_body`), checked.

    Raises:
        BatchError: naming the column, item or field at fault.
    """
    fields = header_from(obj)
    for key, attr, code in _PACKED:
        fields[attr] = _unpack(key, get(obj, key, bytes), code)
    fields["series"] = _series(get(obj, "series", list))
    fields["outcomes"] = tuple(_outcome(i, o) for i, o in enumerate(get(obj, "outcomes", list)))
    fields["payloads"] = get(obj, "payloads", bytes)
    return column_batch(**fields)


def validate(b: ColumnBatch) -> None:
    """Check a batch's columns against each other and what the database can hold.

    Raises:
        BatchError: naming the column, item or field at fault.
    """
    validate_header(b)
    n = b.count
    if n > MAX_RECORDS:
        raise BatchError(f"last: {n} records from seq {b.first}, more than {MAX_RECORDS}")
    for key, attr, _ in _PACKED:
        have = len(getattr(b, attr))
        if have != n:
            raise BatchError(f"{key}: {have} items for the {n} records {b.first}..{b.last}")
    if not n:
        return
    ts = b.ts_us
    if min(ts) < TS_MIN_US or max(ts) > TS_MAX_US:
        i = next(i for i, t in enumerate(ts) if not TS_MIN_US <= t <= TS_MAX_US)
        raise BatchError(f"ts[{i}]: {ts[i]} µs is not a time between the years 1 and 9999")
    for key, ix, table in (("series_ix", b.series_ix, b.series),
                           ("outcome_ix", b.outcome_ix, b.outcomes)):  # fmt: skip
        if max(ix) >= len(table):
            i = next(i for i, x in enumerate(ix) if x >= len(table))
            raise BatchError(f"{key}[{i}]: {ix[i]}, but the batch has {len(table)} "
                             f"{key.removesuffix('_ix')}")  # fmt: skip
    rtt = b.rtt_ms
    if has_infinity(rtt):
        i = next(i for i, r in enumerate(rtt) if math.isinf(r))
        raise BatchError(f"rtt_ms[{i}]: {rtt[i]} is not a response time (finite, or NaN for "
                         "none)")  # fmt: skip
    if b.payload_at is not None:
        if len(b.payload_at) != n or min(b.payload_at) < 0 \
                or max(map(add, b.payload_at, b.payload_len)) > len(b.payloads):  # fmt: skip
            raise BatchError("payload_at: a payload beyond the payloads")
        return
    total = sum(b.payload_len)
    if total != len(b.payloads):
        raise BatchError(f"payload_len: the lengths add up to {total} bytes, payloads holds "
                         f"{len(b.payloads)}")  # fmt: skip


_INFINITIES = (array("d", [math.inf]).tobytes(), array("d", [-math.inf]).tobytes())


def has_infinity(column: array[float]) -> bool:
    """``column`` holds an infinity: its bit pattern, searched in the column's bytes (in C,
    without a float object per item), at an item's start."""
    data = column.tobytes()
    for pattern in _INFINITIES:
        at = data.find(pattern)
        while at >= 0:
            if at % 8 == 0:
                return True
            at = data.find(pattern, at + 1)
    return False


def _pack(column: array[Any]) -> bytes:
    if _SWAP:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _unpack(key: str, data: bytes, code: str) -> array[Any]:
    column = array(code)
    if len(data) % column.itemsize:
        raise BatchError(f"{key}: {len(data)} bytes, not a whole number of "
                         f"{column.itemsize}-byte items")  # fmt: skip
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column


def _text(key: str, value: Any, *, empty: bool = True) -> str:
    if type(value) is not str:
        raise BatchError(f"{key}: expected str, got {type(value).__name__}")
    if "\x00" in value:
        raise BatchError(f"{key}: contains a NUL character")
    if not empty and not value:
        raise BatchError(f"{key}: empty")
    return value


def _series(names: list[Any]) -> tuple[tuple[str, str], ...]:
    """The series table from its flat form ``[check, target, check, target...]``, checked a
    column at a time (a batch may hold thousands of series)."""
    if len(names) % 2:
        raise BatchError(f"series: {len(names)} names, not (check, target) pairs")
    try:
        clean = "\x00" not in "".join(names)  # TypeError: not all text
    except TypeError:
        clean = False
    if not clean:
        for i, name in enumerate(names):
            _text(f"series[{i // 2}].{('check', 'target')[i % 2]}", name)
    return tuple(zip(names[::2], names[1::2], strict=True))


def _outcome(i: int, raw: Any) -> Outcome:
    key = f"outcomes[{i}]"
    if type(raw) is not list or len(raw) != 4:
        raise BatchError(f"{key}: expected [kind, success, loss, error]")
    kind, success, loss, error = raw
    _text(f"{key}.kind", kind, empty=False)
    if len(kind) > MAX_KIND:
        raise BatchError(f"{key}.kind: longer than {MAX_KIND} characters")
    if type(success) is not bool:
        raise BatchError(f"{key}.success: expected bool, got {type(success).__name__}")
    if loss is not None:
        if type(loss) is not float and type(loss) is not int:
            raise BatchError(f"{key}.loss: expected a number or null, got {type(loss).__name__}")
        if not 0.0 <= loss <= 1.0:
            raise BatchError(f"{key}.loss: {loss!r} is not a fraction between 0 and 1")
        loss = float(loss)
    if error is not None:
        _text(f"{key}.error", error)
    return Outcome(kind, success, loss, error)
