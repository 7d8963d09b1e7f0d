"""The ring's files: its segments in seq order, the one being written, rolling and dropping.

Theory of operation
-------------------
Only the newest segment is written, through one ``O_APPEND`` handle, in version-2 batch
frames (:mod:`meshmon.store.batch`). Each segment starts with a preset dictionary taken from
the newest records written before it, and interns its own series keys, so every segment
decodes on its own and the ring can drop any of them.

A write lands whole or not at all: when the disk refuses it (``ENOSPC``, ``EIO``, ``EROFS``...)
whatever did land is cut off again with ``ftruncate``, so a segment always ends at a whole
frame and the in-memory frame index describes exactly its bytes.
If even the cut fails, the handle is set aside and the next write starts a new segment; the
torn tail lies past the indexed size, is never read, and recovery cuts it at the next open. A
new segment whose header cannot be written is removed again, so a full disk leaves no empty
or half-made files.

When a new segment would take the ring past ``max_bytes``, the oldest are deleted first and
the owner is told (``on_drop``) so that it can charge cursors and trim its indexes. The segment
rolled away from is sealed: its frame index is trimmed and saved next to it
(:mod:`meshmon.store.sidecar`), so that the next open need not scan it.

Not thread-safe on its own: the store's mutex guards every call.
"""

from __future__ import annotations

import errno
import logging
import os
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path

from meshmon.config import StoreConfig
from meshmon.store import batch, sidecar
from meshmon.store.errors import StoreError
from meshmon.store.format import FILE_HEADER_SIZE, FILE_VERSION, encode_file_header
from meshmon.store.index import NO_SERIES, SeriesTable, filter_words, frame_mask
from meshmon.store.intake import Summaries
from meshmon.store.segment import Segment, segment_name

log = logging.getLogger("meshmon.store")


