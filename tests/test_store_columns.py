"""Reading the store as columns (what the uploader sends): the same records as ``read``, one
contiguous run, within the limits asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshmon.store import Record, RingStore, StoredColumns
from tests.test_store import SMALL, batch_frames, fill, segment_files


def rows(cols: StoredColumns) -> list[Record]:
    out, at = [], 0
    for i in range(cols.count):
        check, target = cols.names[cols.gids[i]]
        out.append(Record(cols.first + i, cols.tss[i], check, target,
                          bytes(cols.payloads[at : at + cols.plens[i]])))  # fmt: skip
        at += cols.plens[i]
    assert at == len(cols.payloads)
    return out


@pytest.mark.parametrize(("start", "limit", "max_bytes"), [
    (1, 10_000, 2**30), (1, 7, 2**30), (37, 100, 2**30), (100, 1, 1), (1, 10_000, 4000),
    (150, 10_000, 2**30), (400, 10, 2**30),
])  # fmt: skip
def test_columns_hold_what_read_returns(tmp_path: Path, start: int, limit: int,
                                        max_bytes: int) -> None:  # fmt: skip
    with RingStore(tmp_path, SMALL) as store:
        for _ in range(6):
            fill(store, 50, noise=40, targets=7)  # several frames and segments
        store.sync()
        expect = store.read(start, limit, max_bytes)
        got = store.read_columns(start, limit, max_bytes)
        assert rows(got) == expect
        assert got.first == expect[0].seq if expect else got.count == 0


def test_a_run_stops_before_a_gap_and_resumes_after_it(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        for i in range(30):  # one frame each
            store.append(1000.0 + i, f"chk{i % 2}", f"h{i % 3}", {"i": i})
    seg = segment_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[batch_frames(bytes(data))[10] + 30] ^= 0xFF  # record 10's frame no longer verifies
    seg.write_bytes(bytes(data))
    with RingStore(tmp_path, SMALL) as store:
        before = store.read_columns(1, 100)
        assert (before.first, before.last) == (1, 9)
        after = store.read_columns(10, 100)
        assert (after.first, after.last) == (11, 30)
        assert rows(after) == store.read(11, 100)


def test_an_overwritten_start_gives_the_oldest_record(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        for _ in range(20):
            fill(store, 50, noise=200)
        store.sync()
        oldest = store.oldest_seq
        assert oldest is not None and oldest > 1
        got = store.read_columns(1, 5)
        assert (got.first, got.count) == (oldest, 5)


def test_truncate_keeps_the_first_records(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        fill(store, 40, noise=10)
        store.sync()
        cols = store.read_columns(3, 100)
        whole = rows(cols)
        cols.truncate(11)
        assert rows(cols) == whole[:11] and cols.last == 13
        cols.truncate(50)
        assert cols.count == 11
