"""The result model: success/latency/error rules and the CBOR round trip of every variant."""

from __future__ import annotations

import contextlib
import dataclasses

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon import results as r

ENVELOPE = dict(agent="a1", check="c", target="t", family=4, started_at=1.7e9, duration_ms=3.5)


def samples() -> list[r.MonitoringResult]:
    hop = r.TracerouteHop(ttl=1, addresses=("10.0.0.1",), sent=3, received=2,
                          latencies_ms=(0.5, 0.7))
    return [
        r.Ping(**ENVELOPE, result=r.PingResult(2, 1, (0.1, 0.3), (), 0.2, "127.0.0.1",
                                              samples=(0.1, None, 0.3))),
        r.Traceroute(**ENVELOPE, result=r.TracerouteResult((hop,), True, 0.6, (),
                                                           protocol="udp")),
        r.TcpConnect(**ENVELOPE, seq=7, result=r.TcpConnectResult(False, None, "refused",
                                                                  "127.0.0.1", 9)),
        r.UdpConnect(**ENVELOPE, result=r.UdpConnectResult(True, 1.5, None, "::1", 53, 2, 2,
                                                           (1.0, 2.0), 1.0)),
        r.HttpGet(**ENVELOPE, result=r.HttpGetResult(200, 12.0, 1024, None, True, "http://x/")),
        r.Plugin(**{**ENVELOPE, "family": None},
                 result=r.PluginResult("dns", "1.0", True, 4.0, None, {"answers": ["a"], "n": 1})),
        r.TlsCertificate(**ENVELOPE, result=r.TlsCertResult(True, False, "self-signed", "CN=x",
                                                            "CN=x", 1.0, 2.0, 30.0, 5.0, None,
                                                            "127.0.0.1", ("x",), "TLSv1.3")),
    ]


@pytest.mark.parametrize("record", samples(), ids=lambda x: x.kind)
def test_cbor_round_trip_every_variant(record: r.MonitoringResult) -> None:
    data = r.encode_result(record)
    back = r.decode_result(data)
    assert back == record
    assert type(back) is type(record)
    assert r.from_dict(r.to_dict(record)) == record


def test_every_variant_is_covered() -> None:
    assert {x.kind for x in samples()} == set(r.VARIANTS)


def test_ping_statistics_and_rules() -> None:
    p = r.PingResult(3, 1, (1.0, 2.0, 6.0), (), 3.0, "127.0.0.1")
    assert p.is_successful() and p.response_time_ms() == 3.0
    assert (p.min_ms, p.max_ms, p.median_ms, p.sent, p.loss) == (1.0, 6.0, 2.0, 4, 0.25)
    assert p.stddev_ms == pytest.approx(2.1602, abs=1e-3)
    lost = r.PingResult(0, 3, (), (), None, "127.0.0.1")
    assert not lost.is_successful()
    assert lost.error_message() == "no reply to 3 echo requests"
    assert lost.median_ms is None and lost.loss == 1.0 and lost.loss_pct == 100.0
    unreachable = r.PingResult(0, 1, (), ("1 host unreachable from 10.0.0.1",), None, "10.0.0.9")
    assert unreachable.error_message() == (
        "no reply to 1 echo request; 1 host unreachable from 10.0.0.1")
    partial = r.PingResult(1, 1, (2.0,), ("1 host unreachable from 10.0.0.1",), 2.0, "10.0.0.9")
    assert partial.error_message() == "1 host unreachable from 10.0.0.1"


@pytest.mark.parametrize(("rtts", "sent", "expect"), [
    # rtts, sent, (min, median, max, stddev, jitter, loss %)
    ((), 0, (None, None, None, None, None, None)),
    ((), 4, (None, None, None, None, None, 100.0)),
    ((5.0,), 1, (5.0, 5.0, 5.0, 0.0, None, 0.0)),
    ((1.0, 3.0), 4, (1.0, 2.0, 3.0, 1.0, 2.0, 50.0)),
    ((1.0, 2.0, 6.0), 4, (1.0, 2.0, 6.0, 2.1602, 2.5, 25.0)),
    ((4.0, 1.0, 4.0, 1.0), 4, (1.0, 2.5, 4.0, 1.5, 3.0, 0.0)),
])  # fmt: skip
def test_ping_statistics_table(rtts: tuple[float, ...], sent: int,
                               expect: tuple[float | None, ...]) -> None:
    avg = sum(rtts) / len(rtts) if rtts else None
    p = r.PingResult(len(rtts), sent - len(rtts), rtts, (), avg, "127.0.0.1")
    got = (p.min_ms, p.median_ms, p.max_ms, p.stddev_ms, p.jitter_ms, p.loss_pct)
    assert got == pytest.approx(expect, abs=1e-3)


def test_ping_statistics_are_in_the_encoded_record() -> None:
    rec = samples()[0]
    fields = r.to_dict(rec)["result"]
    assert fields["min_ms"] == 0.1 and fields["max_ms"] == 0.3 and fields["median_ms"] == 0.2
    assert fields["jitter_ms"] == pytest.approx(0.2)
    assert fields["loss_pct"] == pytest.approx(33.33, abs=0.01)
    assert fields["stddev_ms"] == pytest.approx(0.1)


