"""Pure parts of the probes: table tests for folding, statistics, parsing and validation."""

from __future__ import annotations

import struct
import time

import pytest

from meshmon.probes import base
from meshmon.probes.base import ParamError
from meshmon.probes.icmp import SO_TIMESTAMPNS, Echo, _Batch, _Pending, _rtt_ms, _settled
from meshmon.probes.ping import PingParams, summarize
from meshmon.probes.registry import check_params, error_payload
from meshmon.probes.traceroute import TraceParams, fold_rounds
from meshmon.probes.udp import UdpParams

T = "10.0.0.9"


def echo(kind: str, rtt: float | None, who: str | None, ttl: int, error: str | None = None
         ) -> Echo:
    return Echo(kind, rtt, who, error, ttl)


def test_fold_rounds_reached_with_ecmp_and_loss() -> None:
    rounds = [
        [echo("time_exceeded", 1.0, "10.0.0.1", 1), echo("time_exceeded", 2.0, "10.0.1.1", 2),
         echo("reply", 3.0, T, 3), echo("reply", 3.1, T, 4)],
        [echo("timeout", None, None, 1), echo("time_exceeded", 2.2, "10.0.2.1", 2),
         echo("reply", 3.2, T, 3)],
    ]
    res = fold_rounds(T, rounds, "icmp", 999.0)
    assert res.target_reached and res.errors == ()
    assert [h.ttl for h in res.hops] == [1, 2, 3]  # hops beyond the target are dropped
    assert res.hops[0].sent == 2 and res.hops[0].received == 1 and res.hops[0].loss == 0.5
    assert res.hops[1].addresses == ("10.0.1.1", "10.0.2.1")  # two paths (ECMP)
    assert res.total_time_ms == pytest.approx(3.1)


@pytest.mark.parametrize(("rounds", "hops", "error"), [
    ([[echo("timeout", None, None, t) for t in (1, 2, 3)]], 0, "no hop answered: 10.0.0.9"),
    ([[echo("time_exceeded", 1.0, "10.0.0.1", 1), echo("timeout", None, None, 2),
       echo("timeout", None, None, 3)]], 2, "target not reached; last answer from hop 1"),
    ([[echo("unreachable", 1.0, "10.0.0.1", 1, "host unreachable"),
       echo("timeout", None, None, 2)]], 2, "hop 1 (10.0.0.1): host unreachable"),
    ([[echo("send_error", None, None, 1, "network unreachable (no route)")]], 0,
     "network unreachable (no route)"),
])
def test_fold_rounds_not_reached_is_explicit(rounds: list[list[Echo]], hops: int,
                                             error: str) -> None:
    res = fold_rounds(T, rounds, "udp", 1500.0)
    assert not res.target_reached and len(res.hops) == hops
    assert any(error in e for e in res.errors), res.errors
    assert res.total_time_ms == 1500.0 and res.response_time_ms() is None


def test_udp_port_unreachable_from_target_means_reached() -> None:
    rounds = [[echo("time_exceeded", 1.0, "10.0.0.1", 1),
               echo("unreachable", 2.0, T, 2, "port unreachable")]]
    assert fold_rounds(T, rounds, "udp", 5.0).target_reached


def test_ping_summary() -> None:
    res = summarize(T, [echo("reply", 1.0, T, 0), echo("timeout", None, None, 0),
                        echo("unreachable", 0.5, "10.0.0.1", 0, "host unreachable"),
                        echo("reply", 3.0, T, 0)])
    assert (res.successes, res.failures) == (2, 2)
    assert res.samples == (1.0, None, None, 3.0) and res.avg_response_time_ms == 2.0
    assert res.errors == ("1 host unreachable from 10.0.0.1",)
    assert res.jitter_ms == 2.0 and res.loss_pct == 50.0


def test_ping_error_names_what_was_seen_and_what_was_not_whatever_the_timing() -> None:
    """Unreachables counted per responder; the loss count always leads (one shape, any mix)."""
    unreach = echo("unreachable", 0.5, "10.0.0.1", 0, "host unreachable")
    timeout = echo("timeout", None, None, 0)
    texts = {n: summarize(T, [unreach] * n + [timeout] * (5 - n)).error_message()
             for n in range(6)}
    assert texts[0] == "no reply to 5 echo requests"
    assert texts[3] == "no reply to 5 echo requests; 3 host unreachable from 10.0.0.1"
    assert texts[5] == "no reply to 5 echo requests; 5 host unreachable from 10.0.0.1"
    other = echo("unreachable", 0.5, "10.0.0.2", 0, "network unreachable")
    assert summarize(T, [unreach, other, unreach]).error_message() == (
        "no reply to 3 echo requests; 2 host unreachable from 10.0.0.1; "
        "1 network unreachable from 10.0.0.2")


def test_rtt_prefers_kernel_timestamp_but_survives_a_clock_step() -> None:
    pending = _Pending(T, 4, None, _Batch())
    pending.sent_mono = time.monotonic_ns()
    pending.sent_wall = 1_000_000_000_000
    now = pending.sent_mono + 500_000  # 0.5 ms later on the monotonic clock
    stamp = struct.pack("=qq", 1000, 100_000)  # kernel says 0.1 ms after the send
    assert _rtt_ms(pending, [(1, SO_TIMESTAMPNS, stamp)], now) == pytest.approx(0.1)
    stepped_back = struct.pack("=qq", 999, 0)  # the wall clock stepped back by 1 s
    assert _rtt_ms(pending, [(1, SO_TIMESTAMPNS, stepped_back)], now) == pytest.approx(0.5)
    stepped_fwd = struct.pack("=qq", 1060, 0)  # or forward by a minute
    assert _rtt_ms(pending, [(1, SO_TIMESTAMPNS, stepped_fwd)], now) == pytest.approx(0.5)
    assert _rtt_ms(pending, [], now) == pytest.approx(0.5)


