"""Reading a run of records as columns: what an uploader sends, without an object per record.

Theory of operation
-------------------
A version-2 frame already keeps its records as columns (:mod:`meshmon.store.batch`):
timestamps, segment-local series ids and payload lengths in ``meta``, then the payloads back to
back. :func:`read_columns` hands them on in that shape: per frame it inflates the meta and the
payloads once and appends array slices (``array`` operations, in C) to one
:class:`StoredColumns`, so a 5,000-record read costs a few dozen Python operations per frame
rather than a :class:`~meshmon.store.records.Record` each (the cursor read of
:meth:`~meshmon.store.ring.RingStore.read` builds those).

The run is contiguous: it starts at the first readable record at or after ``from_seq`` (a frame
that no longer decodes is a read error, counted and logged, as for :meth:`Reader.read`) and
stops before the first seq missing after that, at ``limit`` records or once about
``max_bytes`` of frames were read (at least one frame). Version-1 segments (one record a
frame) are read record by record through the reader; they only exist in stores written before
version 2.

Called by the store with its mutex held.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from itertools import repeat

from meshmon.store import batch
from meshmon.store.index import NO_SERIES
from meshmon.store.query import Reader
from meshmon.store.segment import Segment


@dataclass
class StoredColumns:
    """Records ``first .. first + count - 1`` as columns."""

    first: int
    tss: array[float] = field(default_factory=lambda: array("d"))
    """Timestamps (Unix seconds)."""
    gids: array[int] = field(default_factory=lambda: array("I"))
    """Global series id of each record (the store's series table)."""
    names: dict[int, tuple[str, str]] = field(default_factory=dict)
    """(check, target) of every series id in ``gids``."""
    payloads: bytearray = field(default_factory=bytearray)
    """The payloads, back to back."""
    plens: array[int] = field(default_factory=lambda: array("I"))
    """Length of each payload."""
    words: array[int] = field(default_factory=lambda: array("I"))
    """Each record's summary word, as appended (0: none; see :mod:`meshmon.store.batch`)."""
    rtts: array[float] = field(default_factory=lambda: array("d"))
    """Each record's summary RTT, as appended (NaN: none)."""

    @property
    def count(self) -> int:
        """Records held."""
        return len(self.tss)

    @property
    def last(self) -> int:
        """Seq of the newest record (``first - 1`` when empty)."""
        return self.first + len(self.tss) - 1

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records only."""
        if n < self.count:
            del self.payloads[sum(self.plens[:n]) :]
            del self.tss[n:], self.gids[n:], self.plens[n:], self.words[n:], self.rtts[n:]


def read_columns(reader: Reader, from_seq: int, upto: int, limit: int,
                 max_bytes: int) -> StoredColumns:  # fmt: skip
    """Records ``from_seq .. upto`` as one contiguous run of columns (see the module doc)."""
    out = StoredColumns(from_seq)
    segments = reader.segments
    budget = max_bytes
    started = False
    for seg in segments[reader.segment_for(from_seq) :] if segments else ():
        k = first = seg.frame_ge(from_seq)
        while k < seg.frames and out.count < limit:
            s0 = seg.seq0(k)
            if s0 > upto or (k > first and seg.fpos[k] > seg.fpos[first] + budget):
                return out
            lo = max(from_seq, s0)
            if started and lo != out.last + 1:
                return out  # a gap: the run ends before it
            hi = min(upto + 1, s0 + seg.fcount[k], lo + limit - out.count)
            if not _take(reader, seg, k, lo - s0, hi - s0, out):
                if started:
                    return out
            elif not started:
                started = True
                out.first = lo
            k += 1
        if k > first:
            budget -= seg.end_of(k - 1) - seg.fpos[first]
        if k < seg.frames or out.count >= limit or budget <= 0:
            break
    return out


def _take(reader: Reader, seg: Segment, k: int, a: int, b: int, out: StoredColumns) -> bool:
    """Append records ``a .. b - 1`` of frame ``k`` to ``out``; False if it does not decode."""
    if seg.version == 1:
        found = reader.fetch(range(seg.seq0(k) + a, seg.seq0(k) + b))
        if len(found) != b - a:
            return False
        for rec in found:
            gid = reader.series.by_pair.get((rec.check, rec.target), NO_SERIES)
            out.names[gid] = (rec.check, rec.target)
            out.tss.append(rec.ts)
            out.gids.append(gid)
            out.payloads += rec.payload
            out.plens.append(len(rec.payload))
        out.words.extend(repeat(0, len(found)))
        out.rtts.extend(repeat(math.nan, len(found)))
        return True
    data = seg.pread(seg.fpos[k], seg.end_of(k))
    head = batch.read_head(data, 0, len(data))
    opened = batch.open_meta(data, head, seg.dicts) if head is not None else None
    gmap = seg.gids
    if not opened or head is None or head.count != seg.fcount[k]:
        reader.read_error(seg, k, seg.seq0(k) + a)
        return False
    meta, inflater = opened
    sids = meta.sids[a:b]
    if sids and max(sids) >= len(gmap):
        reader.read_error(seg, k, seg.seq0(k) + a)
        return False
    raw = batch.first_payloads_raw(meta, inflater, b)
    if raw is None:
        reader.read_error(seg, k, seg.seq0(k) + a)
        return False
    plens = meta.plens
    start = sum(plens[:a]) if a else 0
    gids = array("I", map(gmap.__getitem__, sids))
    series = reader.series.series
    for gid in set(gids).difference(out.names):
        s = series[gid]
        if s is None:  # pragma: no cover - the segment's ids always name live series
            reader.read_error(seg, k, seg.seq0(k) + a)
            return False
        out.names[gid] = s.pair
    out.tss.extend(meta.tss[a:b])
    out.gids.extend(gids)
    out.payloads += memoryview(raw)[start:]
    out.plens.extend(plens[a:b])
    if meta.words is not None and meta.rtts is not None:
        out.words.extend(meta.words[a:b])
        out.rtts.extend(meta.rtts[a:b])
    else:
        out.words.extend(repeat(0, b - a))
        out.rtts.extend(repeat(math.nan, b - a))
    return True
