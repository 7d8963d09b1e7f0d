"""Version-2 segment frames: one compressed frame per batch of records. Pure functions.

Theory of operation
-------------------
A version-2 segment is the 32-byte file header (:mod:`meshmon.store.format`) followed by
frames of two kinds, appended and never rewritten::

    frame   magic "\\xe5MB\\x1f" | body_len u32 | seq0 u64 | count u16 | kind u8 | flags u8
            | meta_len u32 | dict_id u32 | body | crc32 u32 (over the 28 header bytes, then body)

* A **dictionary frame** (kind 1, count 0) carries raw bytes that later batch frames of the same
  segment use as zlib's preset dictionary. ``dict_id`` is the CRC-32 of those bytes, ``seq0`` the
  seq of the next record. The writer fills it from recently written records, so that even a
  batch of a handful of results compresses well: field names, check and target names, agent
  name are all back-references into it.
* A **batch frame** (kind 0) holds records ``seq0 .. seq0 + count - 1``. Its body is one raw
  deflate stream (preset dictionary ``dict_id``, 0 for none) of ``meta`` then the payloads::

      meta  def_base u32 | n_defs u32 | n_defs key lengths u16 | keys
            | ts column: u64 deltas of the float64 bit patterns (mod 2**64)
            | series column: u16 (u32 with flag WIDE_SIDS) segment-local series ids
            | payload length column: u32
            | with flag SUMMARIES: summary column u32, RTT column f64 (NaN: none)

  The summary columns hold what the writer said of each record beside its payload (for the
  agent, :func:`~meshmon.results.encoded.ping_summary`: a ping's counts, and its mean RTT), so
  that an upload has a result's outcome without parsing the result (:mod:`meshmon.sync.build`);
  the store does not interpret them. A frame of records without one has no such columns.

  Series keys (``check NUL target``) are interned per segment: the first frame that uses a key
  in a segment defines it, with explicit ids ``def_base ..``, and every record names its series
  by that id. Fixed-width columns keep encoding in C (``array``, ``map``); deflate squeezes
  their zero bytes. Recovery inflates only the ``meta`` prefix of each frame (``meta_len``
  bytes), never the payloads.

The checksum covers the compressed bytes, so a torn or flipped frame is rejected before zlib
sees it, exactly like a version-1 frame; the magic lets a scanner resynchronise on the next
frame, and ``seq0`` must be above every seq before it. What the checksum cannot catch (a
hostile but well-formed frame) is caught by decoding: a frame whose dictionary is unknown,
whose meta does not inflate or whose lengths disagree, or that names an undefined series is
skipped at recovery and its records are counted as lost; nothing raises out of :func:`scan`.
Payloads are only inflated when read, so a payload stream that lies is a read error then
(counted in ``read_errors`` and logged), never a crash. The seqs of records that could not be
kept are never given out again.

Measured (``python -m benchmarks.store``): the agent's ping result, ~262 bytes of CBOR, takes
~50 bytes on disk in frames of 50 records (1,000 results/s, one frame per 50 ms tick) and
~53-57 through the agent's own path at 100 results/s (the trio wrapper gathers a 200 ms fsync
round into one frame), against ~314 in version 1: a MiB holds ~20,000 results.
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import and_, sub
from typing import Literal

from meshmon.store.index import frame_mask

MAGIC = b"\xe5MB\x1f"
"""Starts every version-2 frame (differs from version 1's, so the two never mix up)."""
HEAD = struct.Struct("<4sIQHBBII")
HEAD_SIZE = HEAD.size  # 28
CRC = struct.Struct("<I")
OVERHEAD = HEAD_SIZE + CRC.size  # 32
META_HEAD = struct.Struct("<II")

KIND_BATCH = 0
KIND_DICT = 1
WIDE_SIDS = 1
"""Flag: the series column is u32 (a segment with more than 65,535 series)."""
SUMMARIES = 2
"""Flag: the meta ends with the summary columns (u32 and f64 per record)."""
SUMMARIZED = 4
"""Flag (with :data:`SUMMARIES`): every record of the frame has a summary (no word is 0), as
the header alone tells a reader that ships frames (:mod:`meshmon.store.frames`)."""

MAX_RECORDS = 0xFFFF
"""Most records in one frame (``count`` is a u16)."""
RAW_TARGET = 64 * 1024
"""Uncompressed bytes per frame the writer aims at: compression is as good as with larger
frames (deflate's window is 32 KiB), and a read of one record inflates at most this much."""
LEVEL = 1
"""zlib level. Measured on the agent's ping results in the 250-record frames of a 200 ms fsync
round at 1000 results/s: level 6 stores ~21 bytes a result for ~3.3 us of CPU each (frame and
all), level 1 ~24 bytes for ~1.6 us; 9 saves under 1% over 6 for ~15% more CPU. Both sizes are
far inside the goal (<= 60 B a result: a day at 100 results/s in 512 MiB), while CPU per probe
is the agent's scarcest budget (issue 9), so the fast level."""
MEM_LEVEL = 8
"""zlib's hash table size; 9 compresses these frames no better and takes ~50 us more to set up
per frame (measured), which is most of the cost of a one-record frame."""
DICT_BYTES = 4096
"""Size of a segment's preset dictionary: a few typical records (check/target keys and
payloads); larger ones cost more to set up per frame and gain little."""
MASK = 2**64 - 1
WORST_EXTRA = 64
WORST_RATIO = 1000
"""A frame of one record of key + payload ``n`` bytes takes at most ``OVERHEAD + WORST_EXTRA +
n + n // (WORST_RATIO - 1)`` bytes: meta (22 bytes and the key) and deflate's worst case (5
bytes per 16 KiB stored block, plus a few)."""


def dict_id(zdict: bytes) -> int:
    """The id by which batch frames name a dictionary (never 0, which means none)."""
    return zlib.crc32(zdict) or 1


def encode_dict(seq: int, zdict: bytes) -> bytes:
    """A dictionary frame; ``seq`` is the seq the next record will get."""
    head = HEAD.pack(MAGIC, len(zdict), seq, 0, KIND_DICT, 0, 0, dict_id(zdict))
    return b"".join((head, zdict, CRC.pack(zlib.crc32(zdict, zlib.crc32(head)))))


def encode_batch(
    seq0: int,
    tss: tuple[float, ...] | list[float],
    sids: list[int],
    def_base: int,
    defs: list[bytes],
    payloads: tuple[bytes, ...] | list[bytes],
    zdict: bytes | None,
    level: int = LEVEL,
    summaries: tuple[Sequence[int], Sequence[float]] | None = None,
) -> bytes:
    """Frame records ``seq0 ..`` (segment-local series ids ``sids``, defining ``defs`` as ids
    ``def_base ..``, with the summary columns ``summaries`` if given) into one compressed batch
    frame.

    Raises:
        OverflowError: a timestamp is not a float or a count exceeds the format.
        TypeError: a timestamp is not a number.
    """
    n = len(payloads)
    bits = array("Q", array("d", tss).tobytes())
    deltas = array("Q", map(and_, map(sub, bits, [0, *bits[:-1]]), repeat(MASK)))
    wide = bool(sids) and max(sids) > 0xFFFF
    meta = b"".join((
        META_HEAD.pack(def_base, len(defs)), array("H", map(len, defs)).tobytes(), *defs,
        deltas.tobytes(), array("I" if wide else "H", sids).tobytes(),
        array("I", map(len, payloads)).tobytes(),
        *((array("I", summaries[0]).tobytes(), array("d", summaries[1]).tobytes())
          if summaries is not None else ()),
    ))  # fmt: skip
    comp = (zlib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, zdict)
            if zdict else zlib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL))  # fmt: skip
    body = comp.compress(meta) + comp.compress(b"".join(payloads)) + comp.flush()
    did = dict_id(zdict) if zdict else 0
    flags = (WIDE_SIDS if wide else 0) | (0 if summaries is None else SUMMARIES | (
        SUMMARIZED if summaries[0] and min(summaries[0]) else 0))
    head = HEAD.pack(MAGIC, len(body), seq0, n, KIND_BATCH, flags, len(meta), did)
    return b"".join((head, body, CRC.pack(zlib.crc32(body, zlib.crc32(head)))))