def test_late_answer_counts_as_timeout() -> None:
    pending = _Pending(T, 4, None, _Batch())
    pending.finish(Echo("reply", 1500.0, T, None))
    assert _settled(pending, 1000.0).kind == "timeout"
    assert _settled(pending, 2000.0).kind == "reply"


@pytest.mark.parametrize(("target", "expected"), [
    ("host", ("host", None)), ("host:80", ("host", 80)), ("[::1]:443", ("::1", 443)),
    ("::1", ("::1", None)), ("fe80::1", ("fe80::1", None)), ("[::1]", ("::1", None)),
    ("https://example.org/x", ("example.org", 443)), ("http://h:8080/", ("h", 8080)),
])
def test_split_host_port(target: str, expected: tuple[str, int | None]) -> None:
    assert base.split_host_port(target, None) == expected


def test_params_validation() -> None:
    assert PingParams.from_params({}, 5.0) == PingParams(5, 0.2, 1.0)
    fitted = PingParams.from_params({"count": 3, "interval": 0.1}, 0.5)  # the burst must fit
    assert fitted.reply_timeout == pytest.approx(0.3)
    with pytest.raises(ParamError, match="does not fit"):
        PingParams.from_params({"count": 100, "interval": 1}, 5.0)
    with pytest.raises(ParamError, match=r"params\.count must be int"):
        PingParams.from_params({"count": "3"}, 5.0)
    with pytest.raises(ParamError, match=r"params\.count must be int"):
        PingParams.from_params({"count": True}, 5.0)
    assert UdpParams.from_params({"payload_hex": "00ff"}).payload == b"\x00\xff"
    assert UdpParams.from_params({"mode": "echo"}).count == 5
    with pytest.raises(ParamError, match="not hex"):
        UdpParams.from_params({"payload_hex": "zz"})
    with pytest.raises(ParamError, match=r"unknown param for a ping check; did you mean .count"):
        check_params("ping", {"cout": 3})
    check_params("myplugin", {"anything": 1})  # plugins take any params
    assert base.family_choice({"family": "IPv6"}) == "6"
    assert base.family_choice({"family": 4}) == "4"


def test_error_payloads_fail_with_the_message() -> None:
    for kind in ("ping", "trace", "tcp", "udp", "http", "tls", "plug"):
        payload = error_payload(kind, "it broke", None)
        assert not payload.is_successful()
        assert "it broke" in (payload.error_message() or ""), kind


async def test_a_malformed_url_is_an_error_result_not_an_exception() -> None:
    from meshmon.probes import ProbeContext, run_probe

    (result,) = await run_probe("http", "http://[::1", {}, 1.0, ProbeContext())
    assert not result.is_successful()
    assert result.error_message() == "target 'http://[::1' is not a valid URL (Invalid IPv6 URL)"


@pytest.mark.parametrize(("params", "timeout", "expect"), [
    # params, timeout -> (interval, spacing for 30 TTLs, spacing for 4 TTLs, reply_timeout)
    ({}, 5.0, (1.0, 1 / 30, 0.25, 1.0)),
    ({"rounds": 2, "interval": 0.5}, 5.0, (0.5, 0.5 / 30, 0.125, 1.0)),
    ({"probe_spacing": 0.01}, 5.0, (1.0, 0.01, 0.01, 1.0)),
    ({"rounds": 1, "max_hops": 3}, 1.0, (0.475, 0.475 / 30, 0.475 / 4, 0.95 - 0.475 * 2 / 3)),
    ({"reply_timeout": 0.3}, 10.0, (1.0, 1 / 30, 0.25, 0.3)),
    # a short timeout: the default interval shrinks (and the reply wait with it)
    ({}, 2.0, (0.475, 0.475 / 30, 0.475 / 4, 1.9 - 2 * 0.475 - 0.475 * 29 / 30)),
])  # fmt: skip
def test_trace_pacing_params(params: dict[str, object], timeout: float,
                             expect: tuple[float, ...]) -> None:  # fmt: skip
    tp = TraceParams.from_params(params, timeout)
    got = (tp.interval, tp.spacing(30), tp.spacing(4), tp.reply_timeout)
    assert got == pytest.approx(expect)


@pytest.mark.parametrize(("params", "timeout", "words"), [
    ({"rounds": 5, "interval": 1.0}, 5.0, "do not fit the timeout"),
    ({"probe_spacing": 0.5}, 5.0, "do not fit the timeout"),
    ({"interval": -1}, 5.0, "must be >= 0"),
    ({"protocol": "sctp"}, 5.0, "protocol icmp|udp|tcp"),
    ({"reply_timeout": 0}, 5.0, "reply_timeout must be > 0"),
])  # fmt: skip
def test_trace_params_that_cannot_work_are_refused(params: dict[str, object], timeout: float,
                                                    words: str) -> None:  # fmt: skip
    with pytest.raises(ParamError, match=words.replace("|", r"\|")):
        TraceParams.from_params(params, timeout)
