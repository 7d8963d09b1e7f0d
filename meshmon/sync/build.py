"""Stored records → the columns of a version 2 batch (:mod:`meshmon.wire.columns`).

Theory of operation
-------------------
The agent stores each result as the CBOR of ``[encoded result, degraded]`` (the encoded result
from :func:`~meshmon.results.encode_result`); the upload carries the encoded result and, beside
it, what the aggregator stores next to it (kind, success, RTT, loss, error: the result's
:mod:`summary <meshmon.results.summary>`), so the aggregator never decodes a result.

The store hands a run of records over as columns (:class:`~meshmon.store.StoredColumns`). Each
record is then read in place from the run's payload bytes, without building an object:

* The fast road, for the commonest record by far, a compact ``ping`` result without errors:
  the outer array's bytes header gives the encoded result's place; the result must start with
  the bytes ``[2, "ping", agent, check, target`` that this agent writes for the record's series
  (computed once per series; other names are skipped item by item); family, start time,
  duration and seq (null: a stored result has none) have fixed encodings; the payload array
  then gives ``successes`` and ``failures`` (small integers), the latencies (doubles,
  skipped), an empty ``errors`` and the mean RTT. The outcome is a function of the two counts
  (:class:`~meshmon.results.PingResult`'s own rules, applied once per pair). A result under
  this agent's name of under 256 bytes, nearly every one, is read in one ``struct`` unpack
  per record, its fixed bytes checked a few at a time as words (:func:`_own`); others field by
  field (:func:`_one`). ~1.3 µs a record with its bookkeeping (~1.55 field by field) where
  ``cbor2`` takes 2-4 µs to decode the result alone (measured on a loaded machine).
* Anything else (another kind, errors, an unusual encoding, an older record) takes the slow
  road: ``cbor2`` and :func:`~meshmon.results.summary.summarize`, as the aggregator does for a
  version 1 body. A record it cannot read as a result goes as it is, of kind ``unknown`` with
  the reason as its error (a version 1 aggregator refused such a record, and so the upload of
  every record after it); incident history (check ``_alerts``) goes as stored, its outcome
  unused.

Whatever the road, the result is the same: ``tests/test_sync_build.py`` checks the fast road
against the slow one.
"""

from __future__ import annotations

import functools
import math
import struct
from array import array
from collections.abc import Callable
from itertools import accumulate, repeat
from operator import add, mul, sub
from typing import Any

import cbor2

from meshmon.results import PingResult, ResultDecodeError
from meshmon.results.encoded import PING, unstored
from meshmon.results.summary import summarize
from meshmon.store import StoredColumns
from meshmon.wire.columns import INCIDENT, UNREADABLE, Outcome, has_infinity
from meshmon.wire.ingest import INCIDENT_CHECK, BatchError

_PING = bytes((0x8A, 0x02, 0x64)) + b"ping"
"""An array of 10 items (the envelope of a result), 2 (the compact form), the text ``ping``."""
_ENVELOPE = struct.Struct(">BB8xB8xBBBBB").unpack_from
"""After the names: family, 0xFB (the start time), 0xFB (the duration), the seq (null: 0xF6);
the payload array's head (13 items), successes, failures, the latencies' array head."""
_AVERAGE = struct.Struct(">BBd").unpack_from
"""After the latencies: the errors' array head, then the mean RTT's head and value."""
_DOUBLES = [b"\xfb" * n for n in range(24)]
_FAMILY = frozenset((4, 6, 0xF6))
_PAD = bytes(64)
"""After a run's records, so that the fast road's one unpack (at most 27 bytes after the
names) stays inside the buffer for a record too short for it."""
_FAMILY_MARK = frozenset(f << 8 | 0xFB for f in _FAMILY)
"""The family (4, 6 or null) and the start time's head (a double), as one big-endian word."""
_WORDS = {0xF68D0000 | ok << 8 | lost: (ok, lost) for ok in range(24) for lost in range(24)}
"""The seq (null), the payload's head (13 items), successes and failures (each under 24, one
byte), as one big-endian word: (successes, failures)."""
_LATENCIES = [b - 0x80 if 0x80 <= b < 0x98 else -1 for b in range(256)]
"""The number of latencies an array head of under 24 items says, by its byte (-1: another)."""
_TAIL = struct.Struct(">Hd").unpack_from
"""After the latencies: the errors' head and the mean RTT's head as one word (``0x80FB``: no
errors and a double; ``0x80F6``: no errors and null), then the double."""


