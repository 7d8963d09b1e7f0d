"""Segment format version 2 (compressed batch frames): round trips, hostile bytes, version 1
segments read after an upgrade, and what a stored result costs on disk."""

from __future__ import annotations

import logging
import random
import struct
import zlib
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon.config import StoreConfig
from meshmon.store import RingStore, StoreError, batch
from meshmon.store.format import (
    FILE_HEADER_SIZE,
    encode_file_header,
    encode_frames,
    series_key,
)
from meshmon.store.segment import segment_name

SMALL = StoreConfig(max_bytes=64 * 1024, segment_bytes=16 * 1024, fsync="batch")
KEYS = [series_key("ping", f"10.0.0.{i}") for i in range(5)]

Rec = tuple[float, bytes, bytes]
"""(ts, key, payload) as the tests feed the codec."""


def build_segment(batches: list[list[Rec]], zdict: bytes | None, seq: int = 1) -> bytes:
    """A version-2 segment body (no file header) of these batches, as the writer lays it out:
    the dictionary first, each key defined by the first frame that uses it."""
    out = [batch.encode_dict(seq, zdict)] if zdict else []
    ids: dict[bytes, int] = {}
    for recs in batches:
        base = len(ids)
        for _, key, _ in recs:
            ids.setdefault(key, len(ids))
        out.append(batch.encode_batch(
            seq, [r[0] for r in recs], [ids[r[1]] for r in recs], base, list(ids)[base:],
            [r[2] for r in recs], zdict,
        ))  # fmt: skip
        seq += len(recs)
    return b"".join(out)


def records(n: int, rng: random.Random) -> list[Rec]:
    return [(1.7e9 + i * 0.05 + rng.random() * 1e-3, rng.choice(KEYS),
             cbor2.dumps({"i": i, "lat": rng.random(), "pad": "x" * rng.randrange(40)}))
            for i in range(n)]  # fmt: skip


def expected(batches: list[list[Rec]], seq: int = 1) -> dict[int, Rec]:
    flat = [r for recs in batches for r in recs]
    return dict(zip(range(seq, seq + len(flat)), flat, strict=True))


def kept(body: bytes) -> tuple[batch.Scan, dict[int, Rec]]:
    """Scan a segment body and decode every record the scan kept, by seq."""
    res = batch.scan(body, 0, 0, len(body) + 1)
    out: dict[int, Rec] = {}
    frames = sorted(set(res.offsets))
    for off in frames:
        head = batch.read_head(body, off, len(body) + 1)
        assert head is not None
        payloads = batch.decode_payloads(body, head, res.dicts)
        assert payloads is not None  # what scan kept, a read decodes
        for k, p in enumerate(payloads):
            out[head.seq0 + k] = p  # type: ignore[assignment]
    for off, seq, ts, key in zip(res.offsets, res.seqs, res.tss, res.keys, strict=True):
        assert off in frames
        out[seq] = (ts, key, out[seq])  # type: ignore[assignment,arg-type]
    return res, out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([*KEYS, b"", series_key("\u00e9", "h\u00f6st")]),
            st.binary(max_size=300),
        ), min_size=1, max_size=40),
        min_size=1, max_size=5,
    ),
    st.one_of(st.none(), st.binary(min_size=1, max_size=2000)),
)  # fmt: skip
def test_round_trip(batches: list[list[Rec]], zdict: bytes | None) -> None:
    """Any timestamps (negative, -0.0, huge), keys and payloads come back bit for bit."""
    body = build_segment(batches, zdict)
    res, got = kept(body)
    assert res.skipped == [] and res.valid_end == len(body)
    want = expected(batches)
    assert got.keys() == want.keys()
    for seq, (ts, key, payload) in want.items():
        gts, gkey, gpayload = got[seq]
        assert struct.pack("<d", gts) == struct.pack("<d", ts)
        assert (gkey, gpayload) == (key, payload)


def assert_only_true_records(
    body: bytes, want: dict[int, Rec]
) -> tuple[batch.Scan, dict[int, Rec]]:
    res, got = kept(body)
    for seq, rec in got.items():
        assert want[seq] == rec, f"seq {seq} came back different"
    return res, got


