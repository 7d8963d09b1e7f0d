"""The trio face of the ring store: awaitable appends that return once durable.

Theory of operation
-------------------
Appends run in the trio thread: framing and one ``write`` into the page cache take
microseconds. Only fsync is slow, so it runs in a worker thread (``trio.to_thread``), and
appenders that need durability share it (group commit). There is no background task: the
first appender that finds no fsync round under way leads one, the others wait for its result.

* ``always``: the leader fsyncs at once; appends that arrive while an fsync is in flight share
  the next one (group commit with no added delay).
* ``batch``: the leader first sleeps until ``fsync_interval`` after the round's first append,
  so every append of the round waits at most that long, then fsyncs once for all of them.
  The round's appends are not written as they come but gathered, and written with one
  ``append_batch`` just before the fsync: the store compresses a batch into one frame, and
  the agent's few results per scheduler tick would compress poorly on their own (at 100
  results/s, 5 records a tick cost ~71 bytes each on disk, a round's 20-25 ~55). Readers see
  them once written, as appenders do: ``append`` returns after the fsync either way.
* ``never``: ``append`` returns after the write.

If the leader is cancelled while it sleeps, it wakes the others and one of them takes over,
keeping the round's deadline. A failed fsync fails every waiter with
:class:`~meshmon.store.errors.StoreFailed`, and the store refuses further appends (see that
class for why).

A failed *write* is survived (:mod:`meshmon.store.outage`): the record is buffered in memory and
``append`` returns its seq at once. Appends retry the disk when a retry is due; so that the
outage also ends when no append comes, :func:`open_store` runs one background task that
sleeps until the next retry is due and runs it in a worker thread. It sleeps on an event
while the disk is fine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from meshmon.config import StoreConfig
from meshmon.store.errors import InvalidRecord, RecordDropped, StoreError, StoreFailed
from meshmon.store.intake import RecordIn
from meshmon.store.records import CursorInfo, Record, StoreStats
from meshmon.store.ring import RingStore


@dataclass
class _Gathered:
    """An ``append_batch`` waiting for its round's write."""

    records: Sequence[RecordIn]
    done: trio.Event = field(default_factory=trio.Event)
    seqs: range | None = None
    error: StoreError | None = None


