"""The metrics pieces on their own: the [metrics] table, the probe series counted on the hot
path, the exposition (checked by promtool), the HTTP listener on a real socket, and the
readiness rule for seeds that are this node."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from meshmon.config import config_from_dict
from meshmon.configload import ConfigError
from meshmon.metrics.config import parse_listen
from meshmon.metrics.exposition import Exposition, gauge
from meshmon.metrics.health import is_self
from meshmon.metrics.http import Response, json_response, serve_http
from meshmon.metrics.listener import listen_error
from meshmon.metrics.probes import RTT_BOUNDS_MS, ProbeSeries
from meshmon.metrics.text import probe_text
from meshmon.placement import Assignment
from meshmon.results.connect import TcpConnectResult
from meshmon.results.model import Ping, TcpConnect
from meshmon.results.ping import PingResult

# --- [metrics] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:9108", ("0.0.0.0", 9108)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::]:9108", ("::", 9108)),
    (" [::1]:9 ", ("::1", 9)),
])  # fmt: skip
def test_listen_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("0.0.0.0", "has no port"),
    ("localhost:9108", "is not an IP address"),
    ("0.0.0.0:http", "is not a number"),
    ("0.0.0.0:70000", "is not a number"),
    ("[::1:9108", "without closing it"),
])  # fmt: skip
def test_bad_listen_is_named_in_the_config(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"node": {"name": "n1"}, "listen": {"address": "127.0.0.2"},
                          "metrics": {"listen": text}}, Path("/srv"), "agent.toml")  # fmt: skip
    assert info.value.key == "metrics.listen" and words in info.value.problem
    assert str(info.value).startswith("agent.toml: metrics.listen: ")


def test_listener_is_off_unless_configured() -> None:
    config = config_from_dict({"node": {"name": "n1"}, "listen": {"address": "127.0.0.2"}},
                              Path("/srv"))  # fmt: skip
    assert config.metrics.address is None


@pytest.mark.parametrize(("code", "words"), [
    (errno.EADDRINUSE, "already in use"),
    (errno.EADDRNOTAVAIL, "not an address of this host"),
    (errno.EACCES, "CAP_NET_BIND_SERVICE"),
])  # fmt: skip
def test_bind_errors_name_the_key(code: int, words: str) -> None:
    text = listen_error(OSError(code, "the OS says no"), "metrics.listen", ("10.1.2.3", 9108))
    assert text.startswith("metrics.listen: ") and words in text and "\n" not in text


# --- the probe series --------------------------------------------------------------------------


class Stored(NamedTuple):
    """A result in its stored form, as the agent's ping batches hand them over."""

    started_at: float
    success: bool
    response_time_ms: float | None


def ping(rtt: float | None, at: float = 1000.0) -> Ping:
    result = PingResult(successes=int(rtt is not None), failures=int(rtt is None),
                        success_latencies=(rtt,) if rtt is not None else (), errors=(),
                        avg_response_time_ms=rtt, resolved_ip="10.0.0.1", samples=(rtt,))
    return Ping(agent="a", check="p", target="t", family=4, started_at=at, duration_ms=1.0,
                result=result)  # fmt: skip


def pair(series: ProbeSeries, check: str, target: str) -> list[Any]:
    return next(s for c, t, s in series.snapshot().series if (c, t) == (check, target))


def test_results_are_counted_per_pair_and_check() -> None:
    series = ProbeSeries(10)
    a, b = Assignment("p", "t1", "10.0.0.1"), Assignment("p", "t2", "10.0.0.2")
    series.record([(a, [ping(0.3, 1.0), ping(None, 2.0)], False),
                   (b, [Stored(3.0, True, 7.0)], False)])  # fmt: skip
    series.record([(a, [ping(0.1, 4.0)], False), (b, [Stored(5.0, False, None)], True)])
    s1 = pair(series, "p", "t1")
    assert s1[:5] == [2, 1, 1, 4.0, pytest.approx(0.4)]  # successes, failures, last, ts, sum
    buckets = s1[5:]
    assert buckets[RTT_BOUNDS_MS.index(0.25)] == 1 and buckets[RTT_BOUNDS_MS.index(0.5)] == 1
    assert sum(buckets) == 2
    s2 = pair(series, "p", "t2")
    assert s2[:4] == [1, 0, 1, 3.0]  # the degraded result left the pair alone ...
    assert s2[5 + RTT_BOUNDS_MS.index(10.0)] == 1
    assert series.snapshot().checks == {"p": (3, 1, 1)}  # ... and counted for the check


def test_series_are_capped_and_counted_when_dropped() -> None:
    series = ProbeSeries(2)
    items = [(Assignment("p", f"t{i}", f"10.0.0.{i}"), [Stored(1.0, i != 3, 1.0)], False)
             for i in range(5)]  # fmt: skip
    series.record(items)
    snap = series.snapshot()
    assert [t for _, t, _ in snap.series] == ["t0", "t1"]
    assert snap.dropped_results == 3 and snap.checks == {"p": (4, 1, 0)}
    # the pairs this agent no longer runs go, and free room for new ones
    assert series.prune([("p", "t1"), ("p", "t4")]) == 1
    series.record(items[4:])
    assert [t for _, t, _ in series.snapshot().series] == ["t1", "t4"]
    series.forget_checks([])
    assert series.snapshot().series == [] and series.snapshot().checks == {}


