"""The store's summary columns (what the agent says of each result beside it) and reading
stored frames as they are on disk, for uploads that ship them (sync version 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from meshmon.config import StoreConfig
from meshmon.results.encoded import ping_result
from meshmon.store import InvalidRecord, RingStore
from meshmon.store import batch as framing

CFG = StoreConfig(fsync="never")


def pings(n: int, first_ts: float = 1.7e9) -> list[tuple[object, ...]]:
    """``n`` records as the agent's ping path appends them: payload and summary."""
    out = []
    for i in range(n):
        one = ping_result("a1", "ping", f"10.0.0.{i % 7}", 4, first_ts + i, 2.0, "10.0.0.1",
                          (0.5, None) if i % 3 else (None,))  # fmt: skip
        out.append((one.started_at, one.check, f"10.0.0.{i % 7}", *one.stored(False)))
    return out


def test_summaries_are_kept_beside_their_records_across_a_reopen(tmp_path: Path) -> None:
    recs = pings(30)
    with RingStore(tmp_path / "s", CFG) as store:
        store.append_batch(recs[:10])
        store.append_batch([(*r[:4], None) if i % 2 else r[:4] for i, r in enumerate(recs[10:20])])
        store.append_batch(recs[20:])
    with RingStore(tmp_path / "s", CFG) as store:
        cols = store.read_columns(1, 100)
    assert cols.count == 30
    for i, rec in enumerate(recs):
        word, rtt = rec[4]  # type: ignore[misc]
        if 10 <= i < 20:
            assert cols.words[i] == 0 and math.isnan(cols.rtts[i])
        else:
            assert cols.words[i] == word
            assert math.isnan(cols.rtts[i]) if math.isnan(rtt) else cols.rtts[i] == rtt


@pytest.mark.parametrize("summary", [(-1, 0.5), (2**32, 0.5), ("w", 0.5), (1, "x"), (1,), 7])
def test_a_bad_summary_fails_the_whole_batch(tmp_path: Path, summary: object) -> None:
    with RingStore(tmp_path / "s", CFG) as store:
        with pytest.raises(InvalidRecord, match="summary"):
            store.append_batch([pings(1)[0], (1.7e9, "ping", "t", b"\xf6", summary)])
        assert store.read_columns(1, 10).count == 0


def test_the_header_says_whether_every_record_has_a_summary(tmp_path: Path) -> None:
    with RingStore(tmp_path / "s", CFG) as store:
        store.append_batch(pings(5))
        store.append_batch([*pings(2), (1.7e9, "ping", "t", b"\xf6")])  # one without
        store.append_batch([r[:4] for r in pings(3)])  # none: no summary columns
        flags = []
        for start in (1, 6):  # the first frame has no dictionary yet, the others share one
            run = store.read_frames(start, 100)
            assert run is not None and run.first == start
            pos = 0
            while pos < len(run.frames):
                head = framing.read_head(run.frames, pos, len(run.frames))
                assert head is not None
                flags.append(head.flags & (framing.SUMMARIES | framing.SUMMARIZED))
                pos = head.end
        assert run.unsummarized == 6
    assert flags == [framing.SUMMARIES | framing.SUMMARIZED, framing.SUMMARIES, 0]


def whole_of(store: RingStore) -> object:
    raise AssertionError("no frames")


def test_frames_are_read_whole_from_the_one_holding_the_first_seq(tmp_path: Path) -> None:
    with RingStore(tmp_path / "s", CFG) as store:
        for k in range(6):
            store.append_batch(pings(10, 1.7e9 + 10 * k))
        assert (store.read_frames(1, 1000) or whole_of(store)).last == 10  # no dictionary yet
        whole = store.read_frames(11, 1000)
        assert whole is not None and (whole.first, whole.last) == (11, 60)
        mid = store.read_frames(25, 1000)
        assert mid is not None and (mid.first, mid.last) == (25, 60)
        head = framing.read_head(mid.frames, 0, len(mid.frames))
        assert head is not None and head.seq0 <= 25 < head.seq0 + head.count  # whole frames
        assert not mid.unsummarized
        assert set(mid.names.values()) == {("ping", f"10.0.0.{i}") for i in range(7)}
        capped = store.read_frames(25, 20)
        assert capped is not None and capped.last - capped.first + 1 <= 20
        assert store.read_frames(61, 100) is None  # nothing durable there yet
