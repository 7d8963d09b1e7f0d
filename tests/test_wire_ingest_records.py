"""Decoding a batch's records: well-formed records take the fast road and decode exactly as
before; anything else is refused naming the record and the field."""

from __future__ import annotations

import cbor2
import pytest

from meshmon.wire import ingest as wire

STORE = "0" * 32


def body(records: list[object]) -> bytes:
    return cbor2.dumps({"v": 1, "agent": "a1", "store": STORE, "after": 0, "first": 1,
                        "last": len(records), "skipped_before": 0, "lost_total": 0,
                        "sent_at": 1.0, "records": records, "members": None})  # fmt: skip


def test_round_trip_and_integer_times() -> None:
    recs = tuple(wire.SyncRecord(i, 1.7e9 + i / 7, "ping", f"10.0.0.{i}", i.to_bytes(2, "big"))
                 for i in range(1, 300))  # fmt: skip
    batch = wire.Batch("a1", STORE, 0, 1, 299, recs)
    encoded, encoding = wire.encode_batch(batch)
    assert wire.decode_batch(encoded, encoding) == batch
    decoded = wire.decode_batch(body([[1, 1700000000, "c", "t", b"x"]]))
    assert decoded.records[0].ts == 1.7e9 and type(decoded.records[0].ts) is float


@pytest.mark.parametrize(("record", "problem"), [
    ([True, 1.0, "c", "t", b"x"], "records[1].seq: expected int, got bool"),
    ([2.0, 1.0, "c", "t", b"x"], "records[1].seq: expected int, got float"),
    ([2, True, "c", "t", b"x"], "records[1].ts: expected int or float, got bool"),
    ([2, 1.0, 3, "t", b"x"], "records[1].check: expected str, got int"),
    ([2, 1.0, "c", None, b"x"], "records[1].target: expected str, got NoneType"),
    ([2, 1.0, "c", "t", "x"], "records[1].payload: expected bytes, got str"),
    ([2, 1.0, "c", "t"], "records[1]: expected [seq, ts, check, target, payload]"),
    ({"seq": 2}, "records[1]: expected [seq, ts, check, target, payload]"),
])  # fmt: skip
def test_a_bad_record_is_named(record: object, problem: str) -> None:
    with pytest.raises(wire.BatchError) as info:
        wire.decode_batch(body([[1, 1.0, "c", "t", b"x"], record]))
    assert str(info.value) == problem
