"""The on-disk format of ring-store segments: the file header, and version-1 frames.

Theory of operation
-------------------
A segment file is a 32-byte file header followed by frames, appended and never rewritten::

    file header  magic "MMRING\\r\\n" | version u32 | header crc32 u32 | first seq u64 | 0 u64

The version says how the frames after it are laid out. The store writes version 2, one
compressed frame per batch (:mod:`meshmon.store.batch`), and still reads version 1, below, so
that an agent upgraded in place keeps the results it stored; a version-1 segment is never
appended to, and leaves the ring as it wraps. A version-1 frame holds one record::

    frame        magic u32 | body_len u32 | seq u64 | ts f64 | key_len u16 | reserved u16 (0)
                 | key (check NUL target, UTF-8) | payload (CBOR) | crc32 u32

All integers are little-endian. ``body_len`` is ``key_len + len(payload)``, so a frame takes
``FRAME_OVERHEAD + body_len`` bytes. The checksum is zlib's CRC-32 over the key, then the 28
header bytes, then the payload: the key comes first so that its CRC, which is the same for every
record of a (check, target) series, can be computed once per series instead of once per record.
A torn frame fails either the length or the checksum; the frame magic lets a reader that hits a
corrupt frame resynchronise on the next valid one, and sequence numbers must strictly increase,
so a stale or random match is rejected too.

Why CRC-32 (zlib) and not CRC-32C: both detect every burst error up to 32 bits and every
1-3 bit error in frames of this size; CRC-32C's better Hamming distance pays off for blocks of
many kilobytes, which these frames are not. Speed does not decide it either: measured here on
227-byte payloads, google-crc32c (hardware) took ~150 ns a call and zlib.crc32 ~270 ns, and on
the 28-byte header zlib was faster, because the Python call overhead dominates. That is ~5% of
an append, not worth a native dependency (the other maintained package, crc32c, is LGPL).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from zlib import crc32

FILE_MAGIC = b"MMRING\r\n"
"""Segment file magic; the CR LF catches text-mode transfers that would mangle the file."""
FILE_VERSION = 2
"""The version written; :data:`READ_VERSIONS` are read."""
READ_VERSIONS = (1, 2)
FILE_HEADER = struct.Struct("<8sIIQQ")
FILE_HEADER_SIZE = FILE_HEADER.size  # 32

FRAME_MAGIC = b"\xe5MR\x1f"
"""Starts every frame; rare in CBOR and text, and only a hint: the checksum decides."""
FRAME_HEAD = struct.Struct("<4sIQdH2x")
FRAME_HEAD_SIZE = FRAME_HEAD.size  # 28
FRAME_CRC = struct.Struct("<I")
FRAME_OVERHEAD = FRAME_HEAD_SIZE + FRAME_CRC.size  # 32
MAX_KEY = 0xFFFF


class UnsupportedVersion(ValueError):
    """A well-formed segment header of a format version this build cannot read."""


def encode_file_header(first_seq: int, version: int = FILE_VERSION) -> bytes:
    """The 32-byte header of a new segment whose first record will be ``first_seq``."""
    blank = FILE_HEADER.pack(FILE_MAGIC, version, 0, first_seq, 0)
    return FILE_HEADER.pack(FILE_MAGIC, version, crc32(blank), first_seq, 0)


def decode_file_header(data: bytes) -> tuple[int, int]:
    """Return the first seq recorded in a segment header, and the format version.

    Raises:
        UnsupportedVersion: the header is intact but of a version this build does not read.
        ValueError: the header is short, has the wrong magic or a bad checksum; the message
            says which.
    """
    if len(data) < FILE_HEADER_SIZE:
        raise ValueError(f"header is truncated ({len(data)} of {FILE_HEADER_SIZE} bytes)")
    magic, version, hcrc, first_seq, _ = FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        raise ValueError(f"wrong magic {magic!r} (expected {FILE_MAGIC!r})")
    if crc32(FILE_HEADER.pack(FILE_MAGIC, version, 0, first_seq, 0)) != hcrc:
        raise ValueError("header checksum mismatch")
    if version not in READ_VERSIONS:
        raise UnsupportedVersion(f"format version {version} is not supported (this build reads "
                         f"{', '.join(map(str, READ_VERSIONS))}); a newer meshmon wrote it")
    return int(first_seq), int(version)


def series_key(check: str, target: str) -> bytes:
    """The key bytes stored in every frame of a (check, target) series."""
    return check.encode() + b"\x00" + target.encode()


def split_key(key: bytes) -> tuple[str, str]:
    """Inverse of :func:`series_key`.

    Raises:
        ValueError: the key has no separator or is not UTF-8.
    """
    check, sep, target = key.partition(b"\x00")
    if not sep:
        raise ValueError("record key has no check/target separator")
    return check.decode(), target.decode()


def encode_frames(
    seq0: int,
    tss: tuple[float, ...] | list[float],
    keys: list[bytes],
    key_crcs: list[int],
    payloads: tuple[bytes, ...] | list[bytes],
) -> tuple[bytes, list[int]]:
    """Frame a batch of records numbered ``seq0, seq0 + 1, ...`` into one buffer.

    Every step is a ``map`` over a C function, so the per-record cost stays in C: this is the
    hot path of the agent and of the benchmark.

    Returns:
        The bytes to append and the ``body_len`` of each frame (frame size minus overhead).

    Raises:
        struct.error: a timestamp is not a number or a body exceeds 4 GiB.
    """
    n = len(payloads)
    klens = list(map(len, keys))
    blens = list(map(add, klens, map(len, payloads)))
    heads = list(map(FRAME_HEAD.pack, repeat(FRAME_MAGIC, n), blens, range(seq0, seq0 + n),
                     tss, klens))  # fmt: skip
    trailers = map(FRAME_CRC.pack, map(crc32, payloads, map(crc32, heads, key_crcs)))
    parts: list[bytes] = [b""] * (4 * n)
    parts[0::4] = heads
    parts[1::4] = keys
    parts[2::4] = payloads
    parts[3::4] = trailers
    return b"".join(parts), blens


def encode_frame(seq: int, ts: float, key: bytes, key_crc: int, payload: bytes) -> bytes:
    """Frame one record (the unbatched path; same bytes as :func:`encode_frames`)."""
    head = FRAME_HEAD.pack(FRAME_MAGIC, len(key) + len(payload), seq, ts, len(key))
    crc = crc32(payload, crc32(head, key_crc))
    return b"".join((head, key, payload, FRAME_CRC.pack(crc)))


@dataclass
class Frame:
    """One decoded frame, as :func:`decode_frame` returns it."""

    seq: int
    ts: float
    key: bytes
    payload: bytes
    end: int
    """Offset just past the frame in the buffer it came from."""


def decode_frame(buf: bytes | memoryview, pos: int) -> Frame | None:
    """Decode and verify the frame at ``pos``; ``None`` if it is not a whole, valid frame."""
    if pos + FRAME_OVERHEAD > len(buf):
        return None
    magic, blen, seq, ts, klen = FRAME_HEAD.unpack_from(buf, pos)
    end = pos + FRAME_OVERHEAD + blen
    if magic != FRAME_MAGIC or klen > blen or end > len(buf):
        return None
    kstart = pos + FRAME_HEAD_SIZE
    key = bytes(buf[kstart : kstart + klen])
    payload = bytes(buf[kstart + klen : end - 4])
    crc = crc32(payload, crc32(buf[pos:kstart], crc32(key)))
    if crc != FRAME_CRC.unpack_from(buf, end - 4)[0]:
        return None
    return Frame(seq, ts, key, payload, end)


@dataclass
class Skipped:
    """A corrupt stretch in the middle of a segment that the scanner stepped over."""

    start: int
    end: int
    records: int
    """Records lost in it, from the gap in sequence numbers around it."""


@dataclass
class ScanResult:
    """What :func:`scan` found in a segment body."""

    offsets: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    tss: list[float] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    valid_end: int = 0
    """End of the last valid frame: everything after it is a torn or corrupt tail."""
    skipped: list[Skipped] = field(default_factory=list)


def scan(buf: bytes, start: int, prev_seq: int, max_body: int) -> ScanResult:
    """Find every valid frame in ``buf[start:]``, resynchronising past corrupt ones.

    Args:
        buf: the whole segment file.
        start: where frames begin (after the file header, or 0 when the header is bad).
        prev_seq: the last seq seen before this segment; frames must be above it.
        max_body: largest plausible ``body_len`` (the segment size).
    """
    out = ScanResult(valid_end=start)
    mv = memoryview(buf)
    end = len(buf)
    pos = start
    bad_from = -1
    unpack_head = FRAME_HEAD.unpack_from
    unpack_crc = FRAME_CRC.unpack_from
    while pos + FRAME_OVERHEAD <= end:
        magic, blen, seq, ts, klen = unpack_head(buf, pos)
        fend = pos + FRAME_HEAD_SIZE + blen
        if magic == FRAME_MAGIC and klen <= blen <= max_body and fend + 4 <= end and seq > prev_seq:
            kstart = pos + FRAME_HEAD_SIZE
            key = buf[kstart : kstart + klen]
            crc = crc32(mv[kstart + klen : fend], crc32(mv[pos:kstart], crc32(key)))
            if crc == unpack_crc(buf, fend)[0]:
                if bad_from >= 0:
                    out.skipped.append(Skipped(bad_from, pos, seq - prev_seq - 1))
                    bad_from = -1
                out.offsets.append(pos)
                out.seqs.append(seq)
                out.tss.append(ts)
                out.keys.append(key)
                prev_seq = seq
                pos = fend + 4
                out.valid_end = pos
                continue
        if bad_from < 0:
            bad_from = pos
        pos = buf.find(FRAME_MAGIC, pos + 1)
        if pos < 0:
            break
    return out
