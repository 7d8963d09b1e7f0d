"""In-memory indexes of the ring store: the series table, and the helpers of the frame index.

Theory of operation
-------------------
The store indexes *frames*, not records: a version-2 frame holds a whole append batch (tens to
thousands of records), and everything a query needs to decide whether a frame can hold a
match fits in ~34 bytes per frame (see :mod:`meshmon.store.segment`). Records are only looked
at in frames that pass, by inflating the frame's small column part (timestamps, series ids)
and, when one matches, its payloads. So memory and recovery cost per frame, a few bytes per
record at the agent's batch sizes instead of ~24.

* **Series.** Each distinct (check, target) pair gets a small integer id, global to the store,
  and keeps one number: the seq of its newest record (``latest``). That answers "latest per
  series" directly, and tells which series the ring has emptied: when a segment is dropped,
  every series whose newest record was in it has no record left and is forgotten (its id is
  recycled). A frame names its records' series by *segment-local* ids
  (:mod:`meshmon.store.batch`); each segment maps its local ids to these global ones.
* **Frame filters.** Each frame carries a Bloom filter of the segment-local series ids it
  holds (two bits per id, :func:`local_mask`), 128, 256 or 512 bits wide depending on the
  segment's frame sizes (:func:`filter_words`). A query for one series, or a few, skips every
  frame whose filter lacks them; false positives (at most ~16% up to 128 records a frame) only
  cost a look at that frame's column part, never a wrong answer.
* **Time bounds.** Per frame, the store keeps the running maximum of the frames' newest
  timestamps and the running minimum (from the end) of their oldest, relative to the segment's
  first timestamp, as float32 rounded outwards (:func:`f32_down`, :func:`f32_up`). Both
  sequences are monotonic, so the frames that may hold a time in ``[t0, t1]`` are one
  contiguous range found by two bisections, whatever the disorder of the timestamps (a clock
  step only widens the range). Every candidate record's own timestamp is checked exactly.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import reduce
from operator import or_
from zlib import crc32

from meshmon.store.format import MAX_KEY, series_key

NO_SERIES = 0xFFFFFFFF
"""A segment-local id with no global series (its definition was lost at recovery)."""
_GOLDEN = 0x9E3779B97F4A7C15
_MASKS: list[int] = []
"""Filter bits of each segment-local id, grown on demand (ids are dense, a few thousand)."""


FILTER_BITS = 512
"""Width at which filters are computed; a segment stores them folded to 128, 256 or 512 bits
(:func:`filter_words`), since folding a Bloom filter in half is taking its bits modulo half."""


TABLE_IDS = 1 << 16
"""Local ids whose masks are kept in a table; beyond (a segment of more series than that, or
a hostile frame) they are computed each time, so memory stays bounded."""


def local_mask(lid: int) -> int:
    """The two filter bits (of ``FILTER_BITS``) of segment-local series id ``lid``."""
    if lid < len(_MASKS):
        return _MASKS[lid]
    if lid < TABLE_IDS:
        _grow(lid)
        return _MASKS[lid]
    return _mask_of(lid)


def _mask_of(lid: int) -> int:
    h = (lid * _GOLDEN) & 0xFFFFFFFFFFFFFFFF
    return (1 << (h >> 55)) | (1 << ((h >> 46) & 511))


def _grow(lid: int) -> None:
    top = min(max(lid + 1, 2 * len(_MASKS), 256), TABLE_IDS)
    _MASKS.extend(map(_mask_of, range(len(_MASKS), top)))


def frame_mask(lids: object) -> int:
    """The filter of a frame whose records have these segment-local series ids (an array or
    list of ints; the work stays in C)."""
    ids: list[int] | tuple[int, ...] = lids  # type: ignore[assignment]
    if not ids:
        return 0
    top = max(ids)
    if top >= TABLE_IDS:
        return reduce(or_, map(local_mask, ids))
    if top >= len(_MASKS):
        _grow(top)
    return reduce(or_, map(_MASKS.__getitem__, ids))


def filter_words(records_per_frame: float) -> int:
    """64-bit words of filter per frame for frames of this many records: the false positive
    rate stays under ~16% up to 128 records a frame (2 bits an id: ``(1 - e**(-2n/m))**2``),
    and the filter under ~1.7 bytes a record from 20 records a frame."""
    if records_per_frame <= 32:
        return 2
    return 4 if records_per_frame <= 64 else 8


def fold(mask: int, words: int) -> int:
    """A ``FILTER_BITS`` filter folded to ``64 * words`` bits."""
    width = FILTER_BITS
    while width > 64 * words:
        width //= 2
        mask = (mask & ((1 << width) - 1)) | (mask >> width)
    return mask


def mask_words(mask: int) -> list[tuple[int, int]]:
    """The nonzero 64-bit words of a folded mask, as (index, bits)."""
    out = []
    i = 0
    while mask:
        if mask & 0xFFFFFFFFFFFFFFFF:
            out.append((i, mask & 0xFFFFFFFFFFFFFFFF))
        mask >>= 64
        i += 1
    return out


F32_MAX = 3.4028234663852886e38


def f32_down(x: float) -> float:
    """A float64 whose float32 rounding (as ``array('f')`` stores it) is <= ``x``.

    Subtracting two float32 ulps before the nearest rounding guarantees the direction (an ulp
    is at most ``|x| * 2**-23``); out of float32 range the result saturates conservatively.
    """
    if math.isnan(x):
        return -math.inf
    y = x - (abs(x) + 1e-30) * 2.0**-22
    return -math.inf if y < -F32_MAX else min(y, F32_MAX)


def f32_up(x: float) -> float:
    """A float64 whose float32 rounding is >= ``x`` (see :func:`f32_down`)."""
    if math.isnan(x):
        return math.inf
    y = x + (abs(x) + 1e-30) * 2.0**-22
    return math.inf if y > F32_MAX else max(y, -F32_MAX)


@dataclass
class Series:
    """One (check, target) pair and the seq of its newest stored record."""

    check: str
    target: str
    key: bytes
    key_crc: int
    latest: int = 0
    """Seq of the newest record (0: none yet)."""
    pair: tuple[str, str] = field(init=False, repr=False, compare=False)
    """``(check, target)``, made once: the key of :attr:`SeriesTable.by_pair`, and what a
    columnar read hands on for each series it meets (an upload meets thousands a batch)."""

    def __post_init__(self) -> None:
        self.pair = (self.check, self.target)


class SeriesTable:
    """Interns (check, target) pairs and keeps each series' newest seq."""

    def __init__(self) -> None:
        self.by_pair: dict[tuple[str, str], int] = {}
        self.by_key: dict[bytes, int] = {}
        self.series: list[Series | None] = []
        self.keys: list[bytes] = []
        """Key bytes by series id (hot path: one list lookup per record)."""
        self.key_crcs: list[int] = []
        self.latest: list[int] = []
        """Seq of the newest record by series id (0: none); the hot path's copy of
        ``Series.latest``, updated by ``map`` over a batch."""
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
            self.latest[sid] = 0
        else:
            sid = len(self.series)
            self.series.append(s)
            self.keys.append(s.key)
            self.key_crcs.append(s.key_crc)
            self.latest.append(0)
        self.by_pair[s.pair] = sid
        self.by_key[s.key] = sid
        return sid

    def note(self, sids: list[int], seq0: int) -> None:
        """Records ``seq0, seq0 + 1, ...`` of series ``sids`` were written: the newest of each
        series wins (seqs ascend, so the last assignment is the newest)."""
        latest = self.latest
        for _ in map(latest.__setitem__, sids, range(seq0, seq0 + len(sids))):
            pass

    def raise_latest(self, sid: int, seq: int) -> None:
        """Recovery found record ``seq`` of series ``sid``."""
        if seq > self.latest[sid]:
            self.latest[sid] = seq

    def drop_through(self, seq: int, keep: Collection[int] = ()) -> None:
        """The ring dropped every record up to ``seq``: forget series with none left, except
        those in ``keep`` (a batch being written names them) and those never written yet."""
        latest = self.latest
        for sid, s in enumerate(self.series):
            if s is not None and 0 < latest[sid] <= seq and sid not in keep:
                del self.by_pair[(s.check, s.target)]
                del self.by_key[s.key]
                self.series[sid] = None
                latest[sid] = 0
                self._free.append(sid)

    def matching(self, check: str | None, target: str | None) -> list[int]:
        """Ids of the series with records, with that check and/or target (``None``: any)."""
        latest = self.latest
        if check is not None and target is not None:
            sid = self.by_pair.get((check, target))
            return [sid] if sid is not None and latest[sid] else []
        return [
            sid for sid, s in enumerate(self.series)
            if s is not None and latest[sid] and (check is None or s.check == check)
            and (target is None or s.target == target)
        ]  # fmt: skip

    def names(self) -> list[tuple[str, str]]:
        """(check, target) of every series with records."""
        latest = self.latest
        return sorted((s.check, s.target) for sid, s in enumerate(self.series)
                      if s is not None and latest[sid])  # fmt: skip

    def count(self) -> int:
        """Series with records."""
        return sum(1 for s in self.latest if s)

    def memory_bytes(self) -> int:
        """Estimate of what the table holds (objects, names, lists, dicts)."""
        n = len(self.series)
        names = sum(len(s.key) for s in self.series if s is not None)
        return n * 8 * 5 + len(self.by_pair) * (2 * 100 + 150) + 2 * names
