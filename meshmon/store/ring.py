"""The ring store's synchronous core: append, sync, read, query, cursors, recovery.

Theory of operation
-------------------
Records go to append-only segment files (:mod:`meshmon.store.format`) in one directory. Only
the newest segment is written; when it reaches ``segment_bytes`` a new one starts, and when the
segments would exceed ``max_bytes`` the oldest is deleted: the ring. Each record gets the next
seq, so seqs are the agent's append order and never go back, across restarts too.

``append_batch`` compresses a whole batch into one frame (:mod:`meshmon.store.batch`; a
large batch into frames of ~64 KiB of payload) and writes it with one ``write`` per segment
touched; ``append`` is a batch of one. What "written" means for durability follows the policy:

* ``always``: ``append_batch`` fsyncs before returning.
* ``batch``: records are durable once ``durable_seq`` reaches them. The trio wrapper
  (:mod:`meshmon.store.aio`) makes ``append`` wait for a shared fsync at most
  ``fsync_interval`` later (group commit). A synchronous user leaves ``auto_sync`` on and a
  flusher thread fsyncs every ``fsync_interval`` while there is unsynced data, so appends are
  never blocked by an fsync; :meth:`wait_durable` waits for it, :meth:`sync` forces it.
* ``never``: the OS page cache decides; ``durable_seq`` follows writes.

Cursors and ``read`` only ever return durable records, so a consumer never ships a record that
a crash could still take back (and whose seq would then be reused).

The files (rolling, dropping the oldest, cutting back a refused write) are
:mod:`meshmon.store.files`. A write the disk refuses (full, read-only, I/O error) does not fail
the store: appends go to a bounded in-memory buffer, keeping their seqs, until a retry writes
it (:mod:`meshmon.store.outage`). Only a failed fsync makes the store refuse appends until a
restart (:class:`~meshmon.store.errors.StoreFailed` says why).

The indexes in memory are per frame, not per record (:mod:`meshmon.store.index`): ~1-2 bytes
a record at the agent's batch sizes. Reads go through them to the few frames that can match
and inflate only those (:mod:`meshmon.store.query`); "latest per series" is one seq per
series, kept up as records are written.

Opening the store is recovery: every segment is verified, torn tails are truncated, corrupt
stretches are skipped and counted, files without a single valid record are renamed ``*.bad``,
and the indexes are rebuilt, from the frame headers and column parts (never the payloads), or,
for a sealed segment whose saved index matches its size and CRC-32, from that index
(:mod:`meshmon.store.sidecar`). Nothing in that path raises for bad content; it logs, naming
the file, and keeps every valid record.

Thread safety: every public method may be called from any thread. One mutex guards the
in-memory state and is never held across an fsync, so a worker thread can fsync while the
owner keeps appending.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from meshmon.config import StoreConfig
from meshmon.store import cursors as cur
from meshmon.store import identity
from meshmon.store.columns import StoredColumns, read_columns
from meshmon.store.errors import RecordDropped, StoreClosed, StoreError, StoreFailed
from meshmon.store.files import SegmentFiles
from meshmon.store.frames import StoredFrames, read_frames
from meshmon.store.index import SeriesTable
from meshmon.store.intake import RecordIn, Summaries, intern, split_batch, summary_columns
from meshmon.store.outage import Buffered, Outages
from meshmon.store.query import Reader
from meshmon.store.records import CursorInfo, Record, RecoveryInfo, StoreStats
from meshmon.store.recovery import load_directory, report_opening, take_lock
from meshmon.store.segment import Segment

log = logging.getLogger("meshmon.store")

class RingStore:
    """A bounded, crash-safe, append-only store of records, indexed in memory.

    Args:
        directory: the store's own directory (created if missing), e.g. ``data_dir / "store"``.
        config: sizes and fsync policy.
        auto_sync: sync without being asked: inline under ``always``, from a flusher thread
            every ``fsync_interval`` under ``batch``. The trio wrapper turns this off and runs
            its own group commit.
        clock: monotonic seconds, for the retries of a failing disk (tests inject one).

    Raises:
        StoreLocked: another process has the directory open.
        OSError: the directory cannot be created or read.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        auto_sync: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or StoreConfig()
        self.directory = Path(directory)
        self.cursor_dir = self.directory / "cursors"
        self.cursor_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = take_lock(self.directory)
        self.auto_sync = auto_sync
        self._mutex = threading.RLock()
        self._durable_changed = threading.Condition(self._mutex)
        self._stop_flusher = threading.Event()
        self._flusher: threading.Thread | None = None
        self._sync_mutex = threading.Lock()
        self._cursor_io = threading.Lock()
        """Held from snapshotting a cursor to its file being written: files never go back."""
        self.series = SeriesTable()
        self.files = SegmentFiles(self.directory, self.config, self.series, self._forget)
        self.segments = self.files.segments
        self._reader = Reader(self.segments, self.files.bases, self.series)
        self._writing: list[int] = []
        """Series ids of the batch being written (a segment dropped meanwhile keeps them)."""
        self._next_seq = 1
        self._durable_seq = 0
        self._closed = False
        self._failed: BaseException | None = None
        self.recovery = RecoveryInfo()
        self.cursors = cur.CursorBook(self.cursor_dir)
        try:
            self.store_id = identity.load_or_create(self.directory)  # see store.identity
            self.outages = Outages(self.directory, self.config.buffer_bytes, clock)
            self._recover()
        except BaseException:
            self.close()
            raise
        if auto_sync and self.config.fsync == "batch":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"meshmon-store-flusher {self.directory}",
                daemon=True,
            )  # fmt: skip
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop_flusher.wait(self.config.fsync_interval):
            files = self.files
            if (self.outages.active or self._next_seq - 1 > self._durable_seq
                    or files.dir_dirty or files.pending_fds):  # fmt: skip
                try:
                    if self.outages.active:
                        self.retry(force=False)
                    self.sync()
                except StoreError as exc:
                    log.error("store %s: background fsync failed: %s", self.directory, exc)
                    return

    # ----------------------------------------------------------------------------- opening

    def _recover(self) -> None:
        started = time.perf_counter()
        info = self.recovery
        segments, next_seq = load_directory(
            self.directory, self.config.segment_bytes, self.series, info
        )
        self._next_seq = self.outages.reconcile(next_seq)
        for seg in segments:
            self.files.add(seg)
        self.files.dir_dirty = bool(info.bad_files)
        self._durable_seq = self._next_seq - 1
        try:
            self.files.open_active(self._next_seq)
        except OSError as exc:  # a full disk at start: buffer until it takes writes
            self.outages.begin(exc, self._next_seq)
        self.files.drop_empty_sealed()
        for seg in self.segments[:-1]:
            self.files.seal(seg)  # and save the index of one that had to be scanned
        self.cursors.reconcile(self.oldest_seq or self._next_seq)
        try:
            self.sync()
        except StoreError as exc:
            log.error("store %s: sync after recovery failed: %s", self.directory, exc)
        info.seconds = time.perf_counter() - started
        report_opening(self.directory, info, self.outages)

    # ----------------------------------------------------------------------------- writing

    def append(self, ts: float, check: str, target: str, payload: Any) -> int:
        """Append one record and return its seq; see :meth:`append_batch` (same rules; the
        record gets a frame of its own, so batch results that arrive together)."""
        return self.append_batch(((ts, check, target, payload),))[0]

    def append_batch(self, records: Sequence[RecordIn]) -> range:
        """Append records in order and return their seqs.

        While the disk refuses writes, records are kept in memory (up to
        ``store.buffer_bytes``) and written, with the seqs returned here, once it accepts them
        again; see :mod:`meshmon.store.outage`.

        Args:
            records: ``(ts, check, target, payload)`` tuples. ``ts`` is wall-clock seconds
                (float), ``check`` and ``target`` index the record, ``payload`` is bytes
                already encoded as CBOR, or any value ``cbor2`` can encode.

        Returns:
            The seqs given to the records, in order. Durable on return under ``always``;
            otherwise once :attr:`durable_seq` reaches them (buffered records: once written).

        Raises:
            InvalidRecord: a record is malformed or too large; nothing was written.
            RecordDropped: the disk fails and the buffer is full: records past ``kept`` were
                not stored (and are counted as lost).
            StoreFailed: an fsync failed earlier or now.
            StoreClosed: the store was closed.
        """
        n = len(records)
        with self._mutex:
            self._check_writable()
            if not n:
                return range(self.next_seq, self.next_seq)
            b = split_batch(records, self.series, self.files.max_record())
            seq0 = self.next_seq
            written = 0
            if not self.outages.active or self._resume():
                seq0 = self._next_seq
                written = self._write_records(b.tss, b.sids, b.payloads, b.summaries)
            if written < n:
                return self._buffer(b.rows(written), seq0)
            sync_now = self.config.fsync == "always" and self.auto_sync
        if sync_now:
            self.sync()
        return range(seq0, seq0 + n)

    # ----------------------------------------------------------------------------- outages

    def _buffer(self, records: list[Buffered], first: int) -> range:
        """Keep records in the outage buffer; return seqs ``first`` up to the last kept one."""
        taken = self.outages.offer(records)
        kept = range(first, self._next_seq + self.outages.pending)
        if taken < len(records):
            raise RecordDropped(f"store {self.directory}: the disk refuses writes and the "
                                f"outage buffer is full; {len(records) - taken} record(s) "
                                "dropped and counted as lost", kept)  # fmt: skip
        return kept

    def _resume(self) -> bool:
        """Inline retry, when due and ``auto_sync`` is on (else the owner runs :meth:`retry`):
        write the whole outage buffer; ``True`` once the outage is over."""
        if not (self.auto_sync and self.outages.due()):
            return False
        while (step := self._resume_step()) is None:
            pass
        return step

    def _resume_step(self) -> bool | None:
        return self.outages.resume_step(self._write_buffered)

    def _write_buffered(self, chunk: list[Buffered]) -> int:
        tss, checks, targets, payloads, sums = zip(*chunk, strict=True)
        sids = [intern(self.series, c, t) for c, t in zip(checks, targets, strict=True)]
        return self._write_records(tss, sids, payloads, summary_columns(sums))

    def retry(self, force: bool = True) -> bool:
        """Try to write the outage buffer now (or only if the backoff says so, without
        ``force``); ``True`` if the store is writing normally (no outage, or it just ended).

        The mutex is released between chunks of ``outage.RESUME_CHUNK`` records, so appends (which
        go to the end of the buffer meanwhile) never wait for a whole long buffer.
        """
        with self._mutex:
            self._check_writable()
            if self.outages.active and not (force or self.outages.due()):
                return False
        step: bool | None = None
        while step is None:
            with self._mutex:
                self._check_writable()
                step = self._resume_step() if self.outages.active else True
        if step and self.config.fsync == "always" and self.auto_sync:
            self.sync()
        return step

    def is_buffered(self, seq: int) -> bool:
        """Record ``seq`` is in the outage buffer (in memory, not yet written)."""
        return self._next_seq <= seq < self._next_seq + self.outages.pending

    @property
    def written_seq(self) -> int:
        """Every record up to this seq is in a segment file (durable or not yet)."""
        return self._next_seq - 1

    # ----------------------------------------------------------------------------- disk

    def _write_records(
        self, tss: tuple[float, ...], sids: list[int], payloads: tuple[bytes, ...],
        summaries: Summaries | None = None,
    ) -> int:  # fmt: skip
        """Frame and write validated records from ``next_seq`` on; return how many reached
        the file. A refused write starts (or continues) an outage and stops there."""
        seq0 = self._next_seq
        keys = list(map(self.series.keys.__getitem__, sids))
        self._writing = sids
        try:
            written, error = self.files.write_records(seq0, tss, sids, keys, payloads,
                                                      summaries)  # fmt: skip
        finally:
            self._writing = []
        self.series.note(sids[:written], seq0)
        self._next_seq = seq0 + written
        if self.config.fsync == "never":
            self._durable_seq = self._next_seq - 1
        if error is not None:
            if self.outages.active:
                self.outages.retry_failed(error)
            else:
                self.outages.begin(error, self._next_seq)
        return written

    def _forget(self, seg: Segment) -> None:
        """The ring is about to delete ``seg``: charge the cursors, trim the indexes."""
        self._reader.forget(seg)
        if seg.count:
            last = seg.last_seq
            self.cursors.charge_drop(last, seg.count_ge)
            self.series.drop_through(last, set(self._writing))

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.directory} is closed")
        if self._failed is not None:
            raise StoreFailed(f"store {self.directory} failed earlier ({self._failed}); "
                              "restart the agent once the disk is fixed")  # fmt: skip

    def sync(self) -> int:
        """Make every record appended so far durable; return :attr:`durable_seq`.

        Also persists cursors whose loss counters changed and directory entries (new or
        deleted segments). Safe to call from a worker thread while another thread appends.

        Raises:
            StoreFailed: fsync failed; the store refuses further appends.
        """
        with self._sync_mutex:
            with self._mutex:
                if self._closed:
                    return self._durable_seq
                target = self._next_seq - 1
                fds = list(self.files.pending_fds)
                wfd = self.files.wfd
                dir_dirty, self.files.dir_dirty = self.files.dir_dirty, False
            try:
                for fd in fds:
                    os.fdatasync(fd)
                if wfd is not None:
                    os.fdatasync(wfd)
                if dir_dirty:
                    cur.fsync_dir(self.directory)
            except OSError as exc:
                with self._mutex:
                    self._failed = exc
                raise StoreFailed(f"fsync in {self.directory} failed: {exc}; records since seq "
                                  f"{self._durable_seq} may not be on disk; restart the agent "
                                  "once the disk is fixed") from exc  # fmt: skip
            with self._cursor_io:
                with self._mutex:
                    dirty = self.cursors.take_dirty()
                self.cursors.save(dirty)  # a refusing disk keeps them dirty, for the next sync
            with self._mutex:
                for fd in fds:
                    os.close(fd)
                    self.files.pending_fds.remove(fd)
                self._durable_seq = max(self._durable_seq, target)
                self._durable_changed.notify_all()
                return self._durable_seq

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block until record ``seq`` is durable; ``False`` if ``timeout`` passed first.

        Under ``batch`` this relies on the flusher (``auto_sync``) or another thread's
        :meth:`sync`.
        """
        with self._durable_changed:
            return self._durable_changed.wait_for(
                lambda: self._durable_seq >= seq or self._closed or self._failed is not None,
                timeout,
            ) and self._durable_seq >= seq

    def close(self) -> None:
        """Sync and close every file; the store cannot be used afterwards."""
        if self._closed:
            return
        self._stop_flusher.set()
        if self._flusher is not None:
            self._flusher.join()
        outages: Outages | None = getattr(self, "outages", None)  # None: opening failed early
        try:
            if self._failed is None:
                if outages is not None and outages.active:
                    self.retry()
                self.sync()
        except StoreError as exc:
            log.error("store %s: final sync failed: %s", self.directory, exc)
        if outages is not None:
            outages.abandon()
            outages.health.close()
        with self._sync_mutex, self._mutex:
            self._closed = True
            self.files.close()
            os.close(self._lock_fd)

    def __enter__(self) -> RingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- state

    @property
    def next_seq(self) -> int:
        """The seq the next record will get."""
        return self._next_seq + self.outages.pending

    @property
    def durable_seq(self) -> int:
        """Every record up to this seq survives a crash (per the fsync policy)."""
        return self._durable_seq

    @property
    def oldest_seq(self) -> int | None:
        """Seq of the oldest stored record, ``None`` when empty."""
        for seg in self.segments:
            if seg.count:
                return seg.base_seq
        return None

    def __len__(self) -> int:
        return sum(seg.count for seg in self.segments)

    # ----------------------------------------------------------------------------- reading

    def get(self, seq: int) -> Record | None:
        """The record with this seq, or ``None`` if absent (never stored, or overwritten)."""
        with self._mutex:
            self._check_open()
            found = self._reader.fetch([seq])
            return found[0] if found else None

    def read(self, from_seq: int, limit: int = 1000, max_bytes: int = 4 * 2**20) -> list[Record]:
        """Durable records with seq >= ``from_seq`` in seq order, up to ``limit`` records or
        about ``max_bytes`` of frames (at least one record)."""
        with self._mutex:
            self._check_open()
            return self._reader.read(from_seq, self._durable_seq, limit, max_bytes)

    def read_columns(self, from_seq: int, limit: int = 1000,
                     max_bytes: int = 4 * 2**20) -> StoredColumns:  # fmt: skip
        """:meth:`read` as columns, one contiguous run (:mod:`meshmon.store.columns`)."""
        with self._mutex:
            self._check_open()
            return read_columns(self._reader, from_seq, self._durable_seq, limit, max_bytes)

    def read_frames(self, from_seq: int, limit: int = 1000,
                    max_bytes: int = 4 * 2**20) -> StoredFrames | None:  # fmt: skip
        """Durable records from ``from_seq`` on as the frames that hold them, compressed as
        stored (:mod:`meshmon.store.frames`); ``None`` where only :meth:`read_columns` can
        serve."""
        with self._mutex:
            self._check_open()
            return read_frames(self._reader, from_seq, self._durable_seq, limit, max_bytes)

    def query(
        self,
        *,
        check: str | None = None,
        target: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        order: Literal["newest", "oldest"] = "newest",
    ) -> list[Record]:
        """Records matching every given filter.

        Args:
            check: only this check.
            target: only this target.
            since: only records with ``ts >= since`` (wall-clock seconds).
            until: only records with ``ts <= until``.
            limit: at most this many records.
            order: ``newest`` returns the newest matches first (by seq, i.e. append order);
                ``oldest`` the oldest first.
        """
        with self._mutex:
            self._check_open()
            gids = None
            if check is not None or target is not None:
                gids = self.series.matching(check, target)
                if not gids:
                    return []
            return self._reader.query(gids, since, until, limit, order == "newest")

    def latest(self, *, check: str | None = None, target: str | None = None) -> list[Record]:
        """The newest record of each (check, target) series matching the filters."""
        with self._mutex:
            self._check_open()
            latest = self.series.latest
            seqs = sorted(latest[g] for g in self.series.matching(check, target))
            return self._reader.fetch(seqs)

    def series_names(self) -> list[tuple[str, str]]:
        """Every (check, target) pair with records in the store."""
        with self._mutex:
            return self.series.names()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.directory} is closed")

    # ----------------------------------------------------------------------------- cursors

    def cursor(self, name: str, start: Literal["oldest", "next"] = "oldest") -> CursorInfo:
        """Get a named cursor, creating and persisting it if new.

        Args:
            name: 1-63 letters, digits, ``-``, ``_`` or ``.``.
            start: for a new cursor, begin at the oldest stored record or at the next one.

        Raises:
            ValueError: bad name.
        """
        with self._mutex:
            self._check_open()
            oldest = self.oldest_seq or self._next_seq
            state = self.cursors.create(name, oldest if start == "oldest" else self._next_seq)
            return self._info(state)

    def _info(self, c: cur.CursorState) -> CursorInfo:
        behind = sum(seg.count_ge(c.position) for seg in self.segments)
        return CursorInfo(c.name, c.position, c.lost, behind)

    def read_cursor(self, name: str, limit: int = 1000, max_bytes: int = 4 * 2**20) -> list[Record]:
        """The next durable records for cursor ``name`` (it does not move until committed).

        Raises:
            UnknownCursor: no such cursor.
        """
        with self._mutex:
            return self.read(self.cursors.get(name).position, limit, max_bytes)

    def commit_cursor(self, name: str, last_seq: int, *, delivered_from: int | None = None,
                      durable: bool = True, rewind: bool = False) -> CursorInfo:  # fmt: skip
        """Record that cursor ``name`` has consumed every record up to ``last_seq``; durable
        on return (fsync + atomic rename), or with ``durable=False`` at the next :meth:`sync`
        (a crash before it re-delivers, never skips). See :meth:`.cursors.CursorBook.commit`
        for ``delivered_from`` and ``rewind`` (going back, which is otherwise ignored).

        Raises:
            UnknownCursor: no such cursor.
            ValueError: ``last_seq`` is beyond the newest durable record.
        """
        # a lazy commit only marks the cursor dirty: it must not wait for a sync's cursor I/O
        with self._cursor_io if durable else contextlib.nullcontext():
            with self._mutex:
                self._check_open()
                oldest = self.oldest_seq or self._next_seq
                snapshot = self.cursors.commit(name, last_seq, self._durable_seq, delivered_from,
                                               oldest if rewind else None)  # fmt: skip
            if snapshot is not None and durable:
                cur.save_cursor(self.cursor_dir, snapshot)
        with self._mutex:
            return self._info(self.cursors.get(name))

    def delete_cursor(self, name: str) -> None:
        """Forget a cursor (and its loss counter)."""
        with self._mutex:
            self.cursors.delete(name)

    def cursor_infos(self) -> list[CursorInfo]:
        """Every cursor."""
        with self._mutex:
            return [self._info(c) for c in self.cursors.states.values()]

    # ----------------------------------------------------------------------------- stats

    def stats(self) -> StoreStats:
        """Counters for status displays; cheap (no I/O)."""
        with self._mutex:
            infos = [self._info(c) for c in self.cursors.states.values()]
            index = sum(seg.index_bytes() for seg in self.segments)
            index += self.series.memory_bytes()
            newest = next((s.last_seq for s in reversed(self.segments) if s.count), None)
            files = self.files
            return StoreStats(
                records=len(self), bytes=files.bytes, capacity_bytes=self.config.max_bytes,
                segments=len(self.segments), series=self.series.count(),
                oldest_seq=self.oldest_seq, newest_seq=newest, durable_seq=self._durable_seq,
                fsync=self.config.fsync, dropped_segments=files.dropped_segments,
                dropped_records=files.dropped_records, read_errors=self._reader.read_errors,
                index_bytes=index,
                cursors={i.name: {"position": i.position, "lost": i.lost, "behind": i.behind}
                         for i in infos},
                lost_records=sum(i.lost for i in infos), recovery=self.recovery,
                health=self.outages.state(self._failed), store_id=self.store_id,
            )  # fmt: skip