class RecordReader:
    """Reads an agent's stored records into the columns of a version 2 batch (it keeps, per
    series, the bytes every ping result of the series starts with)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._prefix = _PING + _text(agent)
        self._heads: dict[tuple[str, str], _Head] = {}
        self.slow_reads = 0
        """Records read the slow way so far (anything but a compact ping result)."""
        self.summarized_reads = 0
        """Records read from their summary words, a run at a time (:func:`_summarized`)."""

    def columns(self, stored: StoredColumns) -> dict[str, Any]:
        """The record fields of a :class:`~meshmon.wire.columns.ColumnBatch` for ``stored``.

        Raises:
            BatchError: a timestamp cannot be sent (beyond what int64 microseconds hold).
        """
        gids = stored.gids
        uniq = list(dict.fromkeys(gids))
        where = dict(zip(uniq, range(len(uniq)), strict=True))
        try:
            ts_us = array("q", map(round, map(mul, stored.tss, repeat(1e6))))
        except (OverflowError, ValueError):
            i = next(i for i, t in enumerate(stored.tss) if not abs(t) < 9.2e12)
            raise BatchError(f"ts: record seq {stored.first + i} has the timestamp "
                             f"{stored.tss[i]}, which cannot be sent") from None  # fmt: skip
        read = _summarized(stored)
        if read is not None:
            self.summarized_reads += stored.count
        else:
            if len(self._heads) > 100_000:
                self._heads.clear()
            heads = {g: self._heads.get(names) or self._head(names)
                     for g, names in stored.names.items()}  # fmt: skip
            read = _read(stored, heads)
        outcomes, outcome_ix, rtt_ms, payloads, payload_len, slow, payload_at = read
        self.slow_reads += slow
        return {
            "ts_us": ts_us, "series": tuple(map(stored.names.__getitem__, uniq)),
            "series_ix": array("H", map(where.__getitem__, gids)), "outcomes": outcomes,
            "outcome_ix": outcome_ix, "rtt_ms": rtt_ms, "payload_len": payload_len,
            "payloads": payloads, "payload_at": payload_at,
        }  # fmt: skip

    def _head(self, names: tuple[str, str]) -> _Head:
        head = self._prefix + _text(names[0]) + _text(names[1])
        found = self._heads[names] = (head, _own(len(head)), len(head) + 27)
        return found


def _text(value: str) -> bytes:
    """A CBOR text string, as ``cbor2.dumps`` writes it."""
    data = value.encode()
    n = len(data)
    if n < 24:
        return bytes((0x60 + n,)) + data
    return (bytes((0x78, n)) if n < 0x100 else struct.pack(">BH", 0x79, n)
            if n < 0x10000 else struct.pack(">BI", 0x7A, n)) + data  # fmt: skip


_Head = tuple[bytes, Callable[[bytes, int], tuple[int, ...]], int]
"""What every compact ping result of a series starts with (``[2, "ping", agent, check,
target``), the unpacker of its fast road (:func:`_own`) and where its latencies start from the
start of its stored record."""


_Read = tuple[tuple[Outcome, ...], "array[int]", "array[float]", bytes, "array[int]", int,
              list[int] | None]
"""(outcomes, outcome_ix, rtt_ms, payloads, payload_len, records read the slow way, where each
payload starts in ``payloads`` if they are not back to back)."""


def _read(stored: StoredColumns, heads: dict[int, _Head]) -> _Read:
    """(outcomes, outcome_ix, rtt_ms, payloads, payload_len, records read the slow way) of
    the records of ``stored``."""
    buf = bytes(stored.payloads) + _PAD
    ends = list(accumulate(stored.plens, initial=0))
    table: dict[Outcome, int] = {}
    outcome_of: dict[int, int] = {}  # outcome index by the word "null, [13 items, ok, lost"
    outcome_ix: list[int] = []
    rtts: list[float] = []
    starts: list[int] = []
    slow: dict[int, bytes] = {}
    nan, isfinite, tail, doubles = math.nan, math.isfinite, _TAIL, _DOUBLES
    add_outcome, add_rtt, add_start = outcome_ix.append, rtts.append, starts.append
    known_word, latencies, family_marks = outcome_of.get, _LATENCIES, _FAMILY_MARK
    for p, end, gid in zip(ends, ends[1:], stored.gids, strict=False):
        # The fast road (see the module docstring) in one unpack, for a result under this
        # agent's name of under 256 bytes (``_PAD`` keeps the unpack inside ``buf`` for a
        # record too short, which the checks refuse); the fields it needs are checked a few
        # at a time, as words (:func:`_own`). Anything else takes :func:`_one`.
        head, own, to_latencies = heads[gid]
        if buf.startswith(head, p + 3):
            wrapper, length, family_mark, mark, word, lat = own(buf, p)
            n = latencies[lat]
            q = p + to_latencies
            e = q + 9 * n
            if (wrapper == 0x8258 and length == end - p - 4 and mark == 0xFB and n >= 0
                    and family_mark in family_marks and e < end - 11
                    and buf[end - 1] | 1 == 0xF5 and buf[q:e:9] == doubles[n]):  # fmt: skip
                k = known_word(word)
                if k is None and word in _WORDS:
                    k = outcome_of[word] = _index(table, _ping(*_WORDS[word]))
                end_mark, rtt = tail(buf, e)
                if k is not None and (end_mark == 0x80F6 or (end_mark == 0x80FB
                                                             and isfinite(rtt))):  # fmt: skip
                    add_outcome(k)
                    add_rtt(rtt if end_mark == 0x80FB else nan)
                    add_start(p + 3)
                    continue
        payload, outcome, rtt_ms, start = _one(buf, p, end, head, stored.names[gid][0])
        if start < 0:
            slow[len(starts)] = payload
        add_outcome(_index(table, outcome))
        add_rtt(nan if rtt_ms is None else rtt_ms)
        add_start(max(start, 0))
    parts: list[Any] = list(map(buf.__getitem__, map(slice, starts, map(sub, ends[1:],
                                                                        repeat(1)))))  # fmt: skip
    for i, payload in slow.items():
        parts[i] = payload
    return (tuple(table), array("H", outcome_ix), array("d", rtts), b"".join(parts),
            array("I", map(len, parts)), len(slow), None)


def _summarized(stored: StoredColumns) -> _Read | None:
    """:func:`_read` of a run of ping results that all have a summary (the store's summary
    columns, as the agent appends them: :func:`~meshmon.results.encoded.ping_summary` and the
    mean RTT), read as whole columns, without Python per record: ~0.4 µs a record where the
    fast road takes ~1.3; ``None`` if one has none, or a value is not ``[data, degraded]``
    with the data's length in one byte for the whole run, or in two (checked for every record:
    the array's head and the data's bytes head), or an RTT is infinite. A summary is the
    writer's word for its own result, taken as the payload is: as a version 2 body's columns
    are at the aggregator."""
    plens, words = stored.plens, stored.words
    n = len(plens)
    kinds = set(words)
    if not n or len(words) != n or len(stored.rtts) != n or min(kinds) < PING \
            or max(kinds) >= PING + 0x10000:  # fmt: skip
        return None
    buf = bytes(stored.payloads)
    get = buf.__getitem__
    hb, mark = (3, 0x58) if len(buf) > 1 and buf[1] == 0x58 else (4, 0x59)
    starts = list(accumulate(plens, initial=0))
    flags_at = list(map(sub, starts[1:], repeat(1)))
    del starts[-1]
    data_at = list(map(add, starts, repeat(hb)))
    rtts = array("d", stored.rtts)
    if (bytes(map(get, starts)) != b"\x82" * n
            or bytes(map(get, map(sub, data_at, repeat(hb - 1)))) != bytes((mark,)) * n
            or has_infinity(rtts)):
        return None  # fmt: skip
    table: dict[Outcome, int] = {}
    ix = {w: _index(table, _ping(*divmod(w - PING, 256))) for w in kinds}
    return (tuple(table), array("H", map(ix.__getitem__, words)), rtts, buf,
            array("I", map(sub, flags_at, data_at)), 0, data_at)


@functools.cache
def _own(head_length: int) -> Callable[[bytes, int], tuple[int, ...]]:
    """Unpacks, from the start of a stored record, what the fast road checks of a compact
    ping result whose names take ``head_length`` bytes with the envelope's start: the wrapper
    (``0x82 0x58``: an array of 2 whose first item is bytes of under 256), the bytes' length;
    after the names, the family and the start time's mark (:data:`_FAMILY_MARK`), the
    duration's mark (``0xFB``), then the seq (null), the payload's head (13 items), successes
    and failures as one word (:data:`_WORDS`) and the latencies' array head
    (:data:`_LATENCIES`)."""
    return struct.Struct(f">HB{head_length}xH8xB8xIB").unpack_from


def _one(buf: bytes, p: int, end: int, head: bytes, check: str,
         ) -> tuple[bytes, Outcome, float | None, int]:  # fmt: skip
    """(payload, outcome, RTT, where the payload starts in ``buf``; -1: it is the payload
    returned) of the stored record ``buf[p:end]``, read one field at a time: a compact ping
    result under another name or of 256 bytes or more still goes the fast road, anything
    else the slow one."""
    stop = end - 1
    outer = buf[p + 1] if end - p > 4 and buf[p] == 0x82 else 0
    if outer == 0x58:
        s = p + 3
        length = buf[p + 2]
    elif outer == 0x59:
        s = p + 4
        length = buf[p + 2] << 8 | buf[p + 3]
    else:
        s = length = -1
    if length == stop - s and buf[stop] | 1 == 0xF5:
        q = s + len(head) if buf.startswith(head, s) else _after_names(buf, s, stop)
        if 0 < q < stop - 24:
            family, mark1, mark2, seq, mark, ok, lost, lat = _ENVELOPE(buf, q)
            e = q + 24 + 9 * (lat - 0x80)
            if (mark1 == 0xFB == mark2 and seq == 0xF6 and mark == 0x8D and ok < 24
                    and lost < 24 and 0x80 <= lat < 0x98 and e < stop - 10
                    and family in _FAMILY and buf[q + 24 : e : 9] == _DOUBLES[lat - 0x80]):
                errors, a, rtt = _AVERAGE(buf, e)
                if errors == 0x80 and (a == 0xF6 or (a == 0xFB and math.isfinite(rtt))):
                    return b"", _ping(ok, lost), rtt if a == 0xFB else None, s
    payload, outcome, rtt_ms = _slow(buf[p:end], check)
    return payload, outcome, rtt_ms, -1


def _after_names(buf: bytes, s: int, stop: int) -> int:
    """Where the envelope of a compact ping result at ``s`` goes on after its agent, check and
    target (written by another name than this agent's); -1 if it is not one."""
    if not buf.startswith(_PING, s):
        return -1
    q = s + len(_PING)
    for _ in range(3):
        h = buf[q] if q < stop else 0
        if 0x60 <= h <= 0x77:
            q += 1 + h - 0x60
        elif h == 0x78 and q + 1 < stop:
            q += 2 + buf[q + 1]
        else:
            return -1
    return q


def _index(table: dict[Outcome, int], outcome: Outcome) -> int:
    k = table.get(outcome)
    if k is None:
        k = table[outcome] = len(table)
    return k


def _ping(successes: int, failures: int) -> Outcome:
    """The outcome of a ping without errors, by :class:`PingResult`'s rules."""
    result = PingResult(successes, failures, (), (), None, None)
    return Outcome("ping", result.is_successful(), result.loss, result.error_message())


def _slow(stored: bytes, check: str) -> tuple[bytes, Outcome, float | None]:
    """(the payload to send, its outcome, its RTT) of one stored record, read with ``cbor2``."""
    if check == INCIDENT_CHECK:
        return stored, INCIDENT, None
    payload = result_bytes(stored)
    try:
        kind, success, rtt, loss, error = summarize(payload)
    except ResultDecodeError as exc:
        error = f"unreadable result: {exc}".replace("\x00", "\N{REPLACEMENT CHARACTER}")
        return payload, Outcome(UNREADABLE, False, None, error), None
    return payload, Outcome(kind, success, loss, error), rtt


def result_bytes(payload: bytes) -> bytes:
    """What a record carries on the wire: the agent stores ``[encode_result(...), degraded]``
    (perhaps with a summary word) and the protocol carries the ``encode_result`` bytes (it has
    no place for ``degraded``, which stays in the local store). Any other payload goes as it
    is."""
    try:
        value = cbor2.loads(payload)
    except Exception:  # not CBOR at all: summarize will say what is wrong with it
        return payload
    try:
        return unstored(value)[0]
    except ValueError:
        return payload
