"""Version 3 of the sync body (the agent's stored frames): read into the very columns a version 2
body carries, and every malformed body refused naming the field, frame or record at fault."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from meshmon.config import StoreConfig
from meshmon.results.encoded import ping_result
from meshmon.store import RingStore
from meshmon.store import batch as framing
from meshmon.store.frames import StoredFrames
from meshmon.sync.build import RecordReader
from meshmon.wire import ingest as wire
from meshmon.wire.columns import ColumnBatch, column_batch
from meshmon.wire.frames import FrameBatch, encode_frames
from meshmon.wire.ingest import MAX_BODY

AGENT = "a1"


def fill(store: RingStore, n: int, appends: int) -> None:
    """``n`` pings as the agent appends them (with summaries), and a TCP-like record without
    one in the last append when ``appends`` is odd."""
    made = [ping_result(AGENT, "ping", f"10.0.0.{i % 5}", 4, 1.7e9 + i, 2.0, "10.0.0.1",
                        (0.5, None) if i % 3 else (None,)) for i in range(n)]  # fmt: skip
    recs: list[tuple[Any, ...]] = [(o.started_at, o.check, f"10.0.0.{i % 5}", *o.stored(False))
                                   for i, o in enumerate(made)]  # fmt: skip
    step = -(-n // appends)
    for at in range(0, n, step):
        store.append_batch(recs[at : at + step])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RingStore]:
    with RingStore(tmp_path / "s", StoreConfig(fsync="never")) as s:
        fill(s, 1, 1)  # the segment's first frame, before it has a dictionary
        fill(s, 300, 6)
        yield s


def frame_batch(store: RingStore, first: int, limit: int = 10_000) -> FrameBatch:
    run = store.read_frames(first, limit)
    assert run is not None
    return FrameBatch(agent=AGENT, store=store.store_id, after=first - 1, first=run.first,
                      last=run.last, skipped_before=0, lost_total=0, sent_at=time.time(),
                      members=None, run=run)  # fmt: skip


def as_columns(store: RingStore, first: int, last: int) -> ColumnBatch:
    """What version 2 carries for the same records (the uploader's own reading)."""
    stored = store.read_columns(first, last - first + 1)
    return column_batch(agent=AGENT, store=store.store_id, after=first - 1, first=first,
                        last=last, skipped_before=0, lost_total=0, sent_at=0.0, members=None,
                        **RecordReader(AGENT).columns(stored))  # fmt: skip


@pytest.mark.parametrize("first", [2, 77, 301])
def test_frames_read_into_the_columns_version_2_carries(store: RingStore, first: int) -> None:
    sent = frame_batch(store, first)
    body, encoding = encode_frames(sent)
    assert encoding is None  # the frames are compressed already
    got = wire.decode_batch(body, encoding)
    assert isinstance(got, ColumnBatch) and (got.first, got.last) == (first, 301)
    expected = as_columns(store, first, 301)
    assert got.records == expected.records
    assert (got.outcomes, list(got.outcome_ix)) == (expected.outcomes, list(expected.outcome_ix))
    assert got.rtt_ms.tobytes() == expected.rtt_ms.tobytes()


def test_records_without_a_summary_are_read_by_the_aggregator(tmp_path: Path) -> None:
    with RingStore(tmp_path / "s", StoreConfig(fsync="never")) as store:
        fill(store, 1, 1)
        fill(store, 40, 2)
        store.append_batch([(1.7e9, "ping", "10.0.0.1", ping_result(
            AGENT, "ping", "10.0.0.1", 4, 1.7e9, 2.0, None, (None,), ("no route",)).stored(
            False)[0])])  # fmt: skip
        sent = frame_batch(store, 2)
        assert sent.run.unsummarized == 1  # an uploader sends such a run as columns
        got = wire.decode_batch(*encode_frames(sent))
        assert isinstance(got, ColumnBatch)
        assert got.records == as_columns(store, 2, 42).records
        assert "no route" in (got.outcomes[got.outcome_ix[-1]].error or "")


def body_of(store: RingStore) -> dict[str, Any]:
    obj: dict[str, Any] = cbor2.loads(encode_frames(frame_batch(store, 2))[0])
    return obj


def frames_of(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        head = framing.read_head(data, pos, len(data))
        assert head is not None
        out.append(data[pos : head.end])
        pos = head.end
    return out


def _frames(change: Callable[[list[bytes]], list[bytes]]) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        obj["frames"] = b"".join(change(frames_of(obj["frames"])))
    return apply


def _flip(frames: list[bytes]) -> list[bytes]:
    bad = bytearray(frames[1])
    bad[40] ^= 0xFF
    return [frames[0], bytes(bad), *frames[2:]]


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        obj[key] = value
    return apply


def _unname(obj: dict[str, Any]) -> None:
    obj["names"] = obj["names"][3:]


def _bomb(obj: dict[str, Any]) -> None:
    """One more frame, of one record whose payload inflates beyond the body's budget."""
    frame = framing.encode_batch(obj["last"] + 1, [1.7e9], [0], 0, [], [bytes(MAX_BODY)], None)
    obj["frames"] += frame
    obj["last"] += 1


BAD: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_frames(_flip), "frames[1] (byte "),
    (_frames(lambda f: [f[0], f[1][:-1]]), "frames[1] (byte "),
    (_frames(lambda f: [f[0], *f[2:]]), "expected a frame from seq"),
    (_frames(lambda f: f[1:]), "expected a frame holding seq 2"),
    (_frames(lambda f: f[:-1]), "frames: end at seq"),
    (_frames(lambda f: [f[0], framing.encode_dict(3, b"x" * 64), *f[1:]]),
     "not a batch frame"),
    (_set("zdict", b"another dictionary"), "which zdict is not"),
    (_set("frames", b""), "frames: none"),
    (_set("frames", "text"), "frames: expected bytes"),
    (_unname, "which names does not"),
    (_set("names", [0, "ping"]), "names: 2 items"),
    (_set("names", [-1, "ping", "t"]), "names[0].id"),
    (_set("names", [True, "ping", "t"]), "names[0].id"),
    (_set("names", [0, "ping", "t\x00"]), "names[0].target"),
    (_set("names", [0, "ping", "t", 0, "ping", "u"]), "names: a series id is named twice"),
    (_set("last", 10**6), "last: "),
]


@pytest.mark.parametrize(("change", "problem"), BAD, ids=[p for _, p in BAD])
def test_a_malformed_body_is_refused_naming_the_problem(store: RingStore,
                                                        change: Callable[[dict[str, Any]], None],
                                                        problem: str) -> None:  # fmt: skip
    obj = body_of(store)
    change(obj)
    with pytest.raises(wire.BatchError) as caught:
        wire.decode_batch(cbor2.dumps(obj))
    assert problem in str(caught.value)
    assert caught.value.status == 400


def test_frames_that_inflate_beyond_the_budget_are_too_large(store: RingStore) -> None:
    obj = body_of(store)
    _bomb(obj)
    assert len(cbor2.dumps(obj)) < MAX_BODY // 100  # small on the wire
    with pytest.raises(wire.BatchError, match="send fewer records") as caught:
        wire.decode_batch(cbor2.dumps(obj))
    assert caught.value.status == 413


def test_an_empty_run_is_not_a_batch() -> None:
    empty = FrameBatch(agent=AGENT, store="0" * 32, after=0, first=1, last=0, skipped_before=0,
                       lost_total=0, sent_at=0.0, members=None, run=StoredFrames(1, 0))  # fmt: skip
    with pytest.raises(wire.BatchError, match="frames: none"):
        wire.decode_batch(encode_frames(empty)[0])