class AsyncRingStore:
    """Trio wrapper over a :class:`RingStore`; build it with :func:`open_store`.

    Reads (``query``, ``latest``, ``stats``, ``read_cursor``, and ``core.get``/``core.read``)
    are plain synchronous calls: they work from memory and page-cache reads and are safe in
    the event loop.
    ``core.append_batch`` may also be called directly when the caller does not need to wait
    for durability; :meth:`wait_durable` waits later.
    """

    def __init__(self, core: RingStore) -> None:
        self.core = core
        self._leading = False
        """An appender is running an fsync round (sleeping towards it, or in it)."""
        self._round_start: float | None = None
        """When the first append still waiting for an fsync arrived (trio clock)."""
        self._synced = trio.Event()
        """Replaced after every round; waiters re-check ``durable_seq`` when it fires."""
        self._error: BaseException | None = None
        self.fsync_rounds = 0
        self._outage_began = trio.Event()
        self._writing = trio.Event()
        """Set (and replaced) whenever the retry task finds no outage."""
        self._gathered: list[_Gathered] = []
        """Appends of the coming round, written just before its fsync (``batch`` policy)."""
        self._advanced = trio.Event()
        """Set (and replaced) when ``durable_seq`` may have moved (:meth:`wait_durable_past`)."""

    async def append(self, ts: float, check: str, target: str, payload: Any) -> int:
        """Append one record; return its seq once it is durable per the fsync policy, or at
        once if the disk refuses writes and the record went to the outage buffer (see
        :mod:`meshmon.store.outage`; ``core.is_buffered(seq)`` tells).

        Raises:
            InvalidRecord: the record is malformed; nothing was written.
            RecordDropped: the disk refuses writes and the buffer is full (counted as lost).
            StoreFailed: an fsync failed.
        """
        if self.core.config.fsync == "batch":
            return (await self.append_batch(((ts, check, target, payload),)))[0]
        seq = self.core.append(ts, check, target, payload)
        if self.core.outages.active:
            self._outage_began.set()
        self._wake_readers()
        await self.wait_durable(min(seq, self.core.written_seq))
        return seq

    async def append_batch(self, records: Sequence[RecordIn]) -> range:
        """Append records; return their seqs once those written to disk are durable per the
        fsync policy (buffered ones, as in :meth:`append`, at once)."""
        if self.core.config.fsync == "batch" and records:
            return await self._gather(records)
        seqs = self.core.append_batch(records)
        if self.core.outages.active:
            self._outage_began.set()
        self._wake_readers()
        if seqs:
            await self.wait_durable(min(seqs[-1], self.core.written_seq))
        return seqs

    async def _gather(self, records: Sequence[RecordIn]) -> range:
        """Add records to the coming round's write; return their seqs once durable."""
        if self._error is not None:
            raise StoreFailed(f"store fsync failed: {self._error}") from self._error
        mine = _Gathered(records)
        self._gathered.append(mine)
        if self._round_start is None:
            self._round_start = trio.current_time()
        while not mine.done.is_set():
            if self._leading:
                await self._synced.wait()
            else:
                await self._lead_round()
        if mine.error is not None:
            raise mine.error
        assert mine.seqs is not None
        await self.wait_durable(min(mine.seqs[-1], self.core.written_seq))
        return mine.seqs

    def _write_gathered(self) -> None:
        """Write the round's gathered appends as one batch; hand each appender its seqs or
        its own error (a bad record fails only the append that brought it)."""
        gathered, self._gathered = self._gathered, []
        if not gathered:
            return
        try:
            _hand_out(gathered, self.core.append_batch([r for g in gathered for r in g.records]))
        except InvalidRecord:  # nothing was written: again one by one, to find whose it is
            for g in gathered:
                try:
                    g.seqs = self.core.append_batch(g.records)
                except StoreError as exc:
                    g.error = exc
        except RecordDropped as exc:
            _hand_out(gathered, exc.kept, exc)
        except StoreError as exc:
            for g in gathered:
                g.error = exc
        for g in gathered:
            g.done.set()
        if self.core.outages.active:
            self._outage_began.set()

    async def wait_durable(self, seq: int) -> None:
        """Return once record ``seq`` is durable (immediately under ``fsync = "never"``).

        Raises:
            StoreFailed: the fsync failed.
        """
        core = self.core
        if core.config.fsync == "never":
            return
        while core.durable_seq < seq:
            if self._error is not None:
                raise StoreFailed(f"store fsync failed: {self._error}") from self._error
            if self._round_start is None:
                self._round_start = trio.current_time()
            if self._leading:
                await self._synced.wait()
                continue
            await self._lead_round()

    async def _lead_round(self) -> None:
        """Lead one fsync round: wait out ``fsync_interval`` (``batch``), write what was
        gathered, fsync in a worker thread, wake everyone waiting."""
        core = self.core
        self._leading = True
        try:
            if self._round_start is None:
                self._round_start = trio.current_time()
            if core.config.fsync == "batch":
                await trio.sleep_until(self._round_start + core.config.fsync_interval)
            self._round_start = None
            self._write_gathered()
            try:
                await trio.to_thread.run_sync(core.sync)
            except StoreFailed as exc:
                self._error = exc
            self.fsync_rounds += 1
        finally:
            self._leading = False
            synced, self._synced = self._synced, trio.Event()
            synced.set()
            self._wake_readers()

    def _wake_readers(self) -> None:
        advanced, self._advanced = self._advanced, trio.Event()
        advanced.set()

    async def retry_outages(self) -> None:
        """Run forever: retry a refusing disk when due, even if no append comes."""
        outages = self.core.outages
        while True:
            current = outages.current
            if current is None:
                self._writing.set()
                self._writing = trio.Event()
                await self._outage_began.wait()
                self._outage_began = trio.Event()
                continue
            await trio.sleep(max(0.0, current.next_retry - outages.clock()))
            if outages.due():
                try:
                    await trio.to_thread.run_sync(self.core.retry)
                except StoreError:  # failed for good (fsync) or closed: status says so
                    return

    async def wait_writing(self) -> None:
        """Return once no disk outage is in progress (needs :meth:`retry_outages` running)."""
        while self.core.outages.active:
            await self._writing.wait()

    @property
    def store_id(self) -> str:
        """The store's stable identity (:mod:`meshmon.store.identity`)."""
        return self.core.store_id

    async def commit_cursor(self, name: str, last_seq: int, *, delivered_from: int | None = None,
                            durable: bool = True, rewind: bool = False) -> CursorInfo:  # fmt: skip
        """Commit a cursor; see :meth:`RingStore.commit_cursor`. A durable commit's fsync runs
        in a worker thread; ``durable=False`` only changes memory (saved at the next fsync
        round, or at close)."""
        commit = functools.partial(self.core.commit_cursor, name, last_seq,
                                   delivered_from=delivered_from, durable=durable, rewind=rewind)
        return await trio.to_thread.run_sync(commit) if durable else commit()

    async def wait_durable_past(self, seq: int) -> None:
        """Return once a record after ``seq`` is durable (a consumer waiting for new records).

        Rounds of fsync (and, under ``fsync = "never"``, appends) wake the waiters; a record
        written by the outage retry under ``never`` is noticed at the next append, so a caller
        that must not miss it should also wake on its own now and then.
        """
        while self.core.durable_seq <= seq:
            await self._advanced.wait()

    def read_cursor(self, name: str, limit: int = 1000, max_bytes: int = 4 * 2**20) -> list[Record]:
        """The next durable records for a cursor; see :meth:`RingStore.read_cursor`."""
        return self.core.read_cursor(name, limit, max_bytes)

    def cursor(self, name: str, start: Literal["oldest", "next"] = "oldest") -> CursorInfo:
        """Get or create a cursor; see :meth:`RingStore.cursor`."""
        return self.core.cursor(name, start)

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
        """Records matching the filters; see :meth:`RingStore.query`."""
        return self.core.query(check=check, target=target, since=since, until=until,
                               limit=limit, order=order)  # fmt: skip

    def latest(self, *, check: str | None = None, target: str | None = None) -> list[Record]:
        """Newest record per (check, target); see :meth:`RingStore.latest`."""
        return self.core.latest(check=check, target=target)

    def stats(self) -> StoreStats:
        """Counters; see :meth:`RingStore.stats`."""
        return self.core.stats()