def test_ping_record_stored_by_an_older_version_decodes_with_statistics() -> None:
    old = {"v": 1, "kind": "ping", **ENVELOPE, "seq": 3,
           "result": {"successes": 2, "failures": 2, "success_latencies": [1.0, 3.0],
                      "errors": [], "avg_response_time_ms": 2.0, "resolved_ip": "10.0.0.1",
                      "samples": [1.0, None, 3.0, None]}}
    back = r.decode_result(cbor2.dumps(old))
    assert isinstance(back, r.Ping) and back.seq == 3
    res = back.result
    assert (res.min_ms, res.median_ms, res.max_ms, res.stddev_ms, res.jitter_ms, res.loss_pct) == (
        1.0, 2.0, 3.0, 1.0, 2.0, 50.0)
    assert r.decode_result(r.encode_result(back)) == back
    oldest = {**old, "result": {k: v for k, v in old["result"].items() if k != "samples"}}
    assert r.decode_result(cbor2.dumps(oldest)).result.loss_pct == 50.0


def test_envelope_delegates_and_seq_assignment() -> None:
    rec = samples()[2]
    assert not rec.is_successful() and rec.error_message() == "refused"
    assert rec.response_time_ms() is None
    stored = dataclasses.replace(samples()[0], seq=42)
    assert r.decode_result(r.encode_result(stored)).seq == 42


def test_tls_rules() -> None:
    base = r.TlsCertResult(True, True, None, "CN=a", "CN=ca", 0.0, 1.0, 5.0, 3.0, None, "::1",
                           min_days=10.0)
    assert not base.is_successful()
    assert "expires in 5.0 days" in (base.error_message() or "")
    ok = dataclasses.replace(base, min_days=1.0)
    assert ok.is_successful() and ok.error_message() is None


@pytest.mark.parametrize("bad", [
    b"", b"\xff\xff", cbor2.dumps([1, 2]), cbor2.dumps({"v": 99, "kind": "ping"}),
    cbor2.dumps({"v": 1, "kind": "nope"}),
    cbor2.dumps({**r.to_dict(samples()[0]), "agent": 5}),
    cbor2.dumps({**r.to_dict(samples()[0]), "extra": 1}),
    cbor2.dumps({**r.to_dict(samples()[0]), "family": 5}),
    cbor2.dumps({**r.to_dict(samples()[0]), "duration_ms": float("nan")}),
    cbor2.dumps({**r.to_dict(samples()[0]), "result": {"successes": True}}),
    cbor2.dumps({k: v for k, v in r.to_dict(samples()[0]).items() if k != "target"}),
])
def test_malformed_input_raises_one_clear_error(bad: bytes) -> None:
    with pytest.raises(r.ResultDecodeError):
        r.decode_result(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(r.ResultDecodeError):
        r.decode_result(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_fields_raise_decode_error_or_decode(data: st.DataObject) -> None:
    base = r.to_dict(data.draw(st.sampled_from(samples())))
    key = data.draw(st.sampled_from(sorted(base)))
    base[key] = data.draw(st.one_of(st.none(), st.integers(), st.text(), st.booleans(),
                                    st.floats(), st.lists(st.integers(), max_size=2)))
    try:
        out = r.from_dict(base)
    except r.ResultDecodeError:
        return
    assert isinstance(out, r.MonitoringResult)


def test_encoded_keys_match_the_specification() -> None:
    udp = r.to_dict(samples()[3])["result"]
    assert "response_time_ms" in udp and "response_time_ms_" not in udp
    http = r.to_dict(samples()[4])["result"]
    assert {"status_code", "response_time_ms", "response_size_bytes", "error",
            "success"} <= set(http)
    ping = r.to_dict(samples()[0])["result"]
    assert {"successes", "failures", "success_latencies", "errors", "avg_response_time_ms",
            "resolved_ip"} <= set(ping)
    assert {"agent", "check", "target", "family", "started_at", "duration_ms",
            "seq"} <= set(r.to_dict(samples()[0]))


@pytest.mark.parametrize("record", samples(), ids=lambda x: x.kind)
def test_compact_form_is_what_the_store_keeps_and_maps_still_decode(
        record: r.MonitoringResult) -> None:  # fmt: skip
    compact = r.encode_result(record)
    as_map = cbor2.dumps(r.to_dict(record))
    assert cbor2.loads(compact)[:2] == [r.COMPACT_VERSION, record.kind]
    assert len(compact) < len(as_map)  # no field names per record
    assert r.decode_result(compact) == r.decode_result(as_map) == record


def test_compact_arrays_from_an_older_writer_fill_defaults() -> None:
    # a version-2 array written before the ping statistics existed: the payload stops after
    # resolved_ip, and the statistics are derived as for old maps
    envelope = [ENVELOPE[k] for k in ("agent", "check", "target", "family", "started_at",
                                      "duration_ms")]  # fmt: skip
    short = [r.COMPACT_VERSION, "ping", *envelope, None,
             [2, 2, [1.0, 3.0], [], 2.0, "10.0.0.1"]]
    back = r.decode_result(cbor2.dumps(short))
    assert isinstance(back, r.Ping) and back.result.loss_pct == 50.0
    assert back.result.median_ms == 2.0


@pytest.mark.parametrize("data", [
    [r.COMPACT_VERSION],
    [3, "ping"],
    [r.COMPACT_VERSION, "nope"],
    [r.COMPACT_VERSION, "ping", "a", "c", "t", 4, 1.0, 1.0, None, "not-an-array"],
    [r.COMPACT_VERSION, "ping", "a", "c", "t", 4, 1.0, 1.0, None, [1, 0, [], [], 1.0, None],
     "one field too many"],
    [r.COMPACT_VERSION, "trace", "a", "c", "t", 4, 1.0, 1.0, None, [["not", "a", "hop"]]],
    [r.COMPACT_VERSION, "ping", 5, "c", "t", 4, 1.0, 1.0, None, [1, 0, [], [], 1.0, None]],
])  # fmt: skip
def test_malformed_compact_arrays_are_refused(data: list[object]) -> None:
    with pytest.raises(r.ResultDecodeError):
        r.decode_result(cbor2.dumps(data))
