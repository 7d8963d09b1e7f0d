"""In-memory indexes of the ring store: series (check, target) and time blocks.

Theory of operation
-------------------
The store keeps, per segment, three packed arrays with one entry per record (file offset,
timestamp, series id); see :mod:`meshmon.store.segment`. This module adds the two indexes that
queries need, both small and rebuilt from those arrays on start:

* **Series.** Each distinct (check, target) pair gets a small integer id. A series holds the seqs
  of its records in a packed ``array('Q')`` (8 bytes a record), ascending because seqs are
  assigned in append order. Series are filled lazily, in bulk, when a query needs them: the
  append path only records each record's series id in its segment. Query by check or target
  unions the matching series; "latest per target" is the last seq of each series. Series
  emptied by the ring are recycled.
* **Time blocks.** Consecutive records (in seq order) are grouped into blocks of at most
  ``BLOCK_RECORDS`` records whose timestamps span at most ``BLOCK_SPAN`` seconds. Sealed blocks
  live in a ``SortedKeyList`` ordered by their smallest timestamp. Because no block spans more
  than ``BLOCK_SPAN``, the blocks that can hold a time in ``[t0, t1]`` are exactly those whose
  smallest timestamp is in ``[t0 - BLOCK_SPAN, t1]``: one ``irange`` whatever the disorder of the
  timestamps. A record far out of order (a clock step) simply starts a new block.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from itertools import groupby
from zlib import crc32

from sortedcontainers import SortedKeyList

from meshmon.store.format import MAX_KEY, series_key

BLOCK_RECORDS = 4096
"""Most records in a time block: bounds the records a time query filters one by one."""
BLOCK_SPAN = 60.0
"""Widest timestamp span of a block, seconds: bounds how far before ``since`` a query looks."""


@dataclass
class Series:
    """One (check, target) pair and the seqs of its records."""

    check: str
    target: str
    key: bytes
    key_crc: int
    seqs: array[int] = field(default_factory=lambda: array("Q"))


class SeriesTable:
    """Interns (check, target) pairs and keeps each series' seqs."""

    def __init__(self) -> None:
        self.by_pair: dict[tuple[str, str], int] = {}
        self.by_key: dict[bytes, int] = {}
        self.series: list[Series | None] = []
        self.keys: list[bytes] = []
        """Key bytes by series id (hot path: one list lookup per record)."""
        self.key_crcs: list[int] = []
        self._free: list[int] = []

    def intern(self, check: str, target: str) -> int:
        """The id of a series, creating it if new.

        Raises:
            ValueError: the names are not strings, contain NUL or are too long.
        """
        sid = self.by_pair.get((check, target))
        if sid is not None:
            return sid
        if not isinstance(check, str) or not isinstance(target, str):
            raise ValueError(f"check and target must be strings, got {check!r}, {target!r}")
        if "\x00" in check or "\x00" in target:
            raise ValueError(f"check {check!r} or target {target!r} contains a NUL character")
        key = series_key(check, target)
        if len(key) > MAX_KEY:
            raise ValueError(f"check + target are {len(key)} bytes; at most {MAX_KEY} fit")
        return self._add(Series(check, target, key, crc32(key)))

    def intern_key(self, key: bytes, check: str, target: str) -> int:
        """The id of a series known by its key bytes (recovery)."""
        sid = self.by_key.get(key)
        if sid is None:
            sid = self._add(Series(check, target, key, crc32(key)))
        return sid

    def _add(self, s: Series) -> int:
        if self._free:
            sid = self._free.pop()
            self.series[sid] = s
            self.keys[sid] = s.key
            self.key_crcs[sid] = s.key_crc
        else:
            sid = len(self.series)
            self.series.append(s)
            self.keys.append(s.key)
            self.key_crcs.append(s.key_crc)
        self.by_pair[(s.check, s.target)] = sid
        self.by_key[s.key] = sid
        return sid

    def add_records(self, seqs: range | array[int], sids: array[int]) -> None:
        """Index records with these ascending seqs and series ids.

        Sorting positions by series id (stable, so seqs stay ascending) and extending each
        series once per group keeps the per-record work in C; the store calls this in bulk,
        lazily, before a query needs the series (see ``RingStore._catch_up``).
        """
        series = self.series
        for sid, group in groupby(sorted(range(len(sids)), key=sids.__getitem__),
                                  key=sids.__getitem__):  # fmt: skip
            s = series[sid]
            assert s is not None
            s.seqs.extend(map(seqs.__getitem__, group))

    def drop_before(self, seq: int) -> None:
        """Forget every record below ``seq``; recycle series left empty."""
        for sid, s in enumerate(self.series):
            if s is None or not s.seqs or s.seqs[0] >= seq:
                continue
            del s.seqs[: bisect_left(s.seqs, seq)]
            if not s.seqs:
                del self.by_pair[(s.check, s.target)]
                del self.by_key[s.key]
                self.series[sid] = None
                self._free.append(sid)

    def matching(self, check: str | None, target: str | None) -> list[Series]:
        """Series with that check and/or target (``None`` matches any)."""
        if check is not None and target is not None:
            sid = self.by_pair.get((check, target))
            s = self.series[sid] if sid is not None else None
            return [s] if s is not None else []
        return [
            s for s in self.series
            if s is not None and (check is None or s.check == check)
            and (target is None or s.target == target)
        ]  # fmt: skip

    def memory_entries(self) -> int:
        """Seqs held across all series (for memory accounting)."""
        return sum(len(s.seqs) for s in self.series if s is not None)


