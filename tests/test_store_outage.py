"""A full disk is survived: a real (tiny) tmpfs fills up, results go to the outage buffer with
their seqs, overflow is counted and persisted, and writing resumes by itself in order."""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
import trio

from meshmon.config import StoreConfig
from meshmon.store import AsyncRingStore, RecordDropped, RingStore
from meshmon.store.outage import RETRY_MAX, advice, retry_delay
from tests.tmpfs import fill_disk, tmpfs

CFG = StoreConfig(max_bytes=128 * 1024, segment_bytes=32 * 1024, fsync="always",
                  buffer_bytes=64 * 1024)  # type: ignore[arg-type]  # fmt: skip


class Clock:
    """A monotonic clock that moves only when told (retries become due without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted afterwards."""
    with tmpfs(tmp_path / "fs", "512k") as mnt:
        yield mnt


def payload(i: int) -> dict[str, object]:
    """~75 bytes that do not compress (the store compresses): the disk fills as it did."""
    return {"i": i, "pad": random.Random(i).randbytes(60)}


def append_until_buffered(store: RingStore, start: int) -> int:
    """Append records i = start, start+1... until one is buffered; return the next i."""
    i = start
    while True:
        seq = store.append(float(i), "ping", f"t{i % 3}", payload(i))
        assert seq == i + 1  # seqs stay contiguous whether written or buffered
        i += 1
        if store.is_buffered(seq):
            return i
        assert i < start + 10_000, "the disk never filled"


def assert_all_present(store: RingStore, n: int) -> None:
    store.sync()
    got = store.read(1, limit=n + 10)
    assert [r.seq for r in got] == list(range(1, n + 1))
    assert [r.value()["i"] for r in got] == list(range(n))
    assert [r.target for r in got] == [f"t{i % 3}" for i in range(n)]


