"""The derived columns: the fast road answers exactly as the model, and refuses what it refuses."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.summary import summarize
from meshmon import results as r
from tests.test_results import ENVELOPE, samples


def expected(record: r.MonitoringResult) -> tuple[object, ...]:
    loss = record.result.loss if isinstance(record.result, r.PingResult) else (
        0.0 if record.is_successful() else 1.0)
    return (record.kind, record.is_successful(), record.response_time_ms(), loss,
            record.error_message())


@pytest.mark.parametrize("record", samples(), ids=lambda x: x.kind)
def test_every_variant_fast_and_strict(record: r.MonitoringResult) -> None:
    data = r.encode_result(record)
    assert summarize(data) == summarize(data, strict=True) == expected(record)
    # The map form (older records) answers the same.
    assert summarize(cbor2.dumps(r.to_dict(record))) == expected(record)


rtts = st.lists(st.floats(0.001, 5000, allow_nan=False), max_size=5)


@settings(max_examples=300, deadline=None)
@given(ok=st.integers(0, 5), lost=st.integers(0, 5), latencies=rtts,
       errors=st.lists(st.sampled_from(["host unreachable", "ttl exceeded"]), max_size=2,
                       unique=True))  # fmt: skip
def test_ping_fast_road_matches_the_model(ok: int, lost: int, latencies: list[float],
                                          errors: list[str]) -> None:  # fmt: skip
    latencies = latencies[:ok] + [1.0] * max(0, ok - len(latencies))
    avg = sum(latencies) / ok if ok else None
    record = r.Ping(**ENVELOPE, result=r.PingResult(ok, lost, tuple(latencies), tuple(errors),
                                                    avg, "127.0.0.1"))  # fmt: skip
    data = r.encode_result(record)
    assert summarize(data) == summarize(data, strict=True) == expected(record)


@settings(max_examples=200, deadline=None)
@given(connected=st.booleans(), rtt=st.none() | st.floats(0, 1e4, allow_nan=False),
       error=st.none() | st.text(max_size=20), status=st.none() | st.integers(100, 599))
def test_other_kinds_match_the_model(connected: bool, rtt: float | None, error: str | None,
                                     status: int | None) -> None:  # fmt: skip
    for record in (
        r.TcpConnect(**ENVELOPE, result=r.TcpConnectResult(connected, rtt, error, None)),
        r.HttpGet(**ENVELOPE, result=r.HttpGetResult(status, rtt, None, error, connected)),
        r.UdpConnect(**ENVELOPE, result=r.UdpConnectResult(connected, rtt, error, None)),
    ):
        data = r.encode_result(record)
        got = summarize(data)
        assert got == summarize(data, strict=True)
        want = expected(record)
        if want[4] is not None and "\x00" in str(want[4]):
            want = (*want[:4], str(want[4]).replace("\x00", "\N{REPLACEMENT CHARACTER}"))
        assert got == want


def _compact(record: r.MonitoringResult) -> list[object]:
    obj = cbor2.loads(r.encode_result(record))
    assert isinstance(obj, list)
    return obj


@pytest.mark.parametrize("tamper", [
    lambda o: o.__setitem__(-1, [*o[-1][:1], "3", *o[-1][2:]]),   # failures as text
    lambda o: o[-1].__setitem__(4, "fast"),                        # avg as text
    lambda o: o[-1].__setitem__(4, float("inf")),                  # avg not finite
    lambda o: o[-1].__setitem__(0, -1),                            # negative count
    lambda o: o[-1].append(1),                                     # a field from the future
    lambda o: o.__setitem__(1, "warp"),                            # unknown kind
    lambda o: o.__setitem__(0, 9),                                 # unknown version
    lambda o: o[-1].__setitem__(3, [7]),                           # errors not text
])  # fmt: skip
def test_what_the_model_refuses_the_fast_road_refuses(tamper: object) -> None:
    obj = _compact(samples()[0])
    tamper(obj)  # type: ignore[operator]
    with pytest.raises(r.ResultDecodeError):
        summarize(cbor2.dumps(obj))


def test_garbage_is_refused() -> None:
    for data in (b"", b"\xff", cbor2.dumps("ping"), cbor2.dumps([2]), cbor2.dumps({"v": 1})):
        with pytest.raises(r.ResultDecodeError):
            summarize(data)
