"""Ring store: appends, queries, cursors, the ring, and recovery from damaged files."""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshmon.config import StoreConfig
from meshmon.store import InvalidRecord, RingStore, StoreLocked, UnknownCursor, batch
from meshmon.store.format import FILE_HEADER_SIZE

SMALL = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="batch")


def fill(
    store: RingStore, n: int, t0: float = 1000.0, targets: int = 3, noise: int = 0
) -> list[int]:
    """Append ``n`` records; ``noise`` random bytes in each keep them from compressing away."""
    rng = random.Random(n)
    recs = [(t0 + i, f"chk{i % 2}", f"h{i % targets}",
             {"i": i, "r": rng.randbytes(noise)} if noise else {"i": i}) for i in range(n)]
    return list(store.append_batch(recs))


def segment_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def batch_frames(data: bytes) -> dict[int, int]:
    """File offset of each batch frame of a segment, by its first seq."""
    found, pos = {}, FILE_HEADER_SIZE
    while (head := batch.read_head(data, pos, len(data))) is not None:
        if head.kind == batch.KIND_BATCH:
            found[head.seq0] = pos
        pos = head.end
    return found


def test_append_and_read_back(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        seqs = fill(store, 50)
        assert seqs == list(range(1, 51))
        one = store.append(2000.0, "raw", "x", b"\xa1aa\x01")
        assert one == 51
        store.sync()
        got = store.read(1, limit=100)
        assert [r.seq for r in got] == list(range(1, 52))
        assert got[7].value() == {"i": 7} and got[7].check == "chk1" and got[7].target == "h1"
        assert got[-1].payload == b"\xa1aa\x01"
        assert store.get(10) is not None and store.get(10).ts == 1009.0  # type: ignore[union-attr]
        assert store.get(999) is None


def test_queries_by_check_target_time_and_latest(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 60)
        by_target = store.query(target="h1", limit=100, order="oldest")
        assert [r.value()["i"] for r in by_target] == list(range(1, 60, 3))
        by_check = store.query(check="chk0", limit=5)
        assert [r.value()["i"] for r in by_check] == [58, 56, 54, 52, 50]
        both = store.query(check="chk0", target="h0", limit=100, order="oldest")
        assert [r.value()["i"] for r in both] == list(range(0, 60, 6))
        timed = store.query(since=1010.0, until=1014.5, order="oldest")
        assert [r.value()["i"] for r in timed] == [10, 11, 12, 13, 14]
        timed_target = store.query(target="h2", since=1020.0, until=1030.0, order="oldest")
        assert [r.value()["i"] for r in timed_target] == [20, 23, 26, 29]
        latest = store.latest()
        assert sorted((r.check, r.target, r.value()["i"]) for r in latest) == [
            ("chk0", "h0", 54), ("chk0", "h1", 58), ("chk0", "h2", 56),
            ("chk1", "h0", 57), ("chk1", "h1", 55), ("chk1", "h2", 59),
        ]  # fmt: skip
        assert [r.value()["i"] for r in store.latest(target="h0")] == [54, 57]
        assert store.query(check="nope") == []
        assert ("chk1", "h2") in store.series_names()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=0, max_value=5000, allow_nan=False), min_size=1, max_size=300),
       st.floats(min_value=-100, max_value=5100), st.floats(min_value=0, max_value=3000))
def test_time_query_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory, tss: list[float], since: float, width: float
) -> None:
    """Timestamps in any order (clock steps, late results): the block index never misses one."""
    d = tmp_path_factory.mktemp("tq")
    with RingStore(d, SMALL) as store:
        for start in range(0, len(tss), 37):  # several batches, some split per record
            store.append_batch([(ts, "c", "t", b"\x00") for ts in tss[start : start + 37]])
        got = [r.seq for r in store.query(since=since, until=since + width, limit=10**6,
                                          order="oldest")]  # fmt: skip
        want = [i + 1 for i, ts in enumerate(tss) if since <= ts <= since + width]
        assert got == want


def test_reopen_rebuilds_indexes_and_continues_seqs(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 40)
        before = [r.seq for r in store.query(target="h2", limit=100)]
    with RingStore(tmp_path, SMALL) as store:
        assert [r.seq for r in store.query(target="h2", limit=100)] == before
        assert store.append(5000.0, "c", "t", 1) == 41
        assert store.stats().recovery.records == 40
        assert store.stats().recovery.problems == []