@dataclass
class Head:
    """A frame header whose checksum verified."""

    pos: int
    end: int
    seq0: int
    count: int
    kind: int
    flags: int
    meta_len: int
    dict_id: int


def read_head(buf: bytes | memoryview, pos: int, max_body: int) -> Head | None:
    """The verified header of the frame at ``pos``; ``None`` unless it is whole and its
    checksum matches."""
    if pos + OVERHEAD > len(buf):
        return None
    magic, blen, seq0, count, kind, flags, meta_len, did = HEAD.unpack_from(buf, pos)
    end = pos + OVERHEAD + blen
    if magic != MAGIC or blen > max_body or end > len(buf) or kind > KIND_DICT:
        return None
    mv = memoryview(buf)
    crc = zlib.crc32(mv[pos + HEAD_SIZE : end - 4], zlib.crc32(mv[pos : pos + HEAD_SIZE]))
    if crc != CRC.unpack_from(buf, end - 4)[0]:
        return None
    return Head(pos, end, seq0, count, kind, flags, meta_len, did)


@dataclass
class Meta:
    """The decoded ``meta`` of a batch frame."""

    def_base: int
    defs: list[bytes]
    tss: array[float]
    sids: array[int]
    plens: array[int]
    words: array[int] | None = None
    """The summary column (flag :data:`SUMMARIES`), else None."""
    rtts: array[float] | None = None
    """The RTT column (flag :data:`SUMMARIES`), else None."""


