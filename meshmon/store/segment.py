"""One segment file of the ring: its in-memory frame index and how to load it from disk.

A segment is indexed per *frame*, never per record (:mod:`meshmon.store.index` says why).
Packed arrays hold one entry per frame, 34 bytes in all at 20 records a frame (~1.7 a record),
50 at 50 (~1):

* ``fpos`` (u32): the frame's file offset;
* ``fseq`` (u32, widened to u64 only if ever needed): its first seq, minus ``base_seq``;
* ``fcount`` (u16): its records, ``fseq .. fseq + fcount - 1`` (a version-1 frame holds one);
* ``hi_run`` / ``lo_run`` (float32): the running maximum of the frames' newest timestamps and
  the running minimum, from the end, of their oldest, relative to ``tbase``, rounded outwards;
* ``mw`` (``words`` arrays of u64): the frame's filter of segment-local series ids, 128 bits
  a frame for frames of up to 32 records, 256 up to 64, else 512 (chosen per segment from the
  previous one's frames).

``gids`` maps each segment-local series id to the store's global one (a version-1 segment has
no local ids; there it lists the series present). A version-2 segment also keeps what its
frames need to be decoded and extended: its preset dictionaries, and, while it is the one
written, the local id of each series key defined in it (see :mod:`meshmon.store.batch`).
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add, and_, rshift, sub
from pathlib import Path
from typing import Any

from meshmon.store import batch, sidecar
from meshmon.store.errors import StoreError
from meshmon.store.format import (
    FILE_HEADER_SIZE,
    FILE_VERSION,
    ScanResult,
    UnsupportedVersion,
    decode_file_header,
    scan,
    split_key,
)
from meshmon.store.index import (
    NO_SERIES,
    SeriesTable,
    f32_down,
    f32_up,
    filter_words,
    fold,
    frame_mask,
    local_mask,
    mask_words,
)

log = logging.getLogger("meshmon.store")

SUFFIX = ".seg"
LOW64 = 0xFFFFFFFFFFFFFFFF


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first record is ``first_seq`` (sorts by seq)."""
    return f"{first_seq:020d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first seq encoded in a segment file name, or ``None`` if it is not one."""
    stem = name.removesuffix(SUFFIX)
    if stem == name or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


