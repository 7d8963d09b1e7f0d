"""PostgreSQL's binary COPY format, written from a batch's columns a block at a time.

Theory of operation
-------------------
A binary COPY stream is a signature, then per row a field count (int16) and per field its
length (int32, -1 for NULL) and its bytes in network order, then the trailer -1 (int16).
psycopg's ``write_row`` formats one row per call from a tuple (in C, ~1 µs a row of results,
plus ~0.4 µs of Python to build each tuple); here every row of a block is formatted by whole-
column operations instead, in five pieces per row, each made by ``map`` over a column (a loop
in C), then the pieces are zipped and joined into one ``bytes`` per block:

1. time, agent, store, seq: one ``struct`` per batch (the agent and store are constants);
2. check, target: the batch's series table, formatted once per series and picked by index;
3. kind, success, loss, error: the batch's outcome table, likewise;
4. RTT and the payload's length: one ``struct`` (a NULL RTT where it is NaN);
5. the payload: a slice of the batch's payload bytes (a ``memoryview``, no copy until the join).

~0.5 µs a row in all, measured on 5,000 ping results (``write_row`` with the tuples ~1.5 µs).
The column order is :data:`COPY_SQL`'s, which puts the RTT next to the payload to save a piece.
Values reach here checked (:mod:`meshmon.wire.columns`): the format cannot go wrong on them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, repeat
from operator import sub
from typing import Any, NamedTuple

from meshmon.wire.columns import ColumnBatch, Outcome

COPY_SQL = ("COPY results (time, agent, store, seq, check_name, target, kind, success, loss, "
            "error, rtt_ms, payload) FROM STDIN (FORMAT BINARY)")  # fmt: skip
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
"""The header: signature, flags (int32 0) and header extension length (int32 0)."""
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01 00:00 UTC, the origin of PostgreSQL's timestamps, in Unix microseconds."""
BLOCK_ROWS = 4096
"""Rows per block handed to psycopg: big enough to amortise the per-block work, small enough
to keep a block around 1 MB."""

_NULL = b"\xff\xff\xff\xff"
_RTT = struct.Struct(">idi")
"""RTT (length 8, float8) and the payload's length."""
_NO_RTT = struct.Struct(">ii")
_FIELD = struct.Struct(">i")


def text(value: str | None) -> bytes:
    """A text field: its length and UTF-8 bytes, or NULL."""
    if value is None:
        return _NULL
    data = value.encode()
    return _FIELD.pack(len(data)) + data


def series_fields(series: Sequence[tuple[str, str]]) -> list[bytes]:
    """The ``check_name`` and ``target`` fields of each series (a batch may hold thousands)."""
    names = list(map(str.encode, chain.from_iterable(series)))
    fields = list(map(bytes.__add__, map(_FIELD.pack, map(len, names)), names))
    return list(map(bytes.__add__, fields[::2], fields[1::2]))


def outcome_field(o: Outcome) -> bytes:
    """The ``kind``, ``success``, ``loss`` and ``error`` fields."""
    loss = _NULL if o.loss is None else struct.pack(">id", 8, o.loss)
    return text(o.kind) + struct.pack(">ib", 1, o.success) + loss + text(o.error)


def blocks(b: ColumnBatch, rows: range | Sequence[int]) -> Iterator[bytes]:
    """The COPY stream (signature, rows, trailer) of records ``rows`` (indexes into the batch,
    ascending) in blocks of at most :data:`BLOCK_ROWS` rows."""
    ends = list(accumulate(b.payload_len, initial=0))
    fields = _Fields(
        series=series_fields(b.series),
        outcomes=[outcome_field(o) for o in b.outcomes],
        constant=text(b.agent) + text(b.store), starts=ends[:-1], stops=ends[1:],
        payloads=memoryview(b.payloads))  # fmt: skip
    yield SIGNATURE
    for at in range(0, len(rows), BLOCK_ROWS):
        yield _block(b, rows[at : at + BLOCK_ROWS], fields)
    yield TRAILER


class _Fields(NamedTuple):
    series: list[bytes]
    outcomes: list[bytes]
    constant: bytes
    starts: list[int]
    stops: list[int]
    payloads: memoryview


def _pick(column: Sequence[Any], rows: range | Sequence[int]) -> Sequence[Any]:
    if isinstance(rows, range) and rows.step == 1:
        return column[rows.start : rows.stop]
    return list(map(column.__getitem__, rows))


def _block(b: ColumnBatch, rows: range | Sequence[int], f: _Fields) -> bytes:
    rtt = _pick(b.rtt_ms, rows)
    plen = _pick(b.payload_len, rows)
    tail = list(map(_RTT.pack, repeat(8), rtt, plen))
    total = sum(rtt)
    if total != total:  # some results have no RTT (NaN): NULL
        for i in [i for i, r in enumerate(rtt) if r != r]:
            tail[i] = _NO_RTT.pack(-1, plen[i])
    head = struct.Struct(f">hiq{len(f.constant)}siq")
    pieces = zip(
        map(head.pack, repeat(12), repeat(8), map(sub, _pick(b.ts_us, rows), repeat(PG_EPOCH_US)),
            repeat(f.constant), repeat(8), map(b.first.__add__, rows)),
        map(f.series.__getitem__, _pick(b.series_ix, rows)),
        map(f.outcomes.__getitem__, _pick(b.outcome_ix, rows)),
        tail,
        map(f.payloads.__getitem__, map(slice, _pick(f.starts, rows), _pick(f.stops, rows))),
        strict=True,
    )  # fmt: skip
    return b"".join(chain.from_iterable(pieces))
