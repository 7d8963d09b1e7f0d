"""One segment file of the ring: its packed per-record index and how to load it from disk.

A segment's records are indexed by three packed arrays (4 + 8 + 4 = 16 bytes a record): the
file offset of the frame that holds the record (shared by every record of a version-2 batch
frame), its timestamp and its series id. Seqs are not stored when they are contiguous, which
they always are unless recovery skipped a corrupt stretch.

A version-2 segment also keeps what its frames need to be decoded and extended: its preset
dictionaries, and the segment-local id of each series key defined in it (see
:mod:`meshmon.store.batch`).
"""

from __future__ import annotations

import logging
import os
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from meshmon.store import batch
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
from meshmon.store.index import SeriesTable

log = logging.getLogger("meshmon.store")

SUFFIX = ".seg"


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
    """A segment file and the in-memory index of its records."""

    def __init__(
        self, path: Path, first_seq: int, size: int, header_ok: bool = True,
        version: int = FILE_VERSION,
    ) -> None:  # fmt: skip
        self.path = path
        self.first_seq = first_seq
        self.size = size
        """Bytes of valid data in the file (header included)."""
        self.header_ok = header_ok
        self.offs: array[int] = array("I")
        self.tss: array[float] = array("d")
        self.sids: array[int] = array("I")
        self.seqs: array[int] | None = None
        """Explicit seqs, only when they are not contiguous from ``base_seq``."""
        self.base_seq = first_seq
        self.version = version
        self.clean = header_ok
        """Nothing was skipped at recovery: new frames may be appended to it (version 2)."""
        self.dicts: dict[int, bytes] = {}
        """Preset dictionaries by id (version 2)."""
        self.dict_id = 0
        """The dictionary new batch frames use (0: none yet)."""
        self.seen_seq = 0
        """Newest seq found in the file, also of records recovery could not keep."""
        self.key_ids: dict[bytes, int] = {}
        """Segment-local id of each series key defined in the segment (version 2)."""
        self._fd: int | None = None

    @property
    def count(self) -> int:
        """Records in the segment."""
        return len(self.offs)

    @property
    def last_seq(self) -> int:
        """Seq of the newest record (``base_seq - 1`` when empty)."""
        if self.seqs is not None:
            return self.seqs[-1] if self.seqs else self.base_seq - 1
        return self.base_seq + len(self.offs) - 1

    def seq_at(self, i: int) -> int:
        """Seq of the ``i``-th record."""
        return self.seqs[i] if self.seqs is not None else self.base_seq + i

    def index_ge(self, seq: int) -> int:
        """Index of the first record with seq >= ``seq`` (``count`` if none)."""
        if self.seqs is not None:
            return bisect_left(self.seqs, seq)
        return min(max(seq - self.base_seq, 0), len(self.offs))

    def index_of(self, seq: int) -> int:
        """Index of the record ``seq``, or -1."""
        i = self.index_ge(seq)
        return i if i < len(self.offs) and self.seq_at(i) == seq else -1

    def end_of(self, i: int) -> int:
        """File offset past the frame of record ``i`` (and before the next record's frame)."""
        k = bisect_right(self.offs, self.offs[i], i)
        return self.offs[k] if k < len(self.offs) else self.size

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

    def seq_range(self, i: int, j: int) -> range | array[int]:
        """Seqs of records ``i..j-1``."""
        if self.seqs is not None:
            return self.seqs[i:j]
        return range(self.base_seq + i, self.base_seq + j)

    def index_bytes(self) -> int:
        """Memory held by the packed arrays."""
        n = self.offs.buffer_info()[1] * 4 + self.tss.buffer_info()[1] * 8
        n += self.sids.buffer_info()[1] * 4
        return n + (self.seqs.buffer_info()[1] * 8 if self.seqs is not None else 0)


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
    """Read a segment file and index every valid record in it.

    Never raises for bad content: a bad header, a corrupt stretch or a torn tail is described in
    the report (and logged, naming the file) while every valid record is kept.

    Args:
        path: the file.
        first_seq: the seq in its name.
        prev_seq: last seq of the previous segment; records here must be above it.
        max_body: largest plausible frame body (the segment size).
        series: the table that interns each record's (check, target).
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
    res: batch.Scan | ScanResult
    if version != 1:  # version 2, or unknown (bad header): try 2 first, the usual one
        res = batch.scan(data, start, prev_seq, max_body)
        version = 2
    if version == 1 or (not header_ok and not res.seqs):
        res = scan(data, start, prev_seq, max_body)
        version = 1
    seg = Segment(path, first_seq, res.valid_end if header_ok else len(data), header_ok, version)
    if isinstance(res, batch.Scan):
        seg.dicts, seg.dict_id, seg.key_ids = res.dicts, res.last_dict, res.key_ids
        seg.seen_seq = res.last_seq
    seg.clean = header_ok and not res.skipped
    n = len(res.seqs)
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
    get = series.by_key.get
    sids = list(map(get, res.keys))
    if None in sids:
        for i, sid in enumerate(sids):
            if sid is None:
                key = res.keys[i]
                sid = series.by_key.get(key)
                if sid is not None:
                    sids[i] = sid
                    continue
                try:
                    check, target = split_key(key)
                except ValueError:
                    check, target = "?", key.decode(errors="replace")
                sids[i] = series.intern_key(key, check, target)
    seg.offs = array("I", res.offsets)
    seg.tss = array("d", res.tss)
    seg.sids = array("I", sids)  # type: ignore[arg-type]
    seg.base_seq = res.seqs[0]
    if res.seqs[-1] - res.seqs[0] + 1 != n:
        seg.seqs = array("Q", res.seqs)
    return seg, report
