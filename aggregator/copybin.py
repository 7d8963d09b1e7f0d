"""PostgreSQL's binary COPY format, written from a batch's columns a block at a time.

Theory of operation
-------------------
A binary COPY stream is a signature, then per row a field count (int16) and per field its
length (int32, -1 for NULL) and its bytes in network order, then the trailer -1 (int16).
psycopg's ``write_row`` formats one row per call from a tuple (in C, plus the Python that
builds each tuple); here every row of a block is formatted by whole-column operations instead,
in four pieces per row, each made by ``map`` over a column (a loop in C) into every fourth
item of one list, which is joined into one ``bytes`` per block:

1. the field count, time, seq, RTT and the payload's length: one ``struct`` (another where the
   RTT is NaN: NULL);
2. the payload: a slice of the batch's payload bytes;
3. agent, store, check, target: the batch's series table, formatted once per series (after
   the agent and store, constants of the batch) and picked by index;
4. kind, success, loss, error: the batch's outcome table, likewise.

The column order (:data:`COPY_SQL`) is chosen for that grouping. Measured on 5,000 ping
results into PostgreSQL 15 on a loaded machine: ~0.85 µs of Python a row, blocks built and
written (``write_row`` from the same columns, tuples built in Python: ~1.1-1.5 µs). Values
reach here checked (:mod:`meshmon.wire.columns`): the format cannot go wrong on them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from operator import add, sub
from typing import Any, NamedTuple

from meshmon.wire.columns import ColumnBatch, Outcome

COPY_SQL = ("COPY results (time, seq, rtt_ms, payload, agent, store, check_name, target, kind, "
            "success, loss, error) FROM STDIN (FORMAT BINARY)")  # fmt: skip
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
"""The header: signature, flags (int32 0) and header extension length (int32 0)."""
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01 00:00 UTC, the origin of PostgreSQL's timestamps, in Unix microseconds."""
BLOCK_ROWS = 512
"""Rows per block handed to psycopg (~150 kB): measured on 5,000 ping results, blocks of 128 to
1,024 rows take ~0.7 µs a row to build, of 2,048 rows and more ~1.1 µs (what no longer fits the
caches is slower to build and to copy)."""

_NULL = b"\xff\xff\xff\xff"
_HEAD = struct.Struct(">hiqiqidi")
"""Field count 12, time (int8: µs since 2000), seq (int8), RTT (float8), the payload's length."""
_HEAD_NO_RTT = struct.Struct(">hiqiqii")
_FIELD = struct.Struct(">i")


def text(value: str | None) -> bytes:
    """A text field: its length and UTF-8 bytes, or NULL."""
    if value is None:
        return _NULL
    data = value.encode()
    return _FIELD.pack(len(data)) + data


def series_fields(agent: str, store: str, series: Sequence[tuple[str, str]]) -> list[bytes]:
    """The ``agent``, ``store``, ``check_name`` and ``target`` fields of each series (a batch
    may hold thousands)."""
    names = list(map(str.encode, chain.from_iterable(series)))
    fields = list(map(add, map(_FIELD.pack, map(len, names)), names))
    return list(map(add, map(add, repeat(text(agent) + text(store)), fields[::2]), fields[1::2]))


def outcome_field(o: Outcome) -> bytes:
    """The ``kind``, ``success``, ``loss`` and ``error`` fields."""
    loss = _NULL if o.loss is None else struct.pack(">id", 8, o.loss)
    return text(o.kind) + struct.pack(">ib", 1, o.success) + loss + text(o.error)


def blocks(b: ColumnBatch, rows: range | Sequence[int]) -> Iterator[bytes]:
    """The COPY stream (signature, rows, trailer) of records ``rows`` (indexes into the batch,
    ascending) in blocks of at most :data:`BLOCK_ROWS` rows."""
    starts, stops = b.spans()
    fields = _Fields(series=series_fields(b.agent, b.store, b.series),
                     outcomes=list(map(outcome_field, b.outcomes)), starts=starts,
                     stops=stops, payloads=b.payloads)  # fmt: skip
    yield SIGNATURE
    for at in range(0, len(rows), BLOCK_ROWS):
        yield _block(b, rows[at : at + BLOCK_ROWS], fields)
    yield TRAILER


class _Fields(NamedTuple):
    series: list[bytes]
    outcomes: list[bytes]
    starts: list[int]
    stops: list[int]
    payloads: bytes


def _pick(column: Sequence[Any], rows: range | Sequence[int]) -> Sequence[Any]:
    if isinstance(rows, range) and rows.step == 1:
        return column[rows.start : rows.stop]
    return list(map(column.__getitem__, rows))


def _block(b: ColumnBatch, rows: range | Sequence[int], f: _Fields) -> bytes:
    times = list(map(sub, _pick(b.ts_us, rows), repeat(PG_EPOCH_US)))
    seqs = range(b.first + rows.start, b.first + rows.stop) if isinstance(rows, range) \
        else list(map(b.first.__add__, rows))  # fmt: skip
    rtt = _pick(b.rtt_ms, rows)
    plen = _pick(b.payload_len, rows)
    pieces: list[bytes] = [b""] * (4 * len(rtt))
    pieces[::4] = map(_HEAD.pack, repeat(12), repeat(8), times, repeat(8), seqs, repeat(8), rtt,
                      plen)  # fmt: skip
    total = sum(rtt)
    if total != total:  # some results have no RTT (NaN): NULL
        for i in [i for i, r in enumerate(rtt) if r != r]:
            pieces[4 * i] = _HEAD_NO_RTT.pack(12, 8, times[i], 8, seqs[i], -1, plen[i])
    pieces[1::4] = map(f.payloads.__getitem__, map(slice, _pick(f.starts, rows),
                                                   _pick(f.stops, rows)))  # fmt: skip
    pieces[2::4] = map(f.series.__getitem__, _pick(b.series_ix, rows))
    pieces[3::4] = map(f.outcomes.__getitem__, _pick(b.outcome_ix, rows))
    return b"".join(pieces)