class Segment:
    """A segment file and the in-memory index of its frames."""

    def __init__(
        self, path: Path, first_seq: int, size: int, header_ok: bool = True,
        version: int = FILE_VERSION,
    ) -> None:  # fmt: skip
        self.path = path
        self.first_seq = first_seq
        self.size = size
        """Bytes of valid data in the file (header included)."""
        self.header_ok = header_ok
        self.version = version
        self.base_seq = first_seq
        """Seq of the first record once there is one; ``fseq`` is relative to it."""
        self.tbase = 0.0
        """Oldest timestamp of the first frame; ``hi_run`` and ``lo_run`` are relative to it."""
        self.fpos: array[int] = array("I")
        self.fseq: array[int] = array("I")
        self.fcount: array[int] = array("H")
        self.hi_run: array[float] = array("f")
        self.lo_run: array[float] = array("f")
        self.words = 2
        self.mw: list[array[int]] = [array("Q"), array("Q")]
        self.gids: array[int] = array("I")
        """Global series id of each segment-local one (version 1: of each series present)."""
        self.count = 0
        """Records in the segment."""
        self.last_seq = first_seq - 1
        """Seq of the newest record (``first_seq - 1`` when empty)."""
        self.tmin = math.inf
        self.tmax = -math.inf
        """Oldest and newest timestamp of any record (NaNs aside)."""
        self.contiguous = True
        """Every seq from the first record's to the last's is in the segment."""
        self.clean = header_ok
        """Nothing was skipped at recovery: new frames may be appended to it (version 2)."""
        self.dicts: dict[int, bytes] = {}
        """Preset dictionaries by id (version 2)."""
        self.dict_id = 0
        """The dictionary new batch frames use (0: none yet)."""
        self.seen_seq = 0
        """Newest seq found in the file, also of records recovery could not keep."""
        self.key_ids: dict[bytes, int] = {}
        """Segment-local id of each series key defined in it; kept only while it is written."""
        self.lasts: array[int] = array("Q")
        """Seq of the newest record of each segment-local series (for the saved index)."""
        self.crc = 0
        """CRC-32 of the file's valid bytes (version 2), kept up as frames are written."""
        self.saved = False
        """Its frame index is saved (:mod:`meshmon.store.sidecar`) and matches it."""
        self._fd: int | None = None

    # --- growing ---------------------------------------------------------------------------

    def add_frame(
        self, pos: int, seq0: int, lids: list[int], lo: float, hi: float, mask: int
    ) -> None:
        """Index a frame just written: records ``seq0 ..`` of segment-local series ``lids``,
        with timestamps in ``[lo, hi]``."""
        n = len(lids)
        lasts = self.lasts
        if len(lasts) < len(self.gids):
            lasts.frombytes(bytes(8 * (len(self.gids) - len(lasts))))
        for _ in map(lasts.__setitem__, lids, range(seq0, seq0 + n)):
            pass
        if not self.fpos:
            self.base_seq, self.tbase = seq0, lo if math.isfinite(lo) else 0.0
        rel = seq0 - self.base_seq
        if self.fpos and rel != self.fseq[-1] + self.fcount[-1]:
            self.contiguous = False
        if rel > 0xFFFFFFFF and self.fseq.typecode == "I":
            self.fseq = array("Q", self.fseq)
        self.fpos.append(pos)
        self.fseq.append(rel)
        self.fcount.append(n)
        hi_r = f32_up(hi - self.tbase)
        self.hi_run.append(max(hi_r, self.hi_run[-1]) if self.hi_run else hi_r)
        lo_run = self.lo_run
        lo_run.append(f32_down(lo - self.tbase))
        low, k = lo_run[-1], len(lo_run) - 2
        while k >= 0 and lo_run[k] > low:  # keep it the minimum of everything after
            lo_run[k] = low
            k -= 1
        mask = fold(mask, self.words)
        for w in self.mw:
            w.append(mask & LOW64)
            mask >>= 64
        self.count += n
        self.last_seq = seq0 + n - 1
        self.tmin, self.tmax = min(self.tmin, lo), max(self.tmax, hi)

    def set_frames(self, res: batch.Scan) -> None:
        """Index every frame a recovery scan kept, in bulk (the work stays in C)."""
        if not res.fpos:
            return
        base, los, his = res.fseq[0], res.flo, res.fhi
        self.base_seq = base
        self.tbase = tbase = los[0] if math.isfinite(los[0]) else 0.0
        rels = list(map(sub, res.fseq, repeat(base)))
        self.fseq = array("I" if rels[-1] <= 0xFFFFFFFF else "Q", rels)
        self.fpos = array("I", res.fpos)
        self.fcount = array("H", res.fcount)
        self.contiguous = rels[1:] == list(map(add, rels[:-1], res.fcount[:-1]))
        self.hi_run = array("f", accumulate(map(f32_up, map(sub, his, repeat(tbase))), max))
        lows = list(map(f32_down, map(sub, los, repeat(tbase))))
        self.lo_run = array("f", reversed(list(accumulate(reversed(lows), min))))
        self.set_words(filter_words(sum(res.fcount) / len(res.fcount)))
        masks = list(map(fold, res.fmask, repeat(self.words)))
        self.mw = [array("Q", map(and_, map(rshift, masks, repeat(64 * i)), repeat(LOW64)))
                   for i in range(self.words)]  # fmt: skip
        self.count = sum(res.fcount)
        self.last_seq = res.fseq[-1] + res.fcount[-1] - 1
        self.tmin, self.tmax = min(los), max(his)

    def seal(self) -> None:
        """No more frames: trim the arrays to their size and forget the key table."""
        for name in ("fpos", "fseq", "fcount", "hi_run", "lo_run", "gids", "lasts"):
            setattr(self, name, getattr(self, name)[:])
        self.mw = [w[:] for w in self.mw]
        self.key_ids = {}

    # --- finding frames --------------------------------------------------------------------

    @property
    def frames(self) -> int:
        """Frames holding records."""
        return len(self.fpos)

    def frame_of(self, seq: int) -> int:
        """Index of the frame holding record ``seq``, or -1."""
        rel = seq - self.base_seq
        k = bisect_right(self.fseq, rel) - 1
        return k if k >= 0 and rel < self.fseq[k] + self.fcount[k] else -1

    def frame_ge(self, seq: int) -> int:
        """Index of the first frame holding a record with seq >= ``seq`` (``frames`` if none)."""
        rel = seq - self.base_seq
        k = bisect_right(self.fseq, rel) - 1
        if k < 0:
            return 0
        return k if rel < self.fseq[k] + self.fcount[k] else k + 1

    def seq0(self, k: int) -> int:
        """Seq of the first record of frame ``k``."""
        return self.base_seq + self.fseq[k]

    def count_ge(self, seq: int) -> int:
        """Records with seq >= ``seq``."""
        if not self.count or seq <= self.base_seq:
            return self.count
        if seq > self.last_seq:
            return 0
        if self.contiguous:
            return self.last_seq - seq + 1
        k = self.frame_ge(seq)
        if k >= self.frames:
            return 0
        part = self.fcount[k] - max(0, seq - self.seq0(k))
        return part + sum(self.fcount[k + 1 :])

    def end_of(self, k: int) -> int:
        """File offset past frame ``k`` (and before the next one)."""
        return self.fpos[k + 1] if k + 1 < len(self.fpos) else self.size

    def frames_between(self, t0: float, t1: float) -> range:
        """Frames that may hold a record with ``t0 <= ts <= t1`` (a superset, in order)."""
        if self.tmax < t0 or self.tmin > t1:
            return range(0)
        a = bisect_left(self.hi_run, t0 - self.tbase)
        return range(a, max(a, bisect_right(self.lo_run, t1 - self.tbase)))

    def locals_of(self, gids: list[int]) -> list[int]:
        """Segment-local ids of these global series ids, those present in the segment."""
        have = self.gids
        if len(gids) > 8:
            want = set(gids)
            return [i for i, g in enumerate(have) if g in want]
        return [have.index(g) for g in gids if g in have]

    def set_words(self, words: int) -> None:
        """Use filters of ``words`` 64-bit words (before the first frame)."""
        self.words = words
        self.mw = [array("Q") for _ in range(words)]

    def query_masks(self, lids: list[int]) -> list[list[tuple[int, int]]]:
        """What :meth:`may_hold` takes to look for these segment-local series ids."""
        return [mask_words(fold(local_mask(lid), self.words)) for lid in lids]

    def may_hold(self, k: int, masks: list[list[tuple[int, int]]]) -> bool:
        """Frame ``k``'s filter admits one of these series (from :meth:`query_masks`)."""
        mw = self.mw
        return any(all(mw[i][k] & bits == bits for i, bits in m) for m in masks)

    # --- file ------------------------------------------------------------------------------

    def pread(self, start: int, end: int) -> bytes:
        """Read ``[start, end)`` of the file."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        """Close the read handle."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def index_bytes(self) -> int:
        """Memory held by the packed arrays."""
        arrays: list[array[Any]] = [self.fpos, self.fseq, self.fcount, self.hi_run,
                                    self.lo_run, *self.mw, self.gids, self.lasts]  # fmt: skip
        return sum(a.buffer_info()[1] * a.itemsize for a in arrays)