def test_invalid_records_are_rejected_before_writing(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        with pytest.raises(InvalidRecord):
            store.append_batch([(1.0, "c", "t")])  # type: ignore[list-item]
        with pytest.raises(InvalidRecord):
            store.append(math.nan, "c", "t", 1)
        with pytest.raises(InvalidRecord):
            store.append(1.0, "c\x00", "t", 1)
        with pytest.raises(InvalidRecord):
            store.append(1.0, "c", "t", b"x" * 20_000)  # larger than a segment
        with pytest.raises(InvalidRecord):
            store.append(1.0, "c", "t", object())
        assert store.next_seq == 1 and len(store) == 0


def test_second_process_is_locked_out(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL), pytest.raises(StoreLocked, match="in use"):
        RingStore(tmp_path, SMALL)


def test_torn_tail_is_truncated_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 30)
        frame = store.get(30)
    last = segment_files(tmp_path)[-1]
    size = last.stat().st_size
    with last.open("ab") as f:  # a second copy of the last frame, cut in half: a torn write
        data = last.read_bytes()
        start = data.rfind(batch.MAGIC)
        f.write(data[start : start + (size - start) // 2])
    caplog.set_level(logging.WARNING, "meshmon.store")
    with RingStore(tmp_path, SMALL) as store:
        info = store.stats().recovery
        assert info.truncated_bytes > 0 and info.records == 30
        assert str(last) in caplog.text and "truncated" in caplog.text
        assert last.stat().st_size == size
        assert store.get(30) == frame
        assert store.append(1.0, "c", "t", 1) == 31
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 31 and store.stats().recovery.problems == []


def test_corrupt_record_in_the_middle_does_not_hide_later_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RingStore(tmp_path, SMALL) as store:
        for i in range(30):  # one frame each
            store.append(1000.0 + i, f"chk{i % 2}", f"h{i % 3}", {"i": i})
    seg = segment_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[batch_frames(bytes(data))[10] + 30] ^= 0xFF  # inside record 10's compressed body
    seg.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, "meshmon.store")
    with RingStore(tmp_path, SMALL) as store:
        info = store.stats().recovery
        assert info.skipped_records == 1 and info.truncated_bytes == 0
        assert store.get(10) is None and store.get(9) is not None and store.get(11) is not None
        assert len(store) == 29 and str(seg) in caplog.text and "1 records lost" in caplog.text
        h0 = [r.seq for r in store.query(target="h0", limit=100, order="oldest")]
        assert h0[:5] == [1, 4, 7, 13, 16]  # seq 10 (i=9, target h0) is the corrupt one
        assert store.append(1.0, "c", "t", 1) == 31


def test_garbage_in_the_middle_of_a_segment(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 10)
        store.append_batch([(1010.0 + i, "chk0", "h0", {"i": 10 + i}) for i in range(10)])
    seg = segment_files(tmp_path)[0]
    data = seg.read_bytes()
    mid = data.index(batch.MAGIC, FILE_HEADER_SIZE + 1)  # after the first batch frame
    seg.write_bytes(data[:mid] + os.urandom(300) + batch.MAGIC + b"\x00" * 50 + data[mid:])
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 20  # nothing lost: only inserted junk was skipped
        assert store.stats().recovery.skipped_bytes >= 350
        assert [r.value()["i"] for r in store.read(1, limit=100)] == list(range(20))


def test_bad_files_are_quarantined_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 900, noise=30)  # several segments, not wrapping
    segs = segment_files(tmp_path)
    assert len(segs) >= 3
    junk = tmp_path / "00000000000000000002.seg"  # garbage that sorts between real segments
    junk.write_bytes(os.urandom(5000))
    short = tmp_path / "00000000000000099999.seg"  # a truncated header
    short.write_bytes(b"MMRI")
    wrong = segs[1]  # a real segment whose header was overwritten: records still found
    data = bytearray(wrong.read_bytes())
    data[0:8] = b"XXXXXXXX"
    wrong.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, "meshmon.store")
    with RingStore(tmp_path, SMALL) as store:
        info = store.stats().recovery
        assert sorted(Path(p).name for p in info.bad_files) == [
            "00000000000000000002.seg.bad", "00000000000000099999.seg.bad"
        ]  # fmt: skip
        assert str(junk) in caplog.text and str(short) in caplog.text
        assert str(wrong) in caplog.text and "wrong magic" in caplog.text
        assert len(store) == 900
        assert [r.value()["i"] for r in store.read(1, limit=1000)] == list(range(900))
        assert store.append(1.0, "c", "t", 1) == 901
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 901


