"""Saved frame indexes: a sealed segment's in-memory index, written next to it, so that
opening the store does not inflate every frame's columns again.

Theory of operation
-------------------
When the ring stops writing a version-2 segment (it rolls to a new one), the segment's frame
index (:mod:`meshmon.store.segment`) is written to ``<segment>.idx``: its packed arrays, its
series keys by local id with the newest seq of each, and its preset dictionaries. At the next
open, a sealed segment whose ``.idx`` matches is loaded from it instead of being scanned: the
arrays are copied in whole, and only the series keys are interned again.

"Matches" is strict, because the index is trusted only as far as the bytes it describes: the
``.idx`` must be whole (its own CRC-32), and the segment must have exactly the size and the
CRC-32 the ``.idx`` recorded, computed over the whole file as it was written (zlib's CRC-32
runs at ~2 GB/s: ~0.1 s for a 256 MiB ring). So a segment damaged after it was sealed is still
found out at open, and scanned frame by frame as before: torn or corrupt frames are cut,
skipped and counted exactly as without the ``.idx``. A missing, stale or damaged ``.idx`` only
costs that scan (after which it is written again); it is never fsynced, since losing it loses
nothing. The ``.idx`` of a segment the ring drops goes with it.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from array import array
from pathlib import Path

from meshmon.store.index import NO_SERIES, SeriesTable

log = logging.getLogger("meshmon.store")

SUFFIX = ".idx"
MAGIC = b"MMIDX\r\n\x00"
VERSION = 1
_H = struct.Struct("<8sII")
"""magic, version, CRC-32 of everything after this header."""
_SEG = struct.Struct("<QIQQdddIIIBBB")
"""segment size, segment CRC-32, base seq, last seq, tbase, tmin, tmax, frames, local series,
dictionaries, width of ``fseq`` items, contiguous, filter words; then the arrays, the series
keys (u16 lengths, then bytes) and their newest seqs (u64), the dictionaries (id, length,
bytes) and the id of the one in use."""
_ARRAYS = ("fpos", "fseq", "fcount", "hi_run", "lo_run")


def path_for(segment: Path) -> Path:
    """The ``.idx`` file of a segment."""
    return segment.with_suffix(SUFFIX)


def encode(seg: object, keys: list[bytes]) -> bytes:
    """The ``.idx`` bytes of a sealed version-2 segment (see the module docstring)."""
    from meshmon.store.segment import Segment

    assert isinstance(seg, Segment)
    arrays = [getattr(seg, name) for name in _ARRAYS] + seg.mw
    parts = [_SEG.pack(seg.size, seg.crc, seg.base_seq, seg.last_seq, seg.tbase, seg.tmin,
                       seg.tmax, seg.frames, len(seg.gids), len(seg.dicts),
                       seg.fseq.itemsize, int(seg.contiguous), seg.words)]  # fmt: skip
    parts += [a.tobytes() for a in arrays]
    local = [b"" if g == NO_SERIES else keys[g] for g in seg.gids]
    parts.append(array("H", map(len, local)).tobytes())
    parts += local
    parts.append(array("Q", seg.lasts).tobytes())
    for did, zdict in seg.dicts.items():
        parts.append(struct.pack("<II", did, len(zdict)))
        parts.append(zdict)
    parts.append(struct.pack("<I", seg.dict_id))
    body = b"".join(parts)
    return _H.pack(MAGIC, VERSION, zlib.crc32(body)) + body


def save(seg: object, keys: list[bytes]) -> None:
    """Write a sealed segment's ``.idx`` (best effort: a refusing disk only costs a scan at
    the next open)."""
    from meshmon.store.segment import Segment

    assert isinstance(seg, Segment)
    path = path_for(seg.path)
    tmp = path.with_suffix(".idx.tmp")
    try:
        tmp.write_bytes(encode(seg, keys))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.info("store segment %s: frame index not saved (%s); the next open scans it",
                 seg.path, exc)  # fmt: skip


def remove(segment: Path) -> None:
    """Delete a segment's ``.idx`` if there is one."""
    path_for(segment).unlink(missing_ok=True)


def load(seg: object, data: bytes, series: SeriesTable) -> bool:
    """Fill ``seg`` (fresh, header checked) from its ``.idx`` if that matches ``data``, the
    whole segment file; ``False`` (``seg`` untouched) if there is none or it does not match."""
    from meshmon.store.segment import Segment

    assert isinstance(seg, Segment)
    try:
        raw = path_for(seg.path).read_bytes()
    except OSError:
        return False
    try:
        return _load(seg, raw, data, series)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError):
        return False


def _load(seg: object, raw: bytes, data: bytes, series: SeriesTable) -> bool:
    from meshmon.store.segment import Segment, global_id

    assert isinstance(seg, Segment)
    magic, version, crc = _H.unpack_from(raw)
    body = memoryview(raw)[_H.size :]
    if magic != MAGIC or version != VERSION or zlib.crc32(body) != crc:
        return False
    (size, seg_crc, base, last, tbase, tmin, tmax, frames, n_gids, n_dicts, width,
     contiguous, words) = _SEG.unpack_from(body)  # fmt: skip
    if size != len(data) or zlib.crc32(data) != seg_crc:
        return False
    pos = _SEG.size
    if words not in (2, 4, 8):
        return False
    loaded = {}
    for name in (*_ARRAYS, *(f"w{i}" for i in range(words))):
        typecode = "Q" if name[0] == "w" else getattr(seg, name).typecode
        if name == "fseq":
            typecode = "I" if width == 4 else "Q"
        a = array(typecode)
        a.frombytes(body[pos : pos + frames * a.itemsize])
        pos += frames * a.itemsize
        loaded[name] = a
    klens = array("H")
    klens.frombytes(body[pos : pos + 2 * n_gids])
    pos += 2 * n_gids
    keys = []
    for n in klens:
        keys.append(bytes(body[pos : pos + n]))
        pos += n
    lasts = array("Q")
    lasts.frombytes(body[pos : pos + 8 * n_gids])
    pos += 8 * n_gids
    dicts = {}
    for _ in range(n_dicts):
        did, n = struct.unpack_from("<II", body, pos)
        dicts[did] = bytes(body[pos + 8 : pos + 8 + n])
        pos += 8 + n
    (dict_id,) = struct.unpack_from("<I", body, pos)
    if pos + 4 != len(body) or any(len(a) != frames for a in loaded.values()):
        return False
    gids = []
    for key, seq in zip(keys, lasts, strict=True):
        if not seq:
            gids.append(NO_SERIES)
            continue
        sid = global_id(series, key)
        series.raise_latest(sid, seq)
        gids.append(sid)
    for name in _ARRAYS:
        setattr(seg, name, loaded[name])
    seg.words = words
    seg.mw = [loaded[f"w{i}"] for i in range(words)]
    seg.gids = array("I", gids)
    seg.lasts = lasts
    seg.size, seg.crc, seg.base_seq, seg.last_seq = size, seg_crc, base, last
    seg.tbase, seg.tmin, seg.tmax, seg.contiguous = tbase, tmin, tmax, bool(contiguous)
    seg.count = sum(seg.fcount)
    seg.dicts, seg.dict_id, seg.seen_seq = dicts, dict_id, last
    seg.saved = True
    return True