class SegmentFiles:
    """The segment files of one store and the handle of the active one.

    Args:
        directory: the store directory.
        config: segment and ring sizes, fsync policy.
        series: the store's series table (whose keys saved indexes name).
        on_drop: called with each segment just before the ring deletes it.
    """

    def __init__(
        self, directory: Path, config: StoreConfig, series: SeriesTable,
        on_drop: Callable[[Segment], None],
    ) -> None:  # fmt: skip
        self.directory = directory
        self.series = series
        self.config = config
        self.on_drop = on_drop
        self.segments: list[Segment] = []
        self.bases: list[int] = []
        """First seq of each segment, for bisecting a seq to its segment."""
        self.bytes = 0
        self.wfd: int | None = None
        """Append handle of the active segment; ``None`` until the next write rolls one."""
        self.pending_fds: list[int] = []
        """Write handles of segments rolled away from but not yet fsynced."""
        self.dir_dirty = False
        """Segments were created or deleted since the directory was last fsynced."""
        self.dropped_segments = 0
        self.dropped_records = 0
        self.dict_bytes = min(batch.DICT_BYTES, config.segment_bytes // 8)
        self.recent: tuple[Sequence[bytes], Sequence[bytes]] = ((), ())
        """Keys and payloads of the newest records written: the next dictionary's source."""

    def add(self, seg: Segment) -> None:
        """Append a loaded or new segment."""
        self.segments.append(seg)
        self.bases.append(seg.base_seq if seg.count else seg.first_seq)
        self.bytes += seg.size

    def open_active(self, next_seq: int) -> None:
        """After loading: keep appending to the newest segment if it ends at ``next_seq``
        and has room, else start a new one.

        Raises:
            OSError: the new segment cannot be created (the next write tries again).
        """
        active = self.segments[-1] if self.segments else None
        if (active is not None and active.clean and active.version == FILE_VERSION
                and NO_SERIES not in active.gids
                and active.last_seq == next_seq - 1
                and (active.count or active.first_seq == next_seq)
                and active.size + batch.OVERHEAD < self.config.segment_bytes):  # fmt: skip
            self.wfd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            sidecar.remove(active.path)  # it grows: a saved index would be stale
            active.saved = False
            keys = self.series.keys
            active.key_ids = {keys[g]: lid for lid, g in enumerate(active.gids)}
        else:
            self.roll(next_seq)

    def drop_empty_sealed(self) -> None:
        """Remove empty segments other than the active one (left by a crash right after a roll)."""
        for seg in self.segments[:-1]:
            if not seg.count:
                i = self.segments.index(seg)
                del self.segments[i], self.bases[i]
                self.bytes -= seg.size
                seg.close()
                seg.path.unlink(missing_ok=True)
                sidecar.remove(seg.path)
                self.dir_dirty = True

    def max_record(self) -> int:
        """Bytes of key + payload that a record may have: what always fits in a new segment
        (after its header and dictionary), compressed or not."""
        room = self.config.segment_bytes - FILE_HEADER_SIZE - 2 * batch.OVERHEAD
        room -= self.dict_bytes + batch.WORST_EXTRA
        return room - room // batch.WORST_RATIO

    def write_records(
        self, seq0: int, tss: tuple[float, ...], sids: list[int], keys: list[bytes],
        payloads: tuple[bytes, ...], summaries: Summaries | None = None,
    ) -> tuple[int, OSError | None]:  # fmt: skip
        """Frame records ``seq0``... (with their summary columns, if given) into batch frames,
        write them with one ``write`` per segment touched, and index them; return how many were
        written, and the error that stopped the rest, if any.

        Frames hold at most ``batch.RAW_TARGET`` bytes of payload (a larger record gets a
        frame of its own). A frame is compressed for the segment it lands in (its dictionary,
        its series ids); one that would overflow the active segment is encoded again for
        the next one.
        """
        n = len(payloads)
        ends = _chunk_ends(payloads, min(batch.RAW_TARGET, self.config.segment_bytes // 8))
        i = 0
        try:
            while i < n:
                if self.wfd is None:
                    self.roll(seq0 + i)
                seg = self.segments[-1]
                room = self.config.segment_bytes - seg.size
                parts: list[bytes] = []
                key_ids = dict(seg.key_ids)  # committed to ``seg`` only once written
                zid, zdict = seg.dict_id, seg.dicts.get(seg.dict_id)
                if zdict is None and (sample := self.sample):  # begun before there was one
                    zid, zdict = batch.dict_id(sample), sample
                    parts.append(batch.encode_dict(seq0 + i, sample))
                used = len(parts[0]) if parts else 0
                j = i
                made: list[tuple[int, int, list[int], int]] = []  # (pos, start, ids, mask)
                for k in ends:
                    if k <= j:
                        continue
                    part = summaries and (summaries[0][j:k], summaries[1][j:k])
                    frame, ids = encode_for(key_ids, zdict, seq0 + j, tss[j:k], keys[j:k],
                                            payloads[j:k], part)  # fmt: skip
                    if used + len(frame) > room:
                        break
                    made.append((seg.size + used, j, ids, frame_mask(ids)))
                    parts.append(frame)
                    used += len(frame)
                    j = k
                if j == i:
                    if not seg.count:
                        raise StoreError("a record does not fit in an empty segment; raise "
                                         "store.segment_bytes")  # fmt: skip
                    self.roll(seq0 + i)
                    continue
                data = b"".join(parts)
                self._write(memoryview(data))
                seg.crc = zlib.crc32(data, seg.crc)
                if zdict is not None:
                    seg.dict_id = zid
                    seg.dicts[zid] = zdict
                if len(key_ids) > len(seg.key_ids):  # series new to the segment: map them
                    by_key = dict(zip(keys[i:j], sids[i:j], strict=True))
                    seg.gids.extend(map(by_key.__getitem__, keys_from(key_ids, len(seg.gids))))
                seg.key_ids = key_ids
                for pos, a, ids, mask in made:
                    chunk = tss[a : a + len(ids)]
                    seg.add_frame(pos, seq0 + a, ids, min(chunk), max(chunk), mask)
                seg.size += used
                self.bytes += used
                self.recent = (keys[max(i, j - 64) : j], payloads[max(i, j - 64) : j])
                i = j
        except OSError as exc:
            return i, exc
        return n, None

    @property
    def sample(self) -> bytes:
        """A preset dictionary for the next segment: the newest records written, or else the
        newest segment's own dictionary (after a restart)."""
        keys, payloads = self.recent
        if payloads:
            return b"".join(b"".join(pair) for pair in zip(keys, payloads,
                                                            strict=True))[-self.dict_bytes :]
        for seg in reversed(self.segments):
            if seg.dict_id:
                return seg.dicts[seg.dict_id]
        return b""

    def _write(self, data: memoryview) -> None:
        """Write all of ``data`` to the active segment, or none of it (see the module doc)."""
        assert self.wfd is not None
        seg = self.segments[-1]
        try:
            while data:
                written = os.write(self.wfd, data)
                data = data[written:]
        except OSError:
            try:
                os.ftruncate(self.wfd, seg.size)
            except OSError as exc:
                log.error("store segment %s: cannot cut a partial write (%s); starting a new "
                          "segment (recovery will cut it)", seg.path, exc)  # fmt: skip
                self.pending_fds.append(self.wfd)
                self.wfd = None
            raise

    def roll(self, first_seq: int) -> None:
        """Start a new segment for ``first_seq``, dropping the oldest ones to make room.

        Raises:
            OSError: the new segment cannot be created; no file is left behind.
        """
        if self.wfd is not None:
            if self.config.fsync == "never":
                os.close(self.wfd)
            else:
                self.pending_fds.append(self.wfd)
            self.wfd = None
        if self.segments:
            self.seal(self.segments[-1])
        while self.segments and self.bytes + self.config.segment_bytes > self.config.max_bytes:
            self._drop_oldest()
        path = self.directory / segment_name(first_seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o600)  # fmt: skip
        except FileExistsError:
            raise StoreError(f"segment {path} already exists; the store directory was changed "
                             "behind the agent's back; restart the agent") from None
        seg = Segment(path, first_seq, FILE_HEADER_SIZE)
        prev = self.segments[-1] if self.segments else None
        if prev is not None and prev.frames:  # frames come as the last segment's came
            seg.set_words(filter_words(prev.count / prev.frames))
        header = encode_file_header(first_seq)
        zdict = self.sample
        if zdict:
            header += batch.encode_dict(first_seq, zdict)
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of a segment header")
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.wfd = fd
        seg.size = len(header)
        seg.crc = zlib.crc32(header)
        if zdict:
            seg.dict_id = batch.dict_id(zdict)
            seg.dicts[seg.dict_id] = zdict
        self.add(seg)
        self.dir_dirty = True

    def _drop_oldest(self) -> None:
        seg = self.segments[0]
        self.on_drop(seg)
        del self.segments[0], self.bases[0]
        self.bytes -= seg.size
        self.dropped_segments += 1
        self.dropped_records += seg.count
        seg.close()
        seg.path.unlink(missing_ok=True)
        sidecar.remove(seg.path)
        self.dir_dirty = True

    def seal(self, seg: Segment) -> None:
        """``seg`` will not be written again: trim its index and save it (version 2, when
        nothing was skipped in it)."""
        seg.seal()
        if seg.version == FILE_VERSION and seg.clean and seg.count and not seg.saved:
            sidecar.save(seg, self.series.keys)
            seg.saved = True

    def close(self) -> None:
        """Close every handle (after a final sync)."""
        for fd in [*self.pending_fds, *([self.wfd] if self.wfd is not None else [])]:
            os.close(fd)
        self.pending_fds.clear()
        self.wfd = None
        for seg in self.segments:
            seg.close()


def _chunk_ends(payloads: Sequence[bytes], target: int) -> list[int]:
    """Where frames end: after at most ``target`` payload bytes and ``batch.MAX_RECORDS``
    records, and at least one record each."""
    cum = list(accumulate(map(len, payloads)))
    ends: list[int] = []
    i, base = 0, 0
    n = len(cum)
    while i < n:
        k = max(bisect_right(cum, base + target, i), i + 1)
        k = min(k, i + batch.MAX_RECORDS)
        ends.append(k)
        base = cum[k - 1]
        i = k
    return ends


def encode_for(
    key_ids: dict[bytes, int], zdict: bytes | None, seq0: int, tss: tuple[float, ...],
    keys: list[bytes], payloads: tuple[bytes, ...], summaries: Summaries | None = None,
) -> tuple[bytes, list[int]]:  # fmt: skip
    """A batch frame of these records for a segment whose series ids are ``key_ids`` (keys
    new to it are added) and whose dictionary is ``zdict``, and the records' local ids."""
    ids = list(map(key_ids.get, keys))
    base = len(key_ids)
    if None in ids:
        for x, key in enumerate(keys):
            if ids[x] is None:
                ids[x] = key_ids.setdefault(key, len(key_ids))
    frame = batch.encode_batch(seq0, tss, ids, base, keys_from(key_ids, base), payloads,  # type: ignore[arg-type]
                               zdict, summaries=summaries)  # fmt: skip
    return frame, ids  # type: ignore[return-value]


def keys_from(key_ids: dict[bytes, int], base: int) -> list[bytes]:
    """The keys with ids ``base`` and up (dicts keep insertion order: the newest last)."""
    n = len(key_ids) - base
    return list(key_ids)[-n:] if n else []
