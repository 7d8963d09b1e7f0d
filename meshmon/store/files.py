"""The ring's files: its segments in seq order, the one being written, rolling and dropping.

Theory of operation
-------------------
Only the newest segment is written, through one ``O_APPEND`` handle. A write lands whole or
not at all: when the disk refuses it (``ENOSPC``, ``EIO``, ``EROFS``...) whatever did land is
cut off again with ``ftruncate``, so a segment always ends at a whole frame and the in-memory
index (offsets, timestamps, series ids) describes exactly its bytes. If even the cut fails,
the handle is set aside and the next write starts a new segment; the torn tail lies past the
indexed size, is never read, and recovery cuts it at the next open. A new segment whose header
cannot be written is removed again, so a full disk leaves no empty or half-made files.

When a new segment would take the ring past ``max_bytes``, the oldest are deleted first and
the owner is told (``on_drop``) so that it can charge cursors and trim its indexes.

Not thread-safe on its own: the store's mutex guards every call.
"""

from __future__ import annotations

import errno
import logging
import os
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

from meshmon.config import StoreConfig
from meshmon.store.errors import StoreError
from meshmon.store.format import FRAME_OVERHEAD, encode_file_header
from meshmon.store.index import TimeIndex
from meshmon.store.segment import Segment, segment_name

log = logging.getLogger("meshmon.store")


class SegmentFiles:
    """The segment files of one store and the handle of the active one.

    Args:
        directory: the store directory.
        config: segment and ring sizes, fsync policy.
        times: the time index, fed as records are written.
        on_drop: called with each segment just before the ring deletes it.
    """

    def __init__(
        self,
        directory: Path,
        config: StoreConfig,
        times: TimeIndex,
        on_drop: Callable[[Segment], None],
    ) -> None:
        self.directory = directory
        self.config = config
        self.times = times
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

    def add(self, seg: Segment) -> None:
        """Append a loaded or new segment."""
        self.segments.append(seg)
        self.bases.append(seg.seq_at(0) if seg.count else seg.first_seq)
        self.bytes += seg.size

    def open_active(self, next_seq: int) -> None:
        """After loading: keep appending to the newest segment if it ends at ``next_seq``
        and has room, else start a new one.

        Raises:
            OSError: the new segment cannot be created (the next write tries again).
        """
        active = self.segments[-1] if self.segments else None
        if (active is not None and active.header_ok
                and active.last_seq == next_seq - 1
                and (active.count or active.first_seq == next_seq)
                and active.size + FRAME_OVERHEAD < self.config.segment_bytes):  # fmt: skip
            self.wfd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
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
                self.dir_dirty = True

    def append_frame(self, frame: bytes, seq: int, ts: float, sid: int) -> None:
        """Write one framed record (seq ``seq``) and index it.

        Raises:
            OSError: the disk refused it; nothing of it remains.
        """
        size = len(frame)
        if self.wfd is None or self.segments[-1].size + size > self.config.segment_bytes:
            self.roll(seq)
        self._write(memoryview(frame))
        seg = self.segments[-1]
        seg.offs.append(seg.size)
        seg.tss.append(ts)
        seg.sids.append(sid)
        seg.size += size
        self.bytes += size
        self.times.add_one(seq, ts)

    def write_frames(
        self, buf: memoryview, seq0: int, sizes: list[int], tss: tuple[float, ...],
        sids: list[int],
    ) -> tuple[int, OSError | None]:  # fmt: skip
        """Write framed records ``seq0``... with one ``write`` per segment touched, and index
        them; return how many were written, and the error that stopped the rest, if any."""
        n = len(sizes)
        i = pos = 0
        try:
            while i < n:
                if self.wfd is None:
                    self.roll(seq0 + i)
                seg = self.segments[-1]
                cum = list(accumulate(sizes[i:])) if i else list(accumulate(sizes))
                k = bisect_right(cum, self.config.segment_bytes - seg.size)
                if k == 0:
                    self.roll(seq0 + i)
                    continue
                nbytes = cum[k - 1]
                self._write(buf[pos : pos + nbytes])
                seg.offs.extend(accumulate(sizes[i : i + k - 1], initial=seg.size))
                chunk_ts = tss[i : i + k]
                seg.tss.extend(chunk_ts)
                seg.sids.extend(sids[i : i + k])
                seg.size += nbytes
                self.bytes += nbytes
                self.times.add(range(seq0 + i, seq0 + i + k), chunk_ts)
                i += k
                pos += nbytes
        except OSError as exc:
            return i, exc
        return n, None

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
        self.times.seal()
        while self.segments and self.bytes + self.config.segment_bytes > self.config.max_bytes:
            self._drop_oldest()
        path = self.directory / segment_name(first_seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o600)  # fmt: skip
        except FileExistsError:
            raise StoreError(f"segment {path} already exists; the store directory was changed "
                             "behind the agent's back; restart the agent") from None
        header = encode_file_header(first_seq)
        try:
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of a segment header")
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.wfd = fd
        self.add(Segment(path, first_seq, len(header)))
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
        self.dir_dirty = True

    def close(self) -> None:
        """Close every handle (after a final sync)."""
        for fd in [*self.pending_fds, *([self.wfd] if self.wfd is not None else [])]:
            os.close(fd)
        self.pending_fds.clear()
        self.wfd = None
        for seg in self.segments:
            seg.close()