@dataclass
class LoadReport:
    """What loading one segment found; the store sums these into its recovery info."""

    records: int = 0
    tail_bytes: int = 0
    """Torn or corrupt bytes after the last valid frame."""
    skipped_records: int = 0
    skipped_bytes: int = 0
    problems: list[str] = field(default_factory=list)


def load_segment(
    path: Path, first_seq: int, prev_seq: int, max_body: int, series: SeriesTable
) -> tuple[Segment, LoadReport]:
    """Read a segment file and index every valid frame in it.

    Never raises for bad content: a bad header, a corrupt stretch or a torn tail is described in
    the report (and logged, naming the file) while every valid record is kept.

    Args:
        path: the file.
        first_seq: the seq in its name.
        prev_seq: last seq of the previous segment; records here must be above it.
        max_body: largest plausible frame body (the segment size).
        series: the table that interns each series and learns its newest record.
    """
    data = path.read_bytes()
    report = LoadReport()
    version = 0
    try:
        header_first, version = decode_file_header(data)
        start, header_ok = FILE_HEADER_SIZE, True
        if header_first != first_seq:
            report.problems.append(f"header says first seq {header_first}, name says {first_seq}")
    except UnsupportedVersion as exc:
        raise StoreError(f"segment {path}: {exc}; run that meshmon, or move the store "
                         "directory aside to start an empty one") from None  # fmt: skip
    except ValueError as exc:
        start, header_ok = 0, False
        report.problems.append(f"bad file header: {exc}; scanning the whole file for records")
    if header_ok and version == 2:
        seg = Segment(path, first_seq, len(data))
        if sidecar.load(seg, data, series):
            report.records = seg.count
            return seg, report
    res: batch.Scan | ScanResult
    if version != 1:  # version 2, or unknown (bad header): try 2 first, the usual one
        res = batch.scan(data, start, prev_seq, max_body, records=False)
        version = 2
    if version == 1 or (not header_ok and not res.fpos):  # type: ignore[union-attr]
        res = scan(data, start, prev_seq, max_body)
        version = 1
    seg = Segment(path, first_seq, res.valid_end if header_ok else len(data), header_ok, version)
    if isinstance(res, batch.Scan):
        seg.dicts, seg.dict_id, seg.key_ids = res.dicts, res.last_dict, res.key_ids
        seg.seen_seq = res.last_seq
        seg.crc = zlib.crc32(memoryview(data)[: res.valid_end])
        n = sum(res.fcount)
    else:
        n = len(res.seqs)
    seg.clean = header_ok and not res.skipped
    report.records = n
    report.tail_bytes = len(data) - res.valid_end if n or header_ok else len(data)
    for sk in res.skipped:
        report.skipped_records += sk.records
        report.skipped_bytes += sk.end - sk.start
        what = getattr(sk, "why", "corrupt")
        report.problems.append(
            f"{what} stretch at bytes {sk.start}-{sk.end} skipped ({sk.records} records lost)"
            if what == "corrupt" else
            f"{what} at bytes {sk.start}-{sk.end}; skipped ({sk.records} records lost)"
        )  # fmt: skip
    if not n:
        return seg, report
    if isinstance(res, batch.Scan):
        _index_v2(seg, res, series)
    else:
        _index_v1(seg, res, series)
    return seg, report