def _inflater(h: Head, dicts: dict[int, bytes]) -> zlib._Decompress | None:
    if not h.dict_id:
        return zlib.decompressobj(-15)
    zdict = dicts.get(h.dict_id)
    return zlib.decompressobj(-15, zdict=zdict) if zdict is not None else None


def decode_meta(buf: bytes | memoryview, h: Head, dicts: dict[int, bytes]) -> Meta | None:
    """Inflate and parse the meta of a verified batch frame; ``None`` if it does not hold
    together (unknown dictionary, bad stream, lengths that disagree)."""
    opened = open_meta(buf, h, dicts)
    return opened[0] if opened else None


def open_meta(
    buf: bytes | memoryview, h: Head, dicts: dict[int, bytes], only: Sequence[int] = ()
) -> tuple[Meta, zlib._Decompress] | Literal[False] | None:
    """:func:`decode_meta`, and the inflater, ready to go on with the payloads
    (:func:`first_payloads`); ``False`` if ``only`` (segment-local series ids) is given and the
    frame holds none of them, found before the rest of the meta is parsed."""
    inflater = _inflater(h, dicts)
    if inflater is None or h.meta_len < META_HEAD.size:
        return None
    try:
        meta = inflater.decompress(memoryview(buf)[h.pos + HEAD_SIZE : h.end - 4], h.meta_len)
    except zlib.error:
        return None
    if len(meta) != h.meta_len:
        return None
    parsed = parse_meta(meta, h, only)
    return parsed and (parsed, inflater)


def parse_meta(meta: bytes, h: Head, only: Sequence[int] = ()) -> Meta | Literal[False] | None:
    """The ``meta`` of a batch frame (inflated, ``h.meta_len`` bytes) parsed; ``None`` if its
    lengths disagree, ``False`` as for :func:`open_meta`."""
    if len(meta) < META_HEAD.size:
        return None
    def_base, n_defs = META_HEAD.unpack_from(meta)
    n = h.count
    pos = META_HEAD.size
    if pos + 2 * n_defs > len(meta):
        return None
    klens = array("H", meta[pos : pos + 2 * n_defs])
    pos += 2 * n_defs
    sid_size = 4 if h.flags & WIDE_SIDS else 2
    extra = 12 if h.flags & SUMMARIES else 0
    if pos + sum(klens) + n * (8 + sid_size + 4 + extra) != len(meta):
        return None
    at = pos + sum(klens) + 8 * n
    sids = array("I" if sid_size == 4 else "H", meta[at : at + sid_size * n])
    if only and not any(map(sids.__contains__, only)):
        return False
    defs = []
    for klen in klens:
        defs.append(meta[pos : pos + klen])
        pos += klen
    deltas = array("Q", meta[pos : pos + 8 * n])
    try:  # the sums stay within 64 bits unless a delta wrapped around (a time going back)
        bits = array("Q", accumulate(deltas))
    except OverflowError:
        bits = array("Q", map(and_, accumulate(deltas), repeat(MASK)))
    tss = array("d", bits.tobytes())
    pos += 8 * n + sid_size * n
    plens = array("I", meta[pos : pos + 4 * n])
    if not extra:
        return Meta(def_base, defs, tss, sids, plens)
    pos += 4 * n
    words, rtts = array("I", meta[pos : pos + 4 * n]), array("d", meta[pos + 4 * n :])
    return Meta(def_base, defs, tss, sids, plens, words, rtts)


