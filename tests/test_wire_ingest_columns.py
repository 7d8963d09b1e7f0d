"""Version 2 of the sync body (columns): round trips, and every malformed body refused naming
the column, item or field at fault."""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Callable
from typing import Any

import cbor2
import pytest

from meshmon import results as r
from meshmon.wire import columns
from meshmon.wire import ingest as wire
from tests.batches import columns as v2_batch
from tests.batches import records

STORE = "0123456789abcdef0123456789abcdef"


def lost_ping(seq: int, ts: float) -> wire.SyncRecord:
    """A ping that got no reply: no RTT (NaN in the column)."""
    result = r.Ping(agent="a1", check="ping-lan", target="10.0.0.9", family=4, started_at=ts,
                    duration_ms=3.0, result=r.PingResult(0, 3, (), (), None, "10.0.0.9"))
    return wire.SyncRecord(seq, ts, "ping-lan", "10.0.0.9", r.encode_result(result))


def sample() -> columns.ColumnBatch:
    recs = records("a1", 1, 40, 1.7e9)
    recs[5] = lost_ping(6, recs[5].ts)
    members = (wire.MemberReport("a2", "alive", 3, "127.0.0.3:7946", ("edge",), "1.0"),)
    return v2_batch("a1", STORE, recs, members=members, lost_total=2, sent_at=1.7e9 + 60)


def body(batch: columns.ColumnBatch) -> dict[str, Any]:
    """The CBOR map of a batch's body."""
    data, encoding = columns.encode_columns(batch)
    obj: dict[str, Any] = cbor2.loads(zlib.decompress(data) if encoding else data)
    return obj


def decode(obj: dict[str, Any]) -> wire.Batch | columns.ColumnBatch:
    return wire.decode_batch(cbor2.dumps(obj))


def test_a_batch_round_trips_deflated_or_not() -> None:
    batch = sample()
    data, encoding = columns.encode_columns(batch)
    assert encoding == "deflate"
    assert wire.decode_batch(data, encoding) == batch
    assert decode(body(batch)) == batch
    assert math.isnan(batch.rtt_ms[5]) and batch.count == 40


def test_the_columns_carry_what_the_aggregator_stores() -> None:
    recs = records("a1", 1, 40, 1.7e9)
    batch = v2_batch("a1", STORE, recs)
    assert batch.ts_us.tolist() == [round(rec.ts * 1e6) for rec in recs]
    for i, rec in enumerate(recs):
        result = r.decode_result(rec.payload)
        outcome = batch.outcomes[batch.outcome_ix[i]]
        loss = result.result.loss if isinstance(result.result, r.PingResult) else (
            0.0 if result.is_successful() else 1.0)  # fmt: skip
        assert outcome == (result.kind, result.is_successful(), loss, result.error_message())
        rtt = result.response_time_ms()
        assert (math.isnan(batch.rtt_ms[i]) if rtt is None else batch.rtt_ms[i] == rtt)
        assert batch.series[batch.series_ix[i]] == (rec.check, rec.target)
    assert [rec.payload for rec in batch.records] == [rec.payload for rec in recs]


def test_an_empty_batch_declares_a_gap_only() -> None:
    batch = v2_batch("a1", STORE, [], after=10)
    assert (batch.first, batch.last, batch.count) == (11, 10, 0)
    assert decode(body(batch)) == batch


def test_version_1_bodies_are_still_read() -> None:
    recs = records("a1", 1, 3, 1.7e9)
    v1 = wire.Batch("a1", STORE, 0, 1, 3, tuple(recs))
    assert wire.decode_batch(*wire.encode_batch(v1)) == v1


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj[key] = value
    return change