def test_full_disk_buffers_and_resumes_by_itself_in_order(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    d = tiny_fs / "store"
    with RingStore(d, CFG, clock=clock) as store:
        for i in range(20):
            store.append(float(i), "ping", f"t{i % 3}", payload(i))
        junk = fill_disk(tiny_fs)
        i = append_until_buffered(store, 20)
        health = store.stats().health
        assert health["state"] == "failing" and "No space left" in health["reason"]
        assert "free space" in health["advice"] and health["buffered"] == 1
        written = store.written_seq
        for _ in range(30):  # the retries that come due fail: the disk is still full
            clock.now += RETRY_MAX
            store.append(float(i), "ping", f"t{i % 3}", payload(i))
            i += 1
        assert store.stats().health["buffered"] == 31 and store.written_seq == written
        seg = store.segments[-1]
        assert seg.path.stat().st_size == seg.size  # refused writes were cut back
        started = [r for r in caplog.records if "writing failed" in r.getMessage()]
        assert len(started) == 1 and started[0].levelno == logging.ERROR

        junk.unlink()
        store.append(float(i), "ping", f"t{i % 3}", payload(i))  # not due yet: buffered
        assert store.stats().health["buffered"] == 32
        i += 1
        clock.now += RETRY_MAX
        seq = store.append(float(i), "ping", f"t{i % 3}", payload(i))  # due: buffer first
        i += 1
        assert not store.is_buffered(seq) and store.written_seq == seq == i
        health = store.stats().health
        assert health["state"] == "ok" and health["buffered"] == 0 and health["lost"] == 0
        last = health["last_outage"]
        assert (last["buffered"], last["written"], last["lost"]) == (32, 32, 0)
        assert last["recovered_at"] >= last["since"]
        assert_all_present(store, i)
        ended = [r.getMessage() for r in caplog.records if "writes recovered" in r.getMessage()]
        assert len(ended) == 1 and "32 results buffered, 32 written, 0 lost" in ended[0]
    with RingStore(d, CFG) as again:  # nothing torn was left behind
        assert again.recovery.problems == [] and again.recovery.truncated_bytes == 0
        assert_all_present(again, i)
        assert again.stats().health["last_outage"]["written"] == 32


def test_a_batch_cut_by_the_full_disk_keeps_its_seqs(tiny_fs: Path) -> None:
    clock = Clock()
    d = tiny_fs / "store"
    with RingStore(d, CFG, clock=clock) as store:
        junk = fill_disk(tiny_fs)
        seqs = store.append_batch([(float(i), "ping", f"t{i % 3}", payload(i))
                                   for i in range(100)])  # fmt: skip
        assert seqs == range(1, 101)
        assert 0 < store.stats().health["buffered"] <= 100
        assert store.segments[-1].path.stat().st_size == store.segments[-1].size
        junk.unlink()
        assert store.retry()
        assert_all_present(store, 100)


def test_buffered_records_keep_their_summaries(tiny_fs: Path) -> None:
    clock = Clock()
    with RingStore(tiny_fs / "store", CFG, clock=clock) as store:
        junk = fill_disk(tiny_fs)
        recs = [(float(i), "ping", f"t{i % 3}", cbor2.dumps(payload(i)),
                 (i + 1, i / 2) if i % 2 else None) for i in range(100)]  # fmt: skip
        assert store.append_batch(recs) == range(1, 101)
        assert store.stats().health["buffered"] > 0
        junk.unlink()
        assert store.retry()
        cols = store.read_columns(1, 100)
    assert list(cols.words) == [i + 1 if i % 2 else 0 for i in range(100)]
    assert [r for r in cols.rtts if r == r] == [i / 2 for i in range(1, 100, 2)]


def test_overflow_is_counted_and_persisted_across_reopen(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = StoreConfig(max_bytes=128 * 1024, segment_bytes=32 * 1024, fsync="batch",
                      buffer_bytes=2000)  # type: ignore[arg-type]  # fmt: skip
    d = tiny_fs / "store"
    with RingStore(d, cfg, auto_sync=False) as store:
        store.append(0.0, "ping", "t0", payload(0))
        junk = fill_disk(tiny_fs)
        i = append_until_buffered(store, 1)
        dropped = 0
        for _ in range(50):
            try:
                store.append(float(i), "ping", "t", payload(i))
                i += 1
            except RecordDropped as exc:
                assert not exc.kept
                dropped += 1
        health = store.stats().health
        buffered = health["buffered"]
        assert buffered == i - store.written_seq and dropped == 50 - (buffered - 1)
        assert health["lost"] == dropped > 0
        assert sum("buffer is full" in r.getMessage() for r in caplog.records) == 1
    # closed with the disk still full: what was buffered is lost too, and said so
    assert any("closing while writes still fail" in r.getMessage() for r in caplog.records)
    with RingStore(d, cfg) as store:
        health = store.stats().health
        assert health["lost"] == dropped + buffered
        assert health["last_outage"]["lost"] == dropped + buffered
        assert store.stats().newest_seq == i - buffered  # the buffered never reached disk,
        assert store.next_seq == i + 1  # and their seqs are not given out again
    junk.unlink()
    with RingStore(d, cfg) as store:
        assert store.stats().health["lost"] == dropped + buffered


def test_a_crash_during_an_outage_counts_the_buffer_and_skips_its_seqs(tiny_fs: Path) -> None:
    clock = Clock()
    d = tiny_fs / "store"
    store = RingStore(d, CFG, auto_sync=False, clock=clock)
    store.append(0.0, "ping", "t0", payload(0))
    junk = fill_disk(tiny_fs)
    i = append_until_buffered(store, 1)
    for _ in range(5):
        store.append(float(i), "ping", "t", payload(i))
        i += 1
    clock.now += 1.0  # the count is saved at most once a second: this append saves it
    store.append(float(i), "ping", "t", payload(i))
    i += 1
    pending = store.stats().health["buffered"]
    store._stop_flusher.set()
    os.close(store._lock_fd)  # "crash": drop the lock without running close()
    junk.unlink()
    with RingStore(d, CFG) as again:
        health = again.stats().health
        assert health["lost"] == pending and health["last_outage"]["lost_in_crash"] == pending
        assert again.next_seq == i + 1  # the lost records' seqs are never given out again
        seq = again.append(1.0, "ping", "t", payload(i))
        assert seq == i + 1 and again.get(seq) is not None


def test_a_full_disk_at_open_is_survived(tiny_fs: Path) -> None:
    d = tiny_fs / "store"
    RingStore(d, CFG).close()
    for seg in d.glob("*.seg"):
        seg.unlink()  # an empty store whose first segment must be created
    junk = fill_disk(tiny_fs)
    with RingStore(d, CFG) as store:
        assert store.stats().health["state"] == "failing"
        assert store.append(1.0, "c", "t", payload(0)) == 1 and store.is_buffered(1)
        junk.unlink()
        assert store.retry() and store.get(1) is not None


def test_the_recovery_report_is_persisted(tmp_path: Path) -> None:
    with RingStore(tmp_path, CFG) as store:
        store.append_batch([(float(i), "c", "t", payload(i)) for i in range(10)])
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    with seg.open("ab") as f:
        f.write(b"\xe5MR\x1f torn")
    with RingStore(tmp_path, CFG):
        pass
    with RingStore(tmp_path, CFG) as store:  # a clean open keeps the last report
        assert store.recovery.problems == []
        report = store.stats().health["recovery_report"]
        assert report["truncated_bytes"] == 9 and report["problems"] == 1
        assert "torn or corrupt tail" in report["first_problems"][0]


@pytest.mark.parametrize(("attempt", "delay"), [(0, 0.5), (1, 1.0), (2, 2.0), (4, 8.0),
                                                (5, RETRY_MAX), (60, RETRY_MAX)])  # fmt: skip
def test_retry_backoff(attempt: int, delay: float) -> None:
    assert retry_delay(attempt) == delay


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "free space"),
                                             (errno.EROFS, "read-only"),
                                             (errno.EIO, "I/O errors"),
                                             (errno.EACCES, "permissions")])  # fmt: skip
