"""Reading records back: finding candidate frames in the frame index, decoding only those.

Theory of operation
-------------------
The store indexes frames, not records (:mod:`meshmon.store.index`), so every read works in
two steps. First the frame index narrows the search: a seq is bisected to its segment and
frame; a time range to a contiguous run of frames per segment (and whole segments are skipped
by their oldest and newest timestamp); a series filter to the frames whose Bloom filter admits
the series (and whole segments that never defined it are skipped). Then each candidate frame
is looked at: its column part (timestamps, series ids: ~14 bytes a record, inflated without
the payloads) decides which of its records match, exactly, and only a frame with a match has
its payloads inflated. Decoded frames are kept in a small LRU (``CACHED_FRAMES``), so reading a
frame's records one by one (``get``, ``latest``, cursors) inflates it once.

Functions over the store's segments; the store calls them with its mutex held. Results are in
seq (append) order, or its reverse; a record's timestamp is the probe's, so timestamps need not
be monotonic and time filters always check each candidate's own timestamp.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshmon.store import batch
from meshmon.store.format import decode_frame
from meshmon.store.index import NO_SERIES, SeriesTable
from meshmon.store.records import Record
from meshmon.store.segment import Segment

log = logging.getLogger("meshmon.store")

CACHED_FRAMES = 8
"""Decoded frames kept (each at most ~64 KiB of payloads): a walk over the newest records of
many series, or a cursor read, decodes each frame once."""
FILTERED_SERIES = 16
"""A query matching more series than this in a segment skips the Bloom filters (they would
admit nearly every frame) and looks at the columns of every frame in its time range."""


@dataclass
class Decoded:
    """A frame's records: their timestamps and series ids, and maybe payloads."""

    seq0: int
    tss: Sequence[float]
    sids: Sequence[int]
    """Segment-local series ids, or global ones where ``gmap`` is ``None``."""
    gmap: Sequence[int] | None
    """Global id of each local one (the segment's ``gids``)."""
    payloads: list[bytes] | None = None

    def gid(self, i: int) -> int:
        """Global series id of record ``i``."""
        return self.gmap[self.sids[i]] if self.gmap is not None else self.sids[i]