def _patch(key: str, fn: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj[key] = fn(obj[key])
    return change


def _packed(code: str, index: int, value: object) -> Callable[[Any], bytes]:
    def change(data: bytes) -> bytes:
        column = array(code, data)
        column[index] = value  # type: ignore[call-overload]
        return column.tobytes()
    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        del obj[key]
    return change


FAR = 300_000_000_000_000_000
"""Microseconds: the year 11,476."""


@pytest.mark.parametrize(("change", "problem"), [
    (_set("v", 4), "v: protocol version 4, this aggregator speaks 1, 2 and 3"),
    (_delete("payloads"), "payloads: missing"),
    (_set("ts", [1, 2]), "ts: expected bytes, got list"),
    (_patch("ts", lambda b: b[:-3]), "ts: 317 bytes, not a whole number of 8-byte items"),
    (_patch("ts", lambda b: b[:-8]), "ts: 39 items for the 40 records 1..40"),
    (_patch("ts", _packed("q", 3, FAR)), f"ts[3]: {FAR} µs is not a time between the years 1 "
                                        "and 9999"),
    (_patch("series", lambda s: s[:-1]), "series: 5 names, not (check, target) pairs"),
    (_patch("series", lambda s: [s[0], 7, *s[2:]]), "series[0].target: expected str, got int"),
    (_patch("series", lambda s: [*s[:2], "x\x00", *s[3:]]),
     "series[1].check: contains a NUL character"),
    (_patch("series_ix", _packed("H", 7, 9)), "series_ix[7]: 9, but the batch has 3 series"),
    (_patch("series_ix", lambda b: b + b"\0\0"), "series_ix: 41 items for the 40 records 1..40"),
    (_patch("outcomes", lambda o: [o[0][:3], *o[1:]]),
     "outcomes[0]: expected [kind, success, loss, error]"),
    (_patch("outcomes", lambda o: [["", *o[0][1:]], *o[1:]]), "outcomes[0].kind: empty"),
    (_patch("outcomes", lambda o: [["k" * 65, *o[0][1:]], *o[1:]]),
     "outcomes[0].kind: longer than 64 characters"),
    (_patch("outcomes", lambda o: [[o[0][0], 1, *o[0][2:]], *o[1:]]),
     "outcomes[0].success: expected bool, got int"),
    (_patch("outcomes", lambda o: [[*o[0][:2], 1.5, o[0][3]], *o[1:]]),
     "outcomes[0].loss: 1.5 is not a fraction between 0 and 1"),
    (_patch("outcomes", lambda o: [[*o[0][:2], "x", o[0][3]], *o[1:]]),
     "outcomes[0].loss: expected a number or null, got str"),
    (_patch("outcomes", lambda o: [[*o[0][:3], "no\x00pe"], *o[1:]]),
     "outcomes[0].error: contains a NUL character"),
    (_patch("outcome_ix", _packed("H", 2, 200)), "outcome_ix[2]: 200, but the batch has"),
    (_patch("rtt_ms", _packed("d", 4, math.inf)),
     "rtt_ms[4]: inf is not a response time (finite, or NaN for none)"),
    (_patch("payload_len", _packed("I", 0, 1)), "payload_len: the lengths add up to"),
    (_patch("payloads", lambda b: b + b"x"), "payload_len: the lengths add up to"),
    (_set("first", 0), "first: 0 must be above after (0)"),
    (_set("skipped_before", 3), "skipped_before: 3 does not match the gap between after (0) "
                                "and first (1)"),
    (_set("store", "nope"), "store: 'nope' is not a 32-character lowercase hex id"),
    (_set("agent", 5), "agent: expected str, got int"),
])  # fmt: skip
def test_a_malformed_body_is_refused_naming_the_field(change: Callable[[dict[str, Any]], None],
                                                      problem: str) -> None:  # fmt: skip
    obj = body(v2_batch("a1", STORE, records("a1", 1, 40, 1.7e9)))
    change(obj)
    with pytest.raises(wire.BatchError) as info:
        decode(obj)
    assert str(info.value).startswith(problem), str(info.value)


def test_too_many_records_are_refused_before_the_columns_are_read() -> None:
    obj = body(v2_batch("a1", STORE, records("a1", 1, 2, 1.7e9)))
    obj["last"] = wire.MAX_RECORDS + 1
    with pytest.raises(wire.BatchError) as info:
        decode(obj)
    assert str(info.value) == f"last: {wire.MAX_RECORDS + 1} records from seq 1, more than " \
                              f"{wire.MAX_RECORDS}"  # fmt: skip


def test_packed_columns_are_little_endian_on_the_wire() -> None:
    recs = records("a1", 1, 2, 1.7e9)
    obj = body(v2_batch("a1", STORE, recs))
    assert struct.unpack("<qq", obj["ts"]) == (round(recs[0].ts * 1e6), round(recs[1].ts * 1e6))
    assert obj["series"] == ["ping-lan", "10.0.0.2", "tcp-web", "10.0.0.3:443"]