def test_truncation_anywhere_keeps_every_whole_frame() -> None:
    rng = random.Random(1)
    batches = [records(rng.randrange(1, 30), rng) for _ in range(8)]
    body = build_segment(batches, b"".join(r[2] for r in batches[0])[-500:])
    want = expected(batches)
    ends = [h.end for h in iter_frames(body)]
    for cut in range(0, len(body) + 1, 7):
        res, got = assert_only_true_records(body[:cut], want)
        whole = max([e for e in ends if e <= cut], default=0)
        assert res.valid_end == whole  # a torn tail is exactly what recovery cuts off
        assert len(got) == sum(h.count for h in iter_frames(body) if h.end <= cut)


def iter_frames(body: bytes) -> list[batch.Head]:
    found, pos = [], 0
    while (head := batch.read_head(body, pos, len(body) + 1)) is not None:
        found.append(head)
        pos = head.end
    return found


def test_bit_flips_never_crash_and_lose_only_the_flipped_frame() -> None:
    rng = random.Random(2)
    batches = [records(rng.randrange(1, 20), rng) for _ in range(6)]
    body = build_segment(batches, None)
    want = expected(batches)
    frames = iter_frames(body)
    key_frames = {h.pos for h in frames if batch.decode_meta(body, h, {}).defs}  # type: ignore[union-attr]
    for pos in range(0, len(body), 3):
        bad = bytearray(body)
        bad[pos] ^= 1 << rng.randrange(8)
        res, got = assert_only_true_records(bytes(bad), want)
        hit = next(h for h in frames if h.pos <= pos < h.end)
        noticed = res.skipped if hit is not frames[-1] else res.valid_end == hit.pos
        assert noticed, f"a flip at {pos} went unnoticed"  # a torn tail, if in the last frame
        if hit.pos not in key_frames:  # a frame that defines no series: only its records go
            assert len(got) == len(want) - hit.count


def test_random_garbage_never_crashes_the_scanner() -> None:
    rng = random.Random(3)
    body = build_segment([records(10, rng)], None)
    for _ in range(300):
        junk = bytearray(rng.randbytes(rng.randrange(200)))
        at = rng.randrange(len(junk) + 1)
        junk[at:at] = batch.MAGIC
        batch.scan(bytes(junk) + body[: rng.randrange(len(body))], 0, 0, 10**6)


