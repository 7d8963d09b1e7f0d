"""Reading records back: decoding frames and matching query filters against the indexes.

Functions over the store's segments and indexes; the store calls them with its mutex held.
Results are in seq (append) order; a record's timestamp is the probe's, so timestamps need not
be monotonic and time filters always check each candidate's own timestamp.
"""

from __future__ import annotations

import heapq
import logging
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from meshmon.store import batch
from meshmon.store.format import decode_frame
from meshmon.store.index import SeriesTable, TimeIndex
from meshmon.store.records import Record
from meshmon.store.segment import Segment

log = logging.getLogger("meshmon.store")

CACHED_FRAMES = 8
"""Decoded version-2 frames kept (each at most ~64 KiB of payloads): a query that walks the
newest records of many series, or a cursor read, decodes each frame once."""


class Reader:
    """Decodes records of a list of segments (the store's own list, shared, not copied)."""

    def __init__(self, segments: list[Segment], bases: list[int], series: SeriesTable) -> None:
        self.segments = segments
        self.bases = bases
        self.series = series
        self.read_errors = 0
        self._cache: dict[tuple[Path, int], tuple[int, list[bytes]]] = {}

    def segment_for(self, seq: int) -> int:
        """Index of the segment that holds ``seq`` if any does."""
        return max(bisect_right(self.bases, seq) - 1, 0)

    def decode(self, seg: Segment, i: int, j: int, out: list[Record]) -> None:
        """Append records ``i..j-1`` of ``seg`` to ``out``."""
        if i >= j:
            return
        if seg.version == 1:
            self._decode_v1(seg, i, j, out)
            return
        series = self.series.series
        while i < j:
            off = seg.offs[i]
            g = min(bisect_right(seg.offs, off, i), j)  # records i..g-1 share this frame
            frame = self._frame(seg, off, i)
            for k in range(i, g):
                s = series[seg.sids[k]]
                idx = seg.seq_at(k) - frame[0] if frame is not None else -1
                if frame is None or s is None or not 0 <= idx < len(frame[1]):
                    self._read_error(seg, k)
                    continue
                out.append(Record(seg.seq_at(k), seg.tss[k], s.check, s.target, frame[1][idx]))
            i = g

    def _frame(self, seg: Segment, off: int, i: int) -> tuple[int, list[bytes]] | None:
        """(first seq, payloads) of the version-2 batch frame at ``off`` (record ``i`` is in
        it); the newest few decoded frames are cached, so reading a frame's records one by
        one inflates it once."""
        key = (seg.path, off)
        found = self._cache.get(key)
        if found is not None:
            return found
        data = seg.pread(off, seg.end_of(i))
        head = batch.read_head(data, 0, len(data))
        payloads = batch.decode_payloads(data, head, seg.dicts) if head is not None else None
        if head is None or payloads is None:
            return None
        if len(self._cache) >= CACHED_FRAMES:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = found = (head.seq0, payloads)
        return found

    def _read_error(self, seg: Segment, k: int) -> None:
        self.read_errors += 1
        log.error("store segment %s: record seq %d at offset %d fails its checksum on read "
                  "(disk corruption?); skipped", seg.path, seg.seq_at(k), seg.offs[k])  # fmt: skip

    def _decode_v1(self, seg: Segment, i: int, j: int, out: list[Record]) -> None:
        base = seg.offs[i]
        data = seg.pread(base, seg.end_of(j - 1))
        series = self.series.series
        for k in range(i, j):
            frame = decode_frame(data, seg.offs[k] - base)
            s = series[seg.sids[k]]
            if frame is None or s is None:
                self._read_error(seg, k)
                continue
            out.append(Record(frame.seq, frame.ts, s.check, s.target, frame.payload))

    def fetch(self, seqs: Iterable[int]) -> list[Record]:
        """The records with these seqs, in the given order (absent ones left out)."""
        out: list[Record] = []
        for seq in seqs:
            seg = self.segments[self.segment_for(seq)]
            i = seg.index_of(seq)
            if i >= 0:
                self.decode(seg, i, i + 1, out)
        return out

    def read(self, from_seq: int, upto: int, limit: int, max_bytes: int) -> list[Record]:
        """Records ``from_seq..upto`` in order, at most ``limit`` or about ``max_bytes``."""
        out: list[Record] = []
        budget = max_bytes
        for seg in self.segments[self.segment_for(from_seq) :]:
            if len(out) >= limit or budget <= 0:
                break
            i = seg.index_ge(from_seq)
            j = min(seg.index_ge(upto + 1), i + limit - len(out))
            if i >= j:
                continue
            cut = bisect_right(seg.offs, seg.offs[i] + budget, i, j)
            j = max(cut, i + 1)
            budget -= seg.end_of(j - 1) - seg.offs[i]
            self.decode(seg, i, j, out)
        return out

    def ts_of(self, seq: int) -> float:
        """Timestamp of a stored record (NaN if absent)."""
        seg = self.segments[self.segment_for(seq)]
        i = seg.index_of(seq)
        return seg.tss[i] if i >= 0 else math.nan

    def all_seqs(self, newest: bool) -> Iterator[int]:
        """Every stored seq, newest or oldest first."""
        segs = reversed(self.segments) if newest else iter(self.segments)
        for seg in segs:
            seqs = seg.seq_range(0, seg.count)
            yield from (reversed(seqs) if newest else seqs)


def match(
    reader: Reader,
    times: TimeIndex,
    check: str | None,
    target: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    newest: bool,
) -> list[int]:
    """Seqs of the records matching every filter: the first ``limit`` in the chosen order."""
    t0 = -math.inf if since is None else since
    t1 = math.inf if until is None else until
    timed = since is not None or until is not None
    candidates: Iterator[int]
    if check is None and target is None:
        if not timed:
            return list(islice(reader.all_seqs(newest), limit))
        blocks = times.candidates(t0, t1)
        if newest:
            blocks.reverse()
        ranges = (range(b.last_seq, b.first_seq - 1, -1) if newest
                  else range(b.first_seq, b.last_seq + 1) for b in blocks)  # fmt: skip
        candidates = (seq for r in ranges for seq in r)
    else:
        arrays = [s.seqs for s in reader.series.matching(check, target) if s.seqs]
        if newest:
            candidates = heapq.merge(*(reversed(a) for a in arrays), reverse=True)
        else:
            candidates = heapq.merge(*arrays)
    if timed:
        ts_of = reader.ts_of
        candidates = (seq for seq in candidates if t0 <= ts_of(seq) <= t1)
    return list(islice(candidates, limit))