async def test_exposition_passes_promtool_and_parses_back() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus; .ci/run does)")
    series = ProbeSeries(10)
    tcp = TcpConnect(agent="a", check="web", target="db:5432", family=4, started_at=9.0,
                     duration_ms=2.0, result=TcpConnectResult(connected=True, connect_time_ms=1.5,
                                                              error=None, resolved_ip="10.0.0.9"))
    odd = 'db:5432 "quoted" back\\slash\nnewline'
    series.record([(Assignment("web", odd, "10.0.0.9"), [tcp, tcp], False),
                   (Assignment("web", "b", "10.0.0.8"), [Stored(5.0, False, None)], False),
                   (Assignment("web", "b", "10.0.0.8"), [Stored(6.0, True, 3000.0)], True)])
    snap = series.snapshot()

    async def capture() -> Any:
        return lambda: [gauge("meshmon_checks", "Checks.", 1), probe_text(snap)]

    text = await Exposition(capture).render()
    check = await trio.run_process([promtool, "check", "metrics"], stdin=text,
                                   capture_stdout=True, capture_stderr=True, check=False)
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text.decode())
               for s in family.samples}  # fmt: skip

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    # the label values survive escaping; cumulative buckets, sum and count agree
    assert value("meshmon_probe_rtt_seconds_bucket", check="web", target=odd, le="0.001") == 0
    assert value("meshmon_probe_rtt_seconds_bucket", check="web", target=odd, le="0.002") == 2
    assert value("meshmon_probe_rtt_seconds_bucket", check="web", target=odd, le="+Inf") == 2
    assert value("meshmon_probe_rtt_seconds_count", check="web", target=odd) == 2
    assert value("meshmon_probe_rtt_seconds_sum", check="web", target=odd) == pytest.approx(0.003)
    assert value("meshmon_probe_success", check="web", target=odd) == 1
    assert value("meshmon_probe_success", check="web", target="b") == 0
    assert value("meshmon_probe_last_result_timestamp_seconds", check="web", target="b") == 5.0
    assert value("meshmon_probe_results_total", check="web", target="b", result="failure") == 1
    assert value("meshmon_probe_rtt_seconds_count", check="web", target="b") == 0
    assert value("meshmon_check_results_total", check="web", result="success") == 2
    assert value("meshmon_check_results_total", check="web", result="degraded") == 1
    assert value("meshmon_probe_series") == 2 and value("meshmon_checks") == 1
    assert ("process_resident_memory_bytes", ()) in samples  # the process collector's


# --- seeds that are this node ------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "resolved", "expected"), [
    (("10.0.0.5", 7946), None, True),
    (("10.0.0.5", 7947), None, False),  # another port: another agent
    (("10.0.0.6", 7946), None, False),
    (("seed.example", 7946), ["10.0.0.5"], True),  # a one-node cluster's seed Service
    (("seed.example", 7946), ["10.0.0.5", "10.0.0.6"], False),
    (("seed.example", 7946), None, False),  # did not resolve: could be anyone
    (("fd00::5", 7946), None, True),
])  # fmt: skip
def test_a_seed_is_this_node(seed: tuple[str, int], resolved: list[str] | None,
                             expected: bool) -> None:  # fmt: skip
    assert is_self(seed, resolved, {"10.0.0.5", "fd00::5"}, 7946) is expected


# --- the listener --------------------------------------------------------------------------


async def _exchange(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_listener_routes_methods_and_keep_alive() -> None:
    calls: list[str] = []

    async def hello(request: Any) -> Response:
        calls.append(request.target.decode())
        return Response(200, b"hello\n", "text/plain")

    async def broken(request: Any) -> Response:
        raise RuntimeError("a bug")

    routes = {"/hello": hello, "/broken": broken,
              "/json": lambda _: _json({"ok": True})}  # fmt: skip
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, ("127.0.0.1", 0), routes)
            # two requests on one connection, the second one closing it
            two = await _exchange(port, b"GET /hello?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                                        b"HEAD /hello HTTP/1.1\r\nHost: a\r\n"
                                        b"Connection: close\r\n\r\n")  # fmt: skip
            assert two.count(b"HTTP/1.1 200 OK") == 2 and two.count(b"hello\n") == 1
            assert calls == ["/hello?x=1", "/hello"]
            assert b"404 Not Found" in await _exchange(port, b"GET /nope HTTP/1.0\r\n\r\n")
            assert b"405 Method Not Allowed" in await _exchange(
                port, b"POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                      b"Connection: close\r\n\r\n")  # fmt: skip
            broke = await _exchange(port, b"GET /broken HTTP/1.0\r\n\r\n")
            assert b"500 Internal Server Error" in broke and b"a bug" in broke
            assert b"400 Bad Request" in await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
            assert b'{"ok": true}' in await _exchange(port, b"GET /json HTTP/1.0\r\n\r\n")
            nursery.cancel_scope.cancel()


async def _json(body: Any) -> Response:
    return json_response(200, body)