def forged(seq0: int, meta: bytes, payloads: bytes, count: int, did: int, zdict: bytes | None
           ) -> bytes:  # fmt: skip
    """A frame with a valid checksum around whatever meta the caller made up."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict or b"")
    body = comp.compress(meta + payloads) + comp.flush()
    head = batch.HEAD.pack(batch.MAGIC, len(body), seq0, count, batch.KIND_BATCH, 0,
                           len(meta), did)  # fmt: skip
    return head + body + batch.CRC.pack(zlib.crc32(body, zlib.crc32(head)))


def one_record_meta(sid: int, plen: int, defs: list[bytes], base: int = 0) -> bytes:
    lens = b"".join(struct.pack("<H", len(d)) for d in defs)
    return batch.META_HEAD.pack(base, len(defs)) + lens + b"".join(defs) + struct.pack(
        "<QHI", 0, sid, plen)  # fmt: skip


def test_bad_dictionary_and_series_references_lose_only_their_frame() -> None:
    """Frames whose checksum holds but whose content does not (hostile, or a bug): scanning
    skips each with the reason and keeps everything around it; what the scan cannot see
    without inflating payloads fails the read of those records, never the scan."""
    rng = random.Random(4)
    good = build_segment([records(5, rng)], None)  # defines series id 0 and up
    no_dict = forged(6, one_record_meta(0, 1, []), b"\x01", 1, 0xDEAD, b"zz")  # unknown dict
    undefined = forged(7, one_record_meta(9, 1, []), b"\x02", 1, 0, None)  # series 9 unknown
    redefine = forged(8, one_record_meta(0, 1, [b"other\x00key"]), b"\x03", 1, 0, None)
    garbled = forged(9, b"\x00" * 30, b"", 1, 0, None)  # meta whose lengths do not add up
    lying = forged(10, one_record_meta(0, 50, []), b"\x04", 1, 0, None)  # payload too short
    tail = batch.encode_batch(11, [1.0, 2.0], [0, 0], 5, [], [b"\x05", b"\x06"], None)
    body = good + no_dict + undefined + redefine + garbled + lying + tail
    res = batch.scan(body, 0, 0, len(body))
    whys = [s.why for s in res.skipped]
    assert len(whys) == 4 and "dictionary" in whys[0] and "never defined" in whys[1]
    assert "redefines" in whys[2] and "does not decode" in whys[3]
    assert res.seqs == [1, 2, 3, 4, 5, 10, 11, 12]
    assert res.valid_end == len(body)  # checksummed frames are not a torn tail
    heads = iter_frames(body)
    assert batch.decode_payloads(body, heads[-2], {}) is None
    assert batch.decode_payloads(body, heads[-1], {}) == [b"\x05", b"\x06"]


def test_recovery_counts_records_lost_to_a_lost_series_definition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The frame defining a series is damaged: later records of that series cannot be named,
    so they are counted as lost (never shown under a wrong name); other series are kept."""
    with RingStore(tmp_path, SMALL) as store:
        store.append(1.0, "ping", "a", b"\x01")  # frame 1 defines (ping, a)
        store.append(2.0, "ping", "b", b"\x02")  # frame 2 defines (ping, b)
        store.append_batch([(3.0, "ping", "a", b"\x03"), (4.0, "ping", "b", b"\x04")])
    seg = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    heads = [h for h in iter_frames(bytes(data[FILE_HEADER_SIZE:]))]
    second = [h for h in heads if h.kind == batch.KIND_BATCH][1]
    data[FILE_HEADER_SIZE + second.pos + batch.HEAD_SIZE + 1] ^= 0x10
    seg.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, "meshmon.store")
    with RingStore(tmp_path, SMALL) as store:
        info = store.stats().recovery
        assert [r.payload for r in store.read(1, limit=10)] == [b"\x01"]
        assert info.skipped_records == 3  # seq 2 (damaged), and seqs 3-4 in a frame naming it
        assert "never defined" in caplog.text and str(seg) in caplog.text
        assert store.append(5.0, "ping", "b", b"\x05") == 5  # a new segment, defined anew
        assert [r.payload for r in store.query(target="b")] == [b"\x05"]


def write_v1_store(
    directory: Path, n: int, per_segment: int
) -> list[tuple[float, str, str, bytes]]:
    """A store directory as the previous meshmon left it: version-1 segments."""
    directory.mkdir(parents=True, exist_ok=True)
    recs = [(1000.0 + i, "ping", f"h{i % 3}", cbor2.dumps({"i": i})) for i in range(n)]
    for first in range(1, n + 1, per_segment):
        chunk = recs[first - 1 : first - 1 + per_segment]
        keys = [series_key(c, t) for _, c, t, _ in chunk]
        buf, _ = encode_frames(first, [r[0] for r in chunk], keys, [zlib.crc32(k) for k in keys],
                               [r[3] for r in chunk])  # fmt: skip
        (directory / segment_name(first)).write_bytes(encode_file_header(first, version=1) + buf)
    return recs


def test_version_1_segments_are_read_and_never_appended_to(tmp_path: Path) -> None:
    recs = write_v1_store(tmp_path, 120, 50)
    v1_files = {p: p.read_bytes() for p in tmp_path.glob("*.seg")}
    with RingStore(tmp_path, SMALL) as store:
        assert store.stats().recovery.problems == []
        got = store.read(1, limit=1000)
        assert [(r.ts, r.check, r.target, r.payload) for r in got] == recs
        assert [r.value()["i"] for r in store.query(target="h1", limit=3)] == [118, 115, 112]
        assert sorted(r.value()["i"] for r in store.latest()) == [117, 118, 119]
        store.cursor("sync")
        assert [r.seq for r in store.read_cursor("sync", limit=2)] == [1, 2]
        assert store.append(2000.0, "ping", "h1", {"i": 120}) == 121
        assert store.get(121).value() == {"i": 120}  # type: ignore[union-attr]
    assert all(p.read_bytes() == data for p, data in v1_files.items())  # written to a v2 file
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 121 and store.stats().recovery.problems == []
        rng = random.Random(5)
        for _ in range(20):  # the ring wraps: version-1 segments leave it like any other
            store.append_batch([(1.0, "c", "t", rng.randbytes(200)) for _ in range(20)])
        assert not any(p.exists() for p in v1_files)