class Reader:
    """Decodes records of a list of segments (the store's own list, shared, not copied)."""

    def __init__(self, segments: list[Segment], bases: list[int], series: SeriesTable) -> None:
        self.segments = segments
        self.bases = bases
        self.series = series
        self.read_errors = 0
        self._cache: dict[tuple[int, int], Decoded] = {}

    def segment_for(self, seq: int) -> int:
        """Index of the segment that holds ``seq`` if any does."""
        return max(bisect_right(self.bases, seq) - 1, 0)

    def forget(self, seg: Segment) -> None:
        """Drop the cached frames of a segment the ring deletes."""
        for key in [key for key in self._cache if key[0] == seg.first_seq]:
            del self._cache[key]

    # --- decoding one frame ----------------------------------------------------------------

    def _matches(
        self, seg: Segment, k: int, want: set[int] | None, lids: list[int], t0: float,
        t1: float,
    ) -> tuple[Decoded, list[int]] | None:  # fmt: skip
        """Which records of frame ``k`` are of series ``want`` (``None``: any) with ``t0 <= ts
        <= t1``, and the frame with the payloads up to the last of them: only the column part
        is inflated unless one matches, and never more of the payloads than needed."""
        found = self._cache.get((seg.first_seq, k))
        if found is None and seg.version == 1:
            found = self._frame(seg, k)
        if found is None:
            data = seg.pread(seg.fpos[k], seg.end_of(k))
            head = batch.read_head(data, 0, len(data))
            opened = batch.open_meta(data, head, seg.dicts, lids) if head is not None else None
            if opened is False:  # a false positive of the filter, found cheaply
                return Decoded(seg.seq0(k), (), (), None), []
            if opened is None or ((meta := opened[0]).sids and max(meta.sids) >= len(seg.gids)):
                return None
            inflater = opened[1]
            found = Decoded(seg.seq0(k), meta.tss, meta.sids, seg.gids)
        tss = found.tss
        if want is None:
            idx = [i for i, ts in enumerate(tss) if t0 <= ts <= t1]
        else:
            if lids and found.gmap is not None:  # find the few records in C
                idx = [i for lid in lids for i in _positions(found.sids, lid)]
                if len(lids) > 1:
                    idx.sort()
            else:
                gid = found.gid
                idx = [i for i in range(len(tss)) if gid(i) in want]
            idx = [i for i in idx if t0 <= tss[i] <= t1]
        if idx and found.payloads is None:
            found.payloads = batch.first_payloads(meta, inflater, idx[-1] + 1)
            if found.payloads is None:
                return None
        return found, idx

    def _frame(self, seg: Segment, k: int) -> Decoded | None:
        """Frame ``k`` decoded with its payloads; ``None`` if it no longer decodes."""
        key = (seg.first_seq, k)
        found = self._cache.pop(key, None)
        if found is None or found.payloads is None:
            found = self._decode(seg, k)
            if found is None:
                return None
        if len(self._cache) >= CACHED_FRAMES:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = found  # the newest use goes last: least recently used go first
        return found

    def _decode(self, seg: Segment, k: int) -> Decoded | None:
        data = seg.pread(seg.fpos[k], seg.end_of(k))
        if seg.version == 1:
            frame = decode_frame(data, 0)
            if frame is None:
                return None
            gid = self.series.by_key.get(frame.key)
            return Decoded(frame.seq, [frame.ts], [NO_SERIES if gid is None else gid], None,
                           [frame.payload])  # fmt: skip
        head = batch.read_head(data, 0, len(data))
        if head is None:
            return None
        meta = batch.decode_meta(data, head, seg.dicts)
        payloads = batch.decode_payloads(data, head, seg.dicts)
        if meta is None or payloads is None or head.count != seg.fcount[k]:
            return None
        if meta.sids and max(meta.sids) >= len(seg.gids):
            return None
        return Decoded(head.seq0, meta.tss, meta.sids, seg.gids, payloads)

    def _records(
        self, seg: Segment, k: int, idx: Iterable[int], out: list[Record],
        f: Decoded | None = None,
    ) -> None:  # fmt: skip
        """Append records number ``idx`` (within frame ``k``; of ``f`` if given) to ``out``."""
        if f is None:
            f = self._frame(seg, k)
        series = self.series.series
        for i in idx:
            g = f.gid(i) if f is not None else NO_SERIES
            s = series[g] if g != NO_SERIES else None
            if f is None or f.payloads is None or s is None:
                self.read_error(seg, k, seg.seq0(k) + i)
                continue
            out.append(Record(f.seq0 + i, f.tss[i], s.check, s.target, f.payloads[i]))

    def read_error(self, seg: Segment, k: int, seq: int) -> None:
        self.read_errors += 1
        log.error("store segment %s: record seq %d in the frame at offset %d fails its checksum "
                  "or does not decode on read (disk corruption?); skipped", seg.path, seq,
                  seg.fpos[k])  # fmt: skip

    # --- reads -----------------------------------------------------------------------------

    def fetch(self, seqs: Iterable[int]) -> list[Record]:
        """The records with these seqs, in the given order (absent ones left out)."""
        out: list[Record] = []
        if not self.segments:
            return out
        for seq in seqs:
            seg = self.segments[self.segment_for(seq)]
            k = seg.frame_of(seq)
            if k >= 0:
                self._records(seg, k, (seq - seg.seq0(k),), out)
        return out

    def read(self, from_seq: int, upto: int, limit: int, max_bytes: int) -> list[Record]:
        """Records ``from_seq..upto`` in order, at most ``limit`` or about ``max_bytes`` of
        frames (at least one record)."""
        out: list[Record] = []
        budget = max_bytes
        for seg in self.segments[self.segment_for(from_seq) :] if self.segments else ():
            if len(out) >= limit or budget <= 0:
                break
            k = first = seg.frame_ge(from_seq)
            while k < seg.frames and len(out) < limit:
                s0 = seg.seq0(k)
                if s0 > upto or (k > first and seg.fpos[k] > seg.fpos[first] + budget):
                    break
                lo = max(from_seq, s0)
                hi = min(upto + 1, s0 + seg.fcount[k], lo + limit - len(out))
                self._records(seg, k, range(lo - s0, hi - s0), out)
                k += 1
            if k > first:
                budget -= seg.end_of(k - 1) - seg.fpos[first]
            if k < seg.frames:
                break  # stopped inside this segment: by seq, count or size
        return out

    def query(
        self, gids: list[int] | None, since: float | None, until: float | None, limit: int,
        newest: bool,
    ) -> list[Record]:  # fmt: skip
        """Records of these series (``None``: any) with ``since <= ts <= until`` (``None``: no
        bound): the first ``limit`` in seq order, or in reverse with ``newest``."""
        t0 = -math.inf if since is None else since
        t1 = math.inf if until is None else until
        timed = since is not None or until is not None
        want = set(gids) if gids is not None else None
        out: list[Record] = []
        for seg in reversed(self.segments) if newest else self.segments:
            frames = seg.frames_between(t0, t1) if timed else range(seg.frames)
            masks = None
            lids: list[int] = []
            if gids is not None and frames:
                lids = seg.locals_of(gids)
                if not lids:
                    continue
                if len(lids) <= FILTERED_SERIES:
                    masks = seg.query_masks(lids)
            for k in reversed(frames) if newest else frames:
                if masks is not None and not seg.may_hold(k, masks):
                    continue
                f = None
                if want is None and not timed:
                    idx: Sequence[int] = range(seg.fcount[k])
                else:
                    found = self._matches(seg, k, want, lids if masks else [], t0, t1)
                    if found is None:
                        self.read_error(seg, k, seg.seq0(k))
                        continue
                    f, idx = found
                    if not idx:
                        continue
                take = limit - len(out)
                self._records(seg, k, idx[::-1][:take] if newest else idx[:take], out, f)
                if len(out) >= limit:
                    return out
        return out


def _positions(sids: Sequence[int], lid: int) -> list[int]:
    """Where ``lid`` occurs in ``sids`` (an array: each search runs in C)."""
    out: list[int] = []
    i = -1
    try:
        while True:
            i = sids.index(lid, i + 1)
            out.append(i)
    except ValueError:
        return out
