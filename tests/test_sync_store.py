"""What the uploader needs from the ring store: a stable identity per store, cursors that can be
committed lazily, moved back when the aggregator says so, and loss counts that stay exact when
the ring overwrites a batch that was being delivered."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from meshmon.config import StoreConfig
from meshmon.store import RingStore, identity

SMALL = StoreConfig(max_bytes=3 * 4096, segment_bytes=4096, fsync="always")


def fill(store: RingStore, n: int, size: int = 200) -> range:
    return store.append_batch([(1.0 + i, "c", "t", os.urandom(size)) for i in range(n)])


def test_a_store_gets_an_identity_at_creation_that_survives_reopening(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, "meshmon.store")
    with RingStore(tmp_path / "s") as store:
        first = store.store_id
        assert re.fullmatch(r"[0-9a-f]{32}", first)
        assert (tmp_path / "s" / "store.id").read_text() == first + "\n"
        assert store.stats().store_id == first
        fill(store, 3)
    with RingStore(tmp_path / "s") as store:
        assert store.store_id == first
    assert "unexpected file" not in caplog.text
    with RingStore(tmp_path / "other") as other:
        assert other.store_id != first


def test_a_store_made_before_identities_gets_one_and_keeps_its_records(tmp_path: Path) -> None:
    with RingStore(tmp_path) as store:
        fill(store, 5)
    (tmp_path / "store.id").unlink()
    (tmp_path / "store.id.tmp").write_text("half")  # an interrupted creation
    with RingStore(tmp_path) as store:
        assert re.fullmatch(r"[0-9a-f]{32}", store.store_id)
        assert len(store) == 5
    assert not (tmp_path / "store.id.tmp").exists()
    assert (tmp_path / "store.id").read_text().strip() == store.store_id


def test_a_damaged_identity_is_kept_aside_and_replaced(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with RingStore(tmp_path):
        pass
    (tmp_path / "store.id").write_text("not an id\n")
    with RingStore(tmp_path) as store:
        assert re.fullmatch(r"[0-9a-f]{32}", store.store_id)
    assert (tmp_path / "store.id.bad").read_text() == "not an id\n"
    assert "store.id is damaged" in caplog.text and "new stream" in caplog.text


def test_new_ids_are_random() -> None:
    assert len({identity.new_id() for _ in range(1000)}) == 1000


def test_a_lazy_commit_is_saved_at_the_next_sync_and_at_close(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.cursor("up")
        fill(store, 10)
        store.commit_cursor("up", 4, durable=False)
        assert store.cursor("up").position == 5
    with RingStore(tmp_path, SMALL) as store:
        assert store.cursor("up").position == 5
        store.commit_cursor("up", 8, durable=False)
        store.sync()
        os.sync()
        assert b'"position": 9' in (tmp_path / "cursors" / "up.cursor").read_bytes()


def test_a_cursor_goes_back_only_when_asked_and_never_below_the_oldest(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.cursor("up")
        fill(store, 200)  # the ring wraps: the oldest records are gone
        oldest = store.oldest_seq
        assert oldest is not None and 1 < oldest < 190
        lost = store.cursor("up").lost
        assert lost == oldest - 1
        store.commit_cursor("up", oldest + 10)
        assert store.commit_cursor("up", oldest + 5).position == oldest + 11  # ignored
        assert store.commit_cursor("up", oldest + 5, rewind=True).position == oldest + 6
        info = store.commit_cursor("up", 0, rewind=True)
        assert info.position == oldest and info.lost == lost  # its loss count stays
    with RingStore(tmp_path, SMALL) as store:
        assert store.cursor("up").position == oldest


def test_records_overwritten_while_being_delivered_are_not_counted_lost(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.cursor("up")
        fill(store, 40)
        assert store.oldest_seq == 1
        batch = store.read_cursor("up", limit=40)  # in flight...
        while store.oldest_seq == 1:  # ...while the ring drops the segment holding its start
            fill(store, 1)
        oldest = store.oldest_seq
        assert oldest is not None and 1 < oldest <= 40
        assert store.cursor("up").lost == oldest - 1  # charged, for now
        info = store.commit_cursor("up", batch[-1].seq, delivered_from=batch[0].seq)
        assert info.lost == 0 and info.position == 41  # delivered after all, so not lost
        fill(store, 100)  # now the ring overtakes the cursor for real
        assert store.cursor("up").lost > 0
