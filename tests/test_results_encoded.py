"""Results written straight in their stored form: the same bytes as the objects' encoding."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshmon import results as r
from meshmon.alerts.observe import observation
from meshmon.probes.icmp import Echo
from meshmon.probes.ping import outcome, summarize
from meshmon.results.encoded import PING, encode_ping, encoded, ping_result, stored_value

ENV = dict(agent="probe-1", check="ping-1k", target="127.1.0.1", family=4,
           started_at=1763849000.123456, duration_ms=51.25)  # fmt: skip


def by_objects(echoes: list[Echo], address: str | None = "127.1.0.1", **env: object) -> bytes:
    """What the agent stored before: the result objects, then their compact encoding."""
    fields = {**ENV, **env}
    payload = summarize(address, echoes)  # type: ignore[arg-type]
    return r.encode_result(r.Ping(**fields, result=payload))  # type: ignore[arg-type]


def directly(echoes: list[Echo], address: str | None = "127.1.0.1", **env: object) -> bytes:
    fields: dict = {**ENV, **env}  # type: ignore[type-arg]
    samples, errors = outcome(echoes)
    return encode_ping(fields["agent"], fields["check"], fields["target"], fields["family"],
                       fields["started_at"], fields["duration_ms"], address, samples, errors)


def reply(rtt: float) -> Echo:
    return Echo("reply", rtt, "127.1.0.1", None)


LOST = Echo("timeout", None, None, None)
UNREACH = Echo("unreachable", 0.4, "10.0.0.1", "host unreachable")


@pytest.mark.parametrize("echoes", [
    [reply(0.0345)], [LOST], [reply(0.0)], [reply(1234.5)], [UNREACH],
    [reply(0.1), LOST, reply(0.3)], [LOST, LOST, LOST], [UNREACH, UNREACH, LOST],
    [reply(0.1), reply(0.2), reply(0.4), reply(0.8)], [reply(0.5)] * 300,
    [Echo("send_error", None, None, "network unreachable (no route)")],
], ids=lambda e: f"{len(e)}x{e[0].kind}")  # fmt: skip
def test_the_same_bytes_as_the_objects(echoes: list[Echo]) -> None:
    data = directly(echoes)
    assert data == by_objects(echoes)
    assert r.decode_result(data) == r.decode_result(by_objects(echoes))


@pytest.mark.parametrize("env", [
    {"family": None}, {"family": 6, "target": "::1"}, {"target": "node-ä" * 20},
    {"agent": "a" * 300}, {"check": ""}, {"started_at": 0.0, "duration_ms": 0.0},
], ids=str)  # fmt: skip
def test_the_same_bytes_for_any_envelope(env: dict[str, object]) -> None:
    for echoes in ([reply(0.2)], [LOST], [reply(0.1), LOST]):
        assert directly(echoes, **env) == by_objects(echoes, **env)
    assert directly([LOST], None) == by_objects([LOST], None)


rtts = st.one_of(st.none(), st.floats(min_value=0.0, max_value=60_000.0))


@settings(max_examples=300, deadline=None)
@given(st.lists(rtts, min_size=1, max_size=40), st.sampled_from([4, 6, None]),
       st.floats(min_value=0, max_value=4e9), st.floats(min_value=0, max_value=1e6))  # fmt: skip
def test_the_same_bytes_for_any_burst(samples: list[float | None], family: int | None,
                                      started: float, duration: float) -> None:  # fmt: skip
    echoes = [LOST if s is None else reply(s) for s in samples]
    env = {"family": family, "started_at": started, "duration_ms": duration}
    assert directly(echoes, **env) == by_objects(echoes, **env)


def test_an_encoded_result_decodes_to_the_result() -> None:
    one = ping_result("probe-1", "ping-1k", "127.1.0.1", 4, 1.7e9, 2.0, "127.1.0.1", (0.25,))
    back = one.decode()
    assert isinstance(back, r.Ping) and back.result.success_latencies == (0.25,)
    assert (back.target, back.family, back.result.loss_pct) == ("127.1.0.1", 4, 0.0)


@pytest.mark.parametrize("echoes", [
    [reply(0.3)], [LOST], [UNREACH], [reply(0.1), LOST, reply(0.3)], [LOST, UNREACH],
], ids=lambda e: f"{len(e)}x{e[0].kind}")  # fmt: skip
def test_what_alert_rules_read_is_what_the_objects_say(echoes: list[Echo]) -> None:
    samples, errors = outcome(echoes)
    one = ping_result("a", "c", "t", 4, 1.7e9, 2.0, "127.0.0.1", samples, errors)
    record = r.decode_result(by_objects(echoes, "127.0.0.1", agent="a", check="c", target="t",
                                        started_at=1.7e9, duration_ms=2.0))  # fmt: skip
    assert isinstance(record, r.Ping)
    assert one.data == r.encode_result(record)
    assert (one.kind, one.check, one.started_at) == ("ping", "c", 1.7e9)
    assert (one.success, one.response_time_ms, one.loss_pct) == (
        record.is_successful(), record.response_time_ms(), record.result.loss_pct)
    assert encoded(record) == one
    other = r.TcpConnect(**ENV, result=r.TcpConnectResult(True, 1.5, None, "127.0.0.1", 22))
    assert encoded(other) == ("tcp", "ping-1k", ENV["started_at"], r.encode_result(other), True,
                              1.5, None, 0)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(rtts, min_size=1, max_size=300), st.sampled_from([4, 6, None]))
def test_the_summary_says_the_counts_and_the_mean(samples: list[float | None],
                                                  family: int | None) -> None:  # fmt: skip
    one = ping_result("a", "c", "t", family, 1.7e9, 2.0, "10.0.0.1", samples)
    got = sum(s is not None for s in samples)
    lost = len(samples) - got
    value, summary = one.stored(True)
    assert value == stored_value(one.data, True)
    if got >= 256 or lost >= 256:
        assert one.summary == 0 and summary is None
        return
    assert summary is not None and one.summary == summary[0] == PING | got << 8 | lost
    result = r.decode_result(one.data)
    assert isinstance(result, r.Ping)
    mean = result.result.avg_response_time_ms
    assert math.isnan(summary[1]) if mean is None else summary[1] == mean
    assert encoded(result) == one


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000])
@pytest.mark.parametrize("degraded", [False, True])
def test_stored_value_is_the_cbor_of_the_pair(size: int, degraded: bool) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert stored_value(data, degraded) == cbor2.dumps([data, degraded])
    assert cbor2.loads(stored_value(data, degraded)) == [data, degraded]


@pytest.mark.parametrize("echoes", [[reply(0.3)], [LOST], [reply(0.1), LOST, UNREACH]],
                         ids=lambda e: f"{len(e)}x{e[0].kind}")  # fmt: skip
def test_alert_rules_observe_an_encoded_result_as_its_objects(echoes: list[Echo]) -> None:
    samples, errors = outcome(echoes)
    one = ping_result("a", "c", "t", 4, 1.7e9, 2.0, "127.0.0.1", samples, errors)
    assert observation(one, "node-7", ("core",)) == observation(one.decode(), "node-7", ("core",))
    tls = r.TlsCertificate(**ENV, result=r.TlsCertResult(True, True, None, "CN=x", "CN=x", 1.0,
                                                        2.0, 30.0, 12.5, None, "127.0.0.1"))
    assert observation(encoded(tls), "t") == observation(tls, "t")
    assert observation(encoded(tls), "t").tls_days == 30.0