def test_advice_names_the_fix(code: int, words: str) -> None:
    assert words in advice(str(OSError(code, os.strerror(code))), Path("/data"))


async def test_the_trio_wrapper_ends_an_outage_with_no_append(tiny_fs: Path) -> None:
    # the real clock: an autojump clock would jump to the deadline while a worker thread writes
    core = RingStore(tiny_fs / "store", CFG, auto_sync=False)
    store = AsyncRingStore(core)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.retry_outages)
        junk = fill_disk(tiny_fs)
        i = 0
        while True:  # returns at once for a buffered record: no wait for an fsync
            seq = await store.append(float(i), "ping", f"t{i % 3}", payload(i))
            i += 1
            if core.is_buffered(seq):
                break
        junk.unlink()
        with trio.fail_after(2 * RETRY_MAX):  # the retry task wakes by itself (in 0.5 s)
            await store.wait_writing()
        nursery.cancel_scope.cancel()
    assert_all_present(core, i)
    core.close()


def test_a_damaged_health_file_is_said_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RingStore(tmp_path, CFG) as store:
        store.outages.lost = 7
        store.outages.save()
        store.outages.lost = 9
        store.outages.save()  # the two slots now hold 7 and 9
    with (tmp_path / "HEALTH").open("r+b") as f:
        f.seek(10)
        f.write(b"XX")  # slot 0 (generation 2, lost 9) is torn
    with RingStore(tmp_path, CFG) as store:
        assert store.stats().health["lost"] == 7  # the other slot still holds the older state
    with (tmp_path / "HEALTH").open("r+b") as f:
        f.seek(8192 + 10)
        f.write(b"XX")
    with RingStore(tmp_path, CFG) as store:
        assert store.stats().health["lost"] == 0
    assert any("health file" in r.getMessage() and "damaged" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_a_cursor_the_full_disk_refuses_is_saved_later_and_fails_nothing(tiny_fs: Path) -> None:
    d = tiny_fs / "store"
    with RingStore(d, CFG) as store:
        store.cursor("sync")
        store.append(1.0, "c", "t", payload(0))
        junk = fill_disk(tiny_fs)
        store.cursors.states["sync"].lost = 5  # as a ring wrap would charge it
        store.cursors.states["sync"].dirty = True
        store.sync()  # the cursor file cannot be replaced: not a reason to fail the store
        assert store.stats().health["state"] == "ok"
        assert store.cursors.states["sync"].dirty
        junk.unlink()
        store.sync()
        assert not store.cursors.states["sync"].dirty
    with RingStore(d, CFG) as store:
        assert store.cursor("sync").lost == 5


def test_a_long_buffer_is_written_in_chunks_in_order(
    tiny_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshmon.store import outage

    monkeypatch.setattr(outage, "RESUME_CHUNK", 7)
    d = tiny_fs / "store"
    with RingStore(d, CFG, auto_sync=False) as store:  # the owner retries, as the agent does
        store.append(0.0, "ping", "t0", payload(0))
        junk = fill_disk(tiny_fs)
        i = append_until_buffered(store, 1)
        for _ in range(40):
            store.append(float(i), "ping", f"t{i % 3}", payload(i))
            i += 1
        pending = store.stats().health["buffered"]
        assert pending > 3 * 7 and not store.retry()  # still full: nothing written, kept
        junk.unlink()
        assert store.retry() and store.stats().health["last_outage"]["written"] == pending
        assert_all_present(store, i)