def first_payloads(meta: Meta, inflater: zlib._Decompress, n: int) -> list[bytes] | None:
    """The payloads of a frame's first ``n`` records, inflating no further, from the inflater
    :func:`open_meta` left; ``None`` if the stream ends early or is bad."""
    raw = first_payloads_raw(meta, inflater, n)
    if raw is None:
        return None
    ends = list(accumulate(meta.plens[:n], initial=0))
    return list(map(raw.__getitem__, map(slice, ends[:-1], ends[1:])))


def first_payloads_raw(meta: Meta, inflater: zlib._Decompress, n: int) -> bytes | None:
    """:func:`first_payloads` back to back in one ``bytes`` (``meta.plens`` delimits them)."""
    need = sum(meta.plens[:n])
    try:
        raw = inflater.decompress(inflater.unconsumed_tail, need) if need else b""
    except zlib.error:
        return None
    return raw if len(raw) == need else None


def decode_payloads(
    buf: bytes | memoryview, h: Head, dicts: dict[int, bytes]
) -> list[bytes] | None:
    """Every payload of a verified batch frame, in order; ``None`` if it does not decode."""
    meta = decode_meta(buf, h, dicts)
    inflater = _inflater(h, dicts)
    if meta is None or inflater is None:
        return None
    total = h.meta_len + sum(meta.plens)
    try:  # never more than the frame says it holds, whatever a forged stream would inflate to
        raw = inflater.decompress(memoryview(buf)[h.pos + HEAD_SIZE : h.end - 4], total + 1)
    except zlib.error:
        return None
    if not inflater.eof or len(raw) != total:
        return None
    ends = list(accumulate(meta.plens, initial=h.meta_len))
    return list(map(raw.__getitem__, map(slice, ends[:-1], ends[1:])))


@dataclass
class Skipped:
    """A stretch of a segment whose records could not be kept."""

    start: int
    end: int
    records: int
    why: str


@dataclass
class Scan:
    """What :func:`scan` found in a version-2 segment body: one entry per kept batch frame,
    and, if asked for, one per record."""

    fpos: list[int] = field(default_factory=list)
    """Per frame: its offset."""
    fseq: list[int] = field(default_factory=list)
    fcount: list[int] = field(default_factory=list)
    flo: list[float] = field(default_factory=list)
    """Per frame: its oldest and newest timestamp (NaNs ignored; -inf/inf if all NaN)."""
    fhi: list[float] = field(default_factory=list)
    fmask: list[int] = field(default_factory=list)
    """Per frame: the filter of its segment-local series ids (:func:`index.frame_mask`)."""
    last_of: dict[int, int] = field(default_factory=dict)
    """Seq of the newest record of each segment-local series id."""
    offsets: list[int] = field(default_factory=list)
    """Per record (only with ``records=True``): the offset of its frame."""
    seqs: list[int] = field(default_factory=list)
    tss: list[float] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    valid_end: int = 0
    """End of the last valid frame: everything after it is a torn or corrupt tail."""
    skipped: list[Skipped] = field(default_factory=list)
    dicts: dict[int, bytes] = field(default_factory=dict)
    last_dict: int = 0
    """Id of the segment's newest dictionary (0: none), which the writer keeps using."""
    key_ids: dict[bytes, int] = field(default_factory=dict)
    """Segment-local series id of each key defined in the segment."""
    last_seq: int = 0
    """Newest seq of any checksummed frame, kept or skipped: never to be given out again."""
    records: bool = True
    """Fill the per-record lists too (tests and tools; recovery indexes frames only)."""
    holes: bool = False
    """Some local ids below the highest defined one are undefined (a defining frame lost)."""