@dataclass
class Block:
    """A run of consecutive records whose timestamps lie within ``BLOCK_SPAN``."""

    min_ts: float
    max_ts: float
    first_seq: int
    last_seq: int


def _block_key(b: Block) -> tuple[float, int]:
    return (b.min_ts, b.first_seq)


class TimeIndex:
    """Blocks of records by time; see the module docstring."""

    def __init__(self) -> None:
        self.sealed: SortedKeyList = SortedKeyList(key=_block_key)
        self.open: Block | None = None
        self.order: deque[Block] = deque()
        """Every block, sealed or open, in seq order (for dropping the oldest)."""

    def seal(self) -> None:
        """Close the open block (at a segment boundary, so no block spans two segments)."""
        if self.open is not None:
            self.sealed.add(self.open)
            self.open = None

    def _start(self, min_ts: float, max_ts: float, first: int, last: int) -> None:
        self.seal()
        self.open = Block(min_ts, max_ts, first, last)
        self.order.append(self.open)

    def add(
        self, seqs: range | list[int] | array[int], tss: tuple[float, ...] | array[float]
    ) -> None:
        """Index records with these ascending seqs and their timestamps."""
        n = len(tss)
        if not n:
            return
        lo, hi = min(tss), max(tss)
        b = self.open
        if b is not None and b.last_seq - b.first_seq + 1 + n <= BLOCK_RECORDS \
                and max(hi, b.max_ts) - min(lo, b.min_ts) <= BLOCK_SPAN:
            b.min_ts, b.max_ts, b.last_seq = min(lo, b.min_ts), max(hi, b.max_ts), seqs[-1]
        elif n <= BLOCK_RECORDS and hi - lo <= BLOCK_SPAN:
            self._start(lo, hi, seqs[0], seqs[-1])
        elif n > 16:  # too many or too spread for one block: halve (min/max stay in C)
            half = n // 2
            self.add(seqs[:half], tss[:half])
            self.add(seqs[half:], tss[half:])
        else:  # a handful of disordered records: one at a time
            for seq, ts in zip(seqs, tss, strict=True):
                self.add_one(seq, ts)

    def add_one(self, seq: int, ts: float) -> None:
        """Index one record (the unbatched path)."""
        b = self.open
        if b is not None and b.last_seq - b.first_seq + 1 < BLOCK_RECORDS \
                and max(ts, b.max_ts) - min(ts, b.min_ts) <= BLOCK_SPAN:
            b.last_seq = seq
            if ts < b.min_ts:
                b.min_ts = ts
            elif ts > b.max_ts:
                b.max_ts = ts
        else:
            self._start(ts, ts, seq, seq)

    def drop_before(self, seq: int) -> None:
        """Forget blocks entirely below ``seq`` (a dropped segment)."""
        while self.order and self.order[0].last_seq < seq:
            b = self.order.popleft()
            if b is self.open:
                self.open = None
            else:
                self.sealed.discard(b)

    def candidates(self, t0: float, t1: float) -> list[Block]:
        """Blocks that may hold a record with ``t0 <= ts <= t1``, in seq order."""
        found = [
            b for b in self.sealed.irange_key((t0 - BLOCK_SPAN, -1), (t1, 2**64))
            if b.max_ts >= t0
        ]  # fmt: skip
        if self.open is not None and self.open.min_ts <= t1 and self.open.max_ts >= t0:
            found.append(self.open)
        found.sort(key=lambda b: b.first_seq)
        return found

    def __len__(self) -> int:
        return len(self.order)
