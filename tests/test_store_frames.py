"""The frame index: queries across frame and segment boundaries against a brute-force model,
what the filters and time bounds let a query skip, latest per series after the ring wraps
and after reopening, and saved frame indexes (``.idx``) that must match their segment."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from meshmon.config import StoreConfig
from meshmon.store import RingStore, batch
from meshmon.store.format import FILE_HEADER_SIZE

SMALL = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="never")
Row = tuple[int, float, str, str, bytes]
"""(seq, ts, check, target, payload) as the model keeps them."""


def write_random(store: RingStore, rng: random.Random, n_batches: int) -> list[Row]:
    """Batches of 1-80 records over 2 checks x 7 targets, timestamps mostly rising with
    jitter, and a clock step back now and then; payloads partly incompressible so that the
    ring wraps."""
    rows: list[Row] = []
    ts = 1000.0
    for _ in range(n_batches):
        if rng.random() < 0.05:
            ts -= rng.uniform(10, 300)  # a clock step back
        recs = []
        for _ in range(rng.randrange(1, 81)):
            ts += rng.uniform(-0.5, 1.5)
            recs.append((ts, f"c{rng.randrange(2)}", f"t{rng.randrange(7)}",
                         b"\x58\x20" + rng.randbytes(32)))  # fmt: skip
        seqs = store.append_batch(recs)
        rows += [(s, *r) for s, r in zip(seqs, recs, strict=True)]
    return rows


def brute(
    rows: list[Row], oldest: int, check: str | None, target: str | None,
    since: float | None, until: float | None, limit: int, newest: bool,
) -> list[int]:  # fmt: skip
    hits = [r[0] for r in rows if r[0] >= oldest and (check is None or r[2] == check)
            and (target is None or r[3] == target) and (since is None or r[1] >= since)
            and (until is None or r[1] <= until)]  # fmt: skip
    return (hits[::-1] if newest else hits)[:limit]


def test_queries_match_a_brute_force_model_across_frames_segments_and_wraps(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    with RingStore(tmp_path, SMALL) as store:
        rows = write_random(store, rng, 120)
        assert store.stats().dropped_segments > 0  # the ring wrapped
        by_seq = {r[0]: r for r in rows}
        for reopen in (False, True):
            if reopen:
                store.close()
                store = RingStore(tmp_path, SMALL)
            oldest = store.oldest_seq
            assert oldest is not None
            for _ in range(300):
                check = rng.choice([None, "c0", "c1"])
                target = rng.choice([None, "t0", "t3", "t6", "nope"])
                since = rng.choice([None, rng.uniform(800, 2500)])
                until = rng.choice([None, (since or 800) + rng.uniform(0, 400)])
                limit = rng.choice([1, 7, 50, 10**6])
                newest = rng.random() < 0.5
                got = store.query(check=check, target=target, since=since, until=until,
                                  limit=limit, order="newest" if newest else "oldest")  # fmt: skip
                want = brute(rows, oldest, check, target, since, until, limit, newest)
                assert [r.seq for r in got] == want, (check, target, since, until, limit)
                for r in got[:3]:
                    assert (r.seq, r.ts, r.check, r.target, r.payload) == by_seq[r.seq]
            latest = {(r.check, r.target): r.seq for r in store.latest()}
            model: dict[tuple[str, str], int] = {}
            for seq, _, c, t, _ in rows:
                if seq >= oldest:
                    model[(c, t)] = seq
            assert latest == model
            assert store.series_names() == sorted(model)
        store.close()


def count_column_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = batch.open_meta

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr("meshmon.store.query.batch.open_meta", counting)
    return calls


def test_a_time_range_inflates_only_the_frames_that_can_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = StoreConfig(max_bytes=8 * 2**20, segment_bytes=2**20, fsync="never")
    with RingStore(tmp_path, cfg) as store:
        for b in range(400):  # 400 frames of 20 records, one second each
            store.append_batch([(1000.0 + b + i / 20, "ping", f"t{i}", {"b": b, "i": i})
                                for i in range(20)])  # fmt: skip
        calls = count_column_reads(monkeypatch)
        got = store.query(since=1200.0, until=1201.99, order="oldest", limit=100)
        assert [(r.value()["b"], r.value()["i"]) for r in got] == [
            (b, i) for b in (200, 201) for i in range(20)]  # fmt: skip
        assert len(calls) <= 3  # the two frames, and at most a neighbour at the edge


def test_a_series_filter_skips_frames_without_the_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = StoreConfig(max_bytes=8 * 2**20, segment_bytes=2**20, fsync="never")
    with RingStore(tmp_path, cfg) as store:
        for b in range(300):  # 20 series a frame; "rare" only in every 50th frame
            recs = [(1000.0 + b, "ping", f"t{i}", {"b": b}) for i in range(20)]
            if b % 50 == 7:
                recs.append((1000.0 + b, "ping", "rare", {"b": b, "rare": True}))
            store.append_batch(recs)
        calls = count_column_reads(monkeypatch)
        got = store.query(target="rare", since=0.0, limit=100, order="oldest")
        assert [r.value()["b"] for r in got] == [7, 57, 107, 157, 207, 257]
        assert len(calls) < 6 + 300 * 0.2  # the six, plus the filter's few false positives
        calls.clear()
        assert store.query(target="t3", since=1100.0, until=1104.0, limit=100) != []
        assert len(calls) <= 6  # time and series together


def test_latest_after_the_ring_drops_a_series(tmp_path: Path) -> None:
    rng = random.Random(3)
    with RingStore(tmp_path, SMALL) as store:
        store.append(1.0, "ping", "gone", {"v": 1})
        store.append(2.0, "ping", "kept", {"v": 2})
        while store.stats().dropped_segments == 0:
            store.append_batch([(3.0, "ping", "busy", b"\x58\x64" + rng.randbytes(100))
                                for _ in range(10)])  # fmt: skip
        assert ("ping", "gone") not in store.series_names()
        assert {r.target for r in store.latest()} == {"busy"}
        assert store.query(target="gone") == [] and store.latest(target="gone") == []
        seq = store.append(4.0, "ping", "gone", {"v": 3})  # comes back as a new series
        assert [r.seq for r in store.latest(target="gone")] == [seq]
        busy = store.latest(target="busy")[0].seq
    with RingStore(tmp_path, SMALL) as store:
        assert {r.target: r.seq for r in store.latest()} == {"gone": seq, "busy": busy}


def test_a_batch_that_drops_its_own_series_older_records_keeps_the_series(
    tmp_path: Path,
) -> None:
    """The write that rolls the ring may delete the only older records of a series in the
    batch being written: the series must survive (its id is in use by that batch)."""
    rng = random.Random(4)
    with RingStore(tmp_path, SMALL) as store:
        store.append(1.0, "ping", "x", {"v": "old"})
        n_max = SMALL.max_bytes // SMALL.segment_bytes
        while not (len(store.segments) == n_max
                   and store.segments[-1].size > SMALL.segment_bytes - 300):  # fmt: skip
            store.append(2.0, "ping", "other", b"\x58\x64" + rng.randbytes(100))
        assert store.stats().dropped_segments == 0 and store.get(1) is not None
        seqs = store.append_batch([(3.0, "ping", "x", {"v": "new"}),
                                   (3.0, "ping", "other", b"\x59\x03\xe8" + rng.randbytes(1000))])
        assert store.stats().dropped_segments == 1 and store.get(1) is None
        assert [(r.seq, r.value()) for r in store.latest(target="x")] == [(seqs[0], {"v": "new"})]
        assert store.query(target="x")[0].value() == {"v": "new"}


def test_saved_frame_indexes_match_a_scan_and_are_checked_against_the_segment(
    tmp_path: Path,
) -> None:
    cfg = StoreConfig(max_bytes=256 * 1024, segment_bytes=16 * 1024, fsync="never")
    rng = random.Random(5)
    with RingStore(tmp_path, cfg) as store:
        rows = write_random(store, rng, 60)
        assert store.stats().dropped_segments == 0
    idx = sorted(tmp_path.glob("*.idx"))
    segs = sorted(tmp_path.glob("*.seg"))
    assert len(idx) == len(segs) - 1  # every sealed segment, not the active one

    def snapshot() -> tuple[Any, ...]:
        with RingStore(tmp_path, cfg) as store:
            return (store.read(1, limit=10**6), store.latest(),
                    store.query(target="t2", since=1100.0, until=1300.0, limit=10**6),
                    store.stats().recovery.records, store.stats().recovery.problems)  # fmt: skip

    loaded = snapshot()
    assert [r.seq for r in loaded[0]] == [r[0] for r in rows] and loaded[4] == []
    for p in idx:
        p.unlink()
    assert snapshot() == loaded  # scanned instead, and the indexes saved again
    assert sorted(tmp_path.glob("*.idx")) == idx
    idx[0].write_bytes(idx[0].read_bytes()[:-5] + b"junk!")  # a damaged index: ignored
    assert snapshot() == loaded
    # a sealed segment damaged after its index was saved (same size): found, not trusted
    data = bytearray(segs[1].read_bytes())
    frames, pos = [], FILE_HEADER_SIZE
    while (head := batch.read_head(data, pos, len(data))) is not None:
        frames.append(head)
        pos = head.end
    hit = [h for h in frames if h.kind == batch.KIND_BATCH][3]
    data[hit.end - 6] ^= 0x40
    segs[1].write_bytes(bytes(data))
    with RingStore(tmp_path, cfg) as store:
        info = store.stats().recovery
        assert info.skipped_records == hit.count
        assert len(store) == len(rows) - hit.count
        assert store.get(hit.seq0) is None and store.get(hit.seq0 + hit.count) is not None


def test_orphaned_indexes_are_removed(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.append(1.0, "c", "t", 1)
    (tmp_path / "00000000000000000099.idx").write_bytes(b"stale")
    (tmp_path / "00000000000000000001.idx.tmp").write_bytes(b"half")
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 1 and store.stats().recovery.problems == []
    assert not list(tmp_path.glob("*.idx*"))


def test_time_bounds_round_outwards_so_an_exact_match_is_never_skipped(tmp_path: Path) -> None:
    """The frame index keeps time bounds as float32 offsets: rounded to nearest, about half
    of them would exclude a record whose timestamp is exactly the bound."""
    rng = random.Random(9)
    cfg = StoreConfig(max_bytes=8 * 2**20, segment_bytes=2**20, fsync="never")
    tss = sorted(1.7e9 + rng.uniform(0, 5000) for _ in range(300))
    with RingStore(tmp_path, cfg) as store:
        for i in range(0, 300, 3):  # frames of 3
            store.append_batch([(ts, "c", "t", b"\x01") for ts in tss[i : i + 3]])
        for reopen in (False, True):
            if reopen:
                store.close()
                store = RingStore(tmp_path, cfg)
            for seq, ts in enumerate(tss, 1):
                assert [r.seq for r in store.query(since=ts, until=ts)] == [seq]
        store.close()


@pytest.mark.parametrize("x", [0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0, 1234.5678901, -98765.4321,
                               3.3e38, -3.3e38, 3.5e38, -3.5e38, 1e300, -1e300])  # fmt: skip
def test_float32_bounds_never_cross_the_value(x: float) -> None:
    from array import array

    from meshmon.store.index import f32_down, f32_up

    assert array("f", [f32_down(x)])[0] <= x <= array("f", [f32_up(x)])[0]