def scan(buf: bytes, start: int, prev_seq: int, max_body: int, records: bool = True) -> Scan:
    """Find every valid frame in ``buf[start:]``, resynchronising past corrupt ones.

    Only frame headers and the ``meta`` part of batch frames are inflated, never payloads.

    Args:
        buf: the whole segment file.
        start: where frames begin (after the file header, or 0 when the header is bad).
        prev_seq: the last seq seen before this segment; records must be above it.
        max_body: largest plausible ``body_len`` (the segment size).
        records: also list every record (``offsets``, ``seqs``, ``tss``, ``keys``).
    """
    out = Scan(valid_end=start, records=records)
    keys: dict[int, bytes] = {}
    end = len(buf)
    pos = start
    bad_from = -1
    while pos + OVERHEAD <= end:
        h = read_head(buf, pos, max_body)
        if h is not None and h.seq0 > prev_seq and (h.kind == KIND_DICT) == (h.count == 0):
            why = ""
            if h.kind == KIND_DICT:
                zdict = bytes(buf[pos + HEAD_SIZE : h.end - 4])
                if dict_id(zdict) != h.dict_id:
                    why = "dictionary frame whose id does not match its content"
                else:
                    out.dicts[h.dict_id] = zdict
                    out.last_dict = h.dict_id
            else:
                lost = sum(sk.records for sk in out.skipped) + h.seq0 - prev_seq - 1
                why = _take_batch(buf, h, out, keys, lost)
            if bad_from >= 0:
                out.skipped.append(Skipped(bad_from, pos, h.seq0 - prev_seq - 1, "corrupt"))
                bad_from = -1
            if why:  # checksummed but not decodable: its records are lost, later ones kept
                out.skipped.append(Skipped(pos, h.end, h.count, why))
            if h.count:
                prev_seq = out.last_seq = h.seq0 + h.count - 1
            pos = out.valid_end = h.end
            continue
        if bad_from < 0:
            bad_from = pos
        pos = buf.find(MAGIC, pos + 1)
        if pos < 0:
            break
    out.key_ids = {k: i for i, k in keys.items()}
    return out


def _take_batch(buf: bytes, h: Head, out: Scan, keys: dict[int, bytes], lost: int) -> str:
    """Index the records of a verified batch frame into ``out``; why not, if it fails.
    ``lost``: records of the segment lost so far, whose frames may have defined series."""
    if h.dict_id and h.dict_id not in out.dicts:
        return f"batch frame names dictionary {h.dict_id:#x}, which this segment lacks"
    meta = decode_meta(buf, h, out.dicts)
    if meta is None:
        return "batch frame does not decode (bad deflate stream or lengths)"
    if meta.def_base > len(keys) + lost:  # ids are dense but for what lost frames defined
        return "batch frame defines series ids beyond any defined before it"
    new = dict(zip(range(meta.def_base, meta.def_base + len(meta.defs)), meta.defs,
                   strict=True))  # fmt: skip
    if any(keys.get(i, k) != k for i, k in new.items()):
        return "batch frame redefines a series id"
    if new:
        keys.update(new)
        out.holes = max(keys) + 1 != len(keys)
    sids = meta.sids
    if max(sids) not in keys or (out.holes and not set(sids).issubset(keys)):
        return "batch frame names a series id that this segment never defined"
    n, seq0, tss = h.count, h.seq0, meta.tss
    lo, hi = min(tss), max(tss)
    out.fpos.append(h.pos)
    out.fseq.append(seq0)
    out.fcount.append(n)
    out.flo.append(-math.inf if lo != lo else lo)  # NaN: never matches a time, bounds nothing
    out.fhi.append(math.inf if hi != hi else hi)
    out.fmask.append(frame_mask(sids))
    out.last_of.update(zip(sids, range(seq0, seq0 + n), strict=True))
    if out.records:
        out.offsets.extend(repeat(h.pos, n))
        out.seqs.extend(range(seq0, seq0 + n))
        out.tss.extend(tss)
        out.keys.extend(map(keys.__getitem__, sids))
    return ""