def global_id(series: SeriesTable, key: bytes) -> int:
    sid = series.by_key.get(key)
    if sid is None:
        try:
            check, target = split_key(key)
        except ValueError:
            check, target = "?", key.decode(errors="replace")
        sid = series.intern_key(key, check, target)
    return sid


def _index_v2(seg: Segment, res: batch.Scan, series: SeriesTable) -> None:
    gids = [NO_SERIES] * (max(res.key_ids.values()) + 1)
    lasts = [0] * len(gids)
    for key, lid in res.key_ids.items():
        last = res.last_of.get(lid)
        if last is not None:  # a series defined here whose records were all lost is not one
            gids[lid] = sid = global_id(series, key)
            lasts[lid] = last
            series.raise_latest(sid, last)
    seg.gids = array("I", gids)
    seg.lasts = array("Q", lasts)
    seg.set_frames(res)


def _index_v1(seg: Segment, res: ScanResult, series: SeriesTable) -> None:
    """A version-1 segment: one frame per record; local ids number the series present."""
    local: dict[int, int] = {}
    lids = []
    for seq, key in zip(res.seqs, res.keys, strict=True):
        sid = global_id(series, key)
        series.raise_latest(sid, seq)
        lids.append(local.setdefault(sid, len(local)))
    seg.gids = array("I", local)
    one = [1] * len(res.seqs)
    frames = batch.Scan(fpos=res.offsets, fseq=res.seqs, fcount=one, flo=res.tss, fhi=res.tss,
                        fmask=list(map(frame_mask, zip(lids))))  # fmt: skip
    seg.set_frames(frames)