def test_a_segment_of_a_newer_format_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(encode_file_header(1, version=3))
    with pytest.raises(StoreError, match="version 3 is not supported"):
        RingStore(tmp_path, SMALL)
    assert (tmp_path / segment_name(1)).exists()  # left alone, not quarantined


def ping_payload(rng: random.Random, ts: float, target: str) -> bytes:
    """What the agent stores for a ping result (``[CBOR result, degraded]``), random latencies."""
    lat = [round(rng.uniform(0.2, 30.0), 3) for _ in range(3)]
    result = {"v": 1, "kind": "ping", "agent": "agent-042", "check": "ping-core",
              "target": target, "family": "ipv4", "started_at": ts,
              "duration_ms": round(rng.uniform(1, 40), 3), "seq": None,
              "result": {"successes": 3, "failures": 0, "success_latencies": lat, "errors": [],
                         "avg_response_time_ms": sum(lat) / 3, "resolved_ip": target}}  # fmt: skip
    return cbor2.dumps([cbor2.dumps(result), False])


def test_a_ping_result_costs_at_most_60_bytes_in_agent_sized_batches(tmp_path: Path) -> None:
    """A size property of the encoding (no timing): 50 results per call, as the agent's
    50 ms tick gathers at 1,000 results/s, each ~260 bytes of CBOR."""
    rng = random.Random(6)
    targets = [f"10.{i // 250}.{i % 250}.1" for i in range(500)]
    ts = 1.7e9
    with RingStore(tmp_path, StoreConfig(fsync="never")) as store:
        for b in range(200):
            rows = []
            for i in range(50):
                ts += 0.001
                target = targets[(b * 50 + i) % len(targets)]
                rows.append((ts, "ping-core", target, ping_payload(rng, ts, target)))
            store.append_batch(rows)
        st = store.stats()
        assert st.records == 10_000
        assert st.bytes / st.records <= 60
        assert store.get(10_000).payload == rows[-1][3]  # type: ignore[union-attr]


def test_reading_a_frame_record_by_record_inflates_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = batch.decode_payloads
    monkeypatch.setattr("meshmon.store.query.batch.decode_payloads",
                        lambda *a: calls.append(1) or real(*a))  # fmt: skip
    with RingStore(tmp_path, SMALL) as store:
        store.append_batch([(float(i), "c", f"t{i % 4}", {"i": i}) for i in range(40)])
        assert [store.get(s).value()["i"] for s in range(1, 41)] == list(range(40))  # type: ignore[union-attr]
        assert len(calls) == 1


def test_a_torn_batch_frame_is_cut_and_every_whole_one_kept(tmp_path: Path) -> None:
    with RingStore(tmp_path, SMALL) as store:
        store.append_batch([(float(i), "c", "t", {"i": i}) for i in range(30)])
        store.append_batch([(float(i), "c", "t", {"i": i}) for i in range(30, 60)])
    seg = sorted(tmp_path.glob("*.seg"))[0]
    data = seg.read_bytes()
    last = iter_frames(data[FILE_HEADER_SIZE:])[-1]
    half = (last.end - last.pos) // 2
    seg.write_bytes(data[: FILE_HEADER_SIZE + last.pos + half])
    with RingStore(tmp_path, SMALL) as store:
        assert store.stats().recovery.truncated_bytes == half
        assert [r.value()["i"] for r in store.read(1, limit=100)] == list(range(30))
        assert store.append(1.0, "c", "t", {"i": 30}) == 31
    with RingStore(tmp_path, SMALL) as store:
        assert len(store) == 31 and store.stats().recovery.problems == []