def test_ring_wraps_and_counts_what_each_cursor_lost(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.cursor("sync")
        store.cursor("eager")
        fill(store, 100)
        store.sync()
        store.commit_cursor("sync", 40)
        store.commit_cursor("eager", 100)
        rng = random.Random(1)
        for _ in range(30):  # 100-byte CBOR byte strings, incompressible
            store.append_batch([(1.0, "c", "t", b"\x58\x64" + rng.randbytes(100))
                                for _ in range(50)])  # fmt: skip
        store.sync()
        st = store.stats()
        assert st.dropped_segments > 0 and st.bytes <= SMALL.max_bytes
        oldest = st.oldest_seq
        assert oldest is not None and oldest > 100
        sync, eager = st.cursors["sync"], st.cursors["eager"]
        assert sync["lost"] == oldest - 41  # every record from 41 up to the oldest kept one
        assert sync["position"] == oldest
        assert eager["lost"] == oldest - 101
        assert st.lost_records == sync["lost"] + eager["lost"]
        assert st.dropped_records == oldest - 1
        assert store.read_cursor("sync", limit=1)[0].seq == oldest
    with RingStore(tmp_path, SMALL) as store:  # loss counters survive a restart
        assert store.stats().cursors["sync"]["lost"] == sync["lost"]


def test_cursor_persistence_and_durability_rules(tmp_path: Path) -> None:
    cfg = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="batch",
                      fsync_interval=3600.0)  # fmt: skip
    with RingStore(tmp_path, cfg) as store:
        store.cursor("sync")
        fill(store, 10)
        assert store.durable_seq == 0
        assert store.read_cursor("sync") == []  # nothing durable yet: nothing to ship
        with pytest.raises(ValueError, match="durable"):
            store.commit_cursor("sync", 5)
        store.sync()
        assert [r.seq for r in store.read_cursor("sync", limit=4)] == [1, 2, 3, 4]
        info = store.commit_cursor("sync", 4)
        assert (info.position, info.behind, info.lost) == (5, 6, 0)
        store.commit_cursor("sync", 2)  # backwards: ignored
        late = store.cursor("late", start="next")
        assert late.position == 11
        with pytest.raises(UnknownCursor):
            store.read_cursor("nope")
        with pytest.raises(ValueError):
            store.cursor("bad/name")
    (tmp_path / "cursors" / "sync.tmp").write_bytes(b"half-written")  # an interrupted save
    with RingStore(tmp_path, cfg) as store:
        assert [r.seq for r in store.read_cursor("sync", limit=2)] == [5, 6]
        assert store.cursor("late").position == 11
        store.delete_cursor("late")
        assert [c.name for c in store.cursor_infos()] == ["sync"]
    assert not (tmp_path / "cursors" / "sync.tmp").exists()


def test_damaged_cursor_file_restarts_from_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.cursor("sync")
        fill(store, 5)
        store.sync()
        store.commit_cursor("sync", 3)
    (tmp_path / "cursors" / "sync.cursor").write_bytes(b"{not json")
    caplog.set_level(logging.ERROR, "meshmon.store")
    with RingStore(tmp_path, SMALL) as store:
        assert store.cursor("sync").position == 1
        assert "sync.cursor" in caplog.text and "damaged" in caplog.text


def test_fsync_always_is_durable_on_return(tmp_path: Path) -> None:
    cfg = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="always")
    with RingStore(tmp_path, cfg) as store:
        seqs = fill(store, 3)
        assert store.durable_seq == seqs[-1]


def test_batch_policy_flusher_makes_records_durable(tmp_path: Path) -> None:
    cfg = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="batch",
                      fsync_interval=0.02)  # fmt: skip
    with RingStore(tmp_path, cfg) as store:
        seqs = fill(store, 5)
        assert store.wait_durable(seqs[-1], timeout=10)
        assert store.durable_seq >= 5
    with RingStore(tmp_path, cfg, auto_sync=False) as store:
        seq = store.append(1.0, "c", "t", 1)
        assert not store.wait_durable(seq, timeout=0.01)  # nobody syncs: it says so
        store.sync()
        assert store.wait_durable(seq, timeout=0)


def test_stats_report_sizes_and_memory(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 100)
        st = store.stats()
        assert st.records == 100 and st.series == 6 and st.segments >= 1
        assert st.oldest_seq == 1 and st.newest_seq == 100
        assert st.bytes == sum(p.stat().st_size for p in segment_files(tmp_path))
        assert 20 * 100 <= st.index_bytes <= 64 * 100


def test_single_and_batch_appends_store_identical_records(tmp_path: Path) -> None:
    recs = [(1000.0 + i * 0.5, f"c{i % 2}", f"t{i % 5}", {"i": i, "pad": "x" * (i * 37 % 300)})
            for i in range(400)]  # fmt: skip
    with RingStore(tmp_path / "one", SMALL) as one, RingStore(tmp_path / "batch", SMALL) as many:
        for rec in recs:
            one.append(*rec)
        many.append_batch(recs[:7])
        many.append_batch(recs[7:])
        assert one.query(limit=5) == many.query(limit=5)
        assert one.read(one.oldest_seq or 0, limit=10**6)[-50:] == many.read(
            1, limit=10**6)[-50:]  # fmt: skip
        one.sync(), many.sync()
        # one frame per record costs more than one frame per batch
        assert one.stats().bytes > many.stats().bytes