@asynccontextmanager
async def open_store(
    directory: str | os.PathLike[str], config: StoreConfig | None = None
) -> AsyncIterator[AsyncRingStore]:
    """Open (recover) the store in a worker thread; sync and close it when the block ends.

    Example::

        async with open_store(data_dir / "store", config.store) as store:
            seq = await store.append(time.time(), "ping-core", "10.0.0.7", payload)

    Raises:
        StoreLocked: another process uses the directory.
    """
    core = await trio.to_thread.run_sync(lambda: RingStore(directory, config, auto_sync=False))
    store: AsyncRingStore | None = None
    try:
        store = AsyncRingStore(core)
        if core.outages.active:  # the disk was full already at open
            store._outage_began.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.retry_outages)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        if store is not None:  # appends gathered for a round that never came: written now
            store._write_gathered()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(core.close)


def _hand_out(gathered: list[_Gathered], seqs: range, dropped: RecordDropped | None = None) -> None:
    """Give each gathered append its share of ``seqs`` (the seqs of the records kept, in
    order); appends with records past them get ``dropped``'s error with their kept part."""
    pos = 0
    for g in gathered:
        share = seqs[pos : pos + len(g.records)]
        pos += len(g.records)
        if len(share) == len(g.records) or dropped is None:
            g.seqs = share
        else:
            g.error = RecordDropped(str(dropped), share)
