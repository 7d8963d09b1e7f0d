"""TCP, UDP, HTTP(S) and TLS probes through run_probe against real local servers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

from meshmon import results as r
from meshmon.probes import ProbeContext, UdpCodec, UdpEchoResponder, run_probe
from tests.conftest import Mesh

CTX = ProbeContext(agent="node-a", check="chk")
Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def one(kind: str, target: str, params: dict[str, Any] | None = None,
              limit: float = 2.0) -> r.MonitoringResult:
    with trio.fail_after(limit + 1):  # every result must come within the timeout
        out = await run_probe(kind, target, params or {}, limit, CTX)
    assert len(out) == 1
    assert out[0].agent == "node-a" and out[0].check == "chk" and out[0].target == target
    assert out[0].duration_ms >= 0
    assert r.decode_result(r.encode_result(out[0])) == out[0]
    return out[0]


def closed_port(family: int = socket.AF_INET) -> int:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def serve(nursery: trio.Nursery, handler: Handler, host: str = "127.0.0.1",
                ssl_ctx: ssl.SSLContext | None = None) -> int:
    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]

    async def wrapped(stream: trio.SocketStream) -> None:
        s: trio.abc.Stream = stream
        try:
            if ssl_ctx is not None:
                s = trio.SSLStream(stream, ssl_ctx, server_side=True)
                await s.do_handshake()
            await handler(s)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    nursery.start_soon(trio.serve_listeners, wrapped, listeners)
    return port


async def hold(stream: trio.abc.Stream) -> None:
    await trio.sleep_forever()  # accepts and never answers


async def http_handler(stream: trio.abc.Stream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        data += chunk
    path = data.split(b" ")[1].decode()
    if path == "/hang":
        await trio.sleep_forever()
    status, body, extra = {
        "/": ("200 OK", b"hello meshmon " * 100, ""),
        "/missing": ("404 Not Found", b"no", ""),
        "/redir": ("302 Found", b"", "Location: /\r\n"),
        "/loop": ("302 Found", b"", "Location: /loop\r\n"),
    }.get(path, ("500 Oops", b"", ""))
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    await stream.send_all(head.encode() + body)
    await stream.aclose()


# -- TCP --------------------------------------------------------------------------------------


async def test_tcp_connect_open_closed_and_silent(nursery: trio.Nursery) -> None:
    port = await serve(nursery, hold)
    ok = await one("tcp", f"127.0.0.1:{port}")
    assert isinstance(ok, r.TcpConnect) and ok.is_successful() and ok.family == 4
    assert ok.result.resolved_ip == "127.0.0.1" and ok.response_time_ms() is not None
    bad = await one("tcp", "127.0.0.1", {"port": closed_port()})
    assert not bad.is_successful() and "refused" in (bad.error_message() or "")


async def test_tcp_ipv6_and_family_is_recorded(nursery: trio.Nursery) -> None:
    port = await serve(nursery, hold, host="::1")
    res = await one("tcp", f"[::1]:{port}")
    assert res.is_successful() and res.family == 6
    wrong = await one("tcp", f"[::1]:{port}", {"family": 4})
    assert not wrong.is_successful() and "IPv6 address but the check asks for IPv4" in (
        wrong.error_message() or "")


async def test_unresolvable_name_gives_error_result_for_every_kind() -> None:
    # "a%b.test" fails in the resolver itself: no DNS query leaves the machine. (An http URL
    # cannot carry it, and any name it can carry would be asked of the DNS: http is left out.)
    for kind, target in (("tcp", "a%b.test:80"), ("udp", "a%b.test:53"), ("tls", "a%b.test"),
                         ("ping", "a%b.test"), ("trace", "a%b.test")):
        res = await one(kind, target, {"protocol": "udp"} if kind == "trace" else {})
        assert res.kind == kind and not res.is_successful(), kind
        assert "resolve" in (res.error_message() or ""), (kind, res.error_message())


async def test_bad_params_give_error_result_not_exception() -> None:
    res = await one("tcp", "127.0.0.1")
    assert "needs a port" in (res.error_message() or "")
    res = await one("udp", "127.0.0.1:9", {"mode": "bogus"})
    assert "params.mode" in (res.error_message() or "")
    res = await one("ping", "127.0.0.1", {"family": "7"})
    assert "params.family" in (res.error_message() or "")


# -- UDP --------------------------------------------------------------------------------------


async def udp_server(nursery: trio.Nursery, reply: bytes | None) -> int:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def run() -> None:
        with sock:
            while True:
                data, peer = await sock.recvfrom(2048)
                if reply is not None:
                    await sock.sendto(reply + data, peer)

    nursery.start_soon(run)
    return int(sock.getsockname()[1])


async def test_udp_payload_mode_reply_expect_closed_and_silent(nursery: trio.Nursery) -> None:
    port = await udp_server(nursery, b"pong:")
    res = await one("udp", f"127.0.0.1:{port}", {"payload": "hi", "expect": "^pong:hi"})
    assert isinstance(res, r.UdpConnect) and res.is_successful()
    assert res.result.received == 1 and res.response_time_ms() is not None
    mismatch = await one("udp", f"127.0.0.1:{port}", {"expect": "^nope"}, limit=0.5)
    assert not mismatch.is_successful() and "did not match" in (mismatch.error_message() or "")
    closed = await one("udp", f"127.0.0.1:{closed_port()}", limit=1.0)
    assert "port unreachable" in (closed.error_message() or "")
    silent = await udp_server(nursery, None)
    res = await one("udp", f"127.0.0.1:{silent}", limit=0.5)
    assert not res.is_successful() and "no reply within" in (res.error_message() or "")


async def test_udp_echo_between_agents_plain_and_sealed(nursery: trio.Nursery) -> None:
    plain = UdpEchoResponder("127.0.0.1", 0)
    port = await nursery.start(plain.run)
    res = await one("udp", f"127.0.0.1:{port}", {"mode": "echo", "count": 5, "interval": 0.01})
    assert res.is_successful() and isinstance(res.result, r.UdpConnectResult)
    assert (res.result.sent, res.result.received) == (5, 5)
    assert res.result.jitter_ms is not None and plain.answered == 5

    key = 0x5A

    def seal(data: bytes, peer: tuple[str, int]) -> bytes:  # a stand-in for meshmon.wire
        return b"S" + bytes(b ^ key for b in data)

    def open_(data: bytes, peer: tuple[str, int]) -> bytes | None:
        return bytes(b ^ key for b in data[1:]) if data[:1] == b"S" else None

    codec = UdpCodec(seal=seal, open=open_, name="xor-test")
    sealed = UdpEchoResponder("127.0.0.1", 0, codec=codec)
    sport = await nursery.start(sealed.run)
    ctx = ProbeContext(agent="a", check="c", udp_codec=codec)
    with trio.fail_after(3):
        (ok,) = await run_probe("udp", f"127.0.0.1:{sport}", {"mode": "echo", "count": 2,
                                                              "interval": 0.0}, 1.0, ctx)
    assert ok.is_successful() and sealed.answered == 2
    # a plain prober gets nothing back from a sealed responder (nothing reflected to strangers)
    stranger = await one("udp", f"127.0.0.1:{sport}", {"mode": "echo", "count": 1}, limit=0.3)
    assert not stranger.is_successful() and sealed.dropped == 1


# -- HTTP -------------------------------------------------------------------------------------


async def test_http_status_size_timings_and_validators(nursery: trio.Nursery) -> None:
    port = await serve(nursery, http_handler)
    base = f"http://127.0.0.1:{port}"
    ok = await one("http", base + "/", {"body_regex": "hello meshmon"})
    assert isinstance(ok.result, r.HttpGetResult) and ok.is_successful() and ok.family == 4
    assert ok.result.status_code == 200 and ok.result.response_size_bytes == 1400
    assert ok.result.connect_time_ms is not None and ok.result.first_byte_ms is not None
    assert ok.result.connect_time_ms <= ok.result.first_byte_ms <= (ok.response_time_ms() or 0)
    missing = await one("http", base + "/missing")
    assert not missing.is_successful() and "status 404, expected 200-399" in (
        missing.error_message() or "")
    expected = await one("http", base + "/missing", {"expect_status": [404]})
    assert expected.is_successful()
    body = await one("http", base + "/", {"body_regex": "^absent$"})
    assert "body does not match" in (body.error_message() or "")


async def test_http_over_ipv6_and_family_both(nursery: trio.Nursery) -> None:
    port = await serve(nursery, http_handler, host="::1")
    res = await one("http", f"http://[::1]:{port}/")
    assert res.is_successful() and res.family == 6
    with trio.fail_after(5):
        both = await run_probe("http", f"http://[::1]:{port}/", {"family": "both"}, 1.0, CTX)
    assert [x.family for x in both] == [4, 6]
    assert [x.is_successful() for x in both] == [False, True]
    assert "::1 is an IPv6 address: nothing to probe over IPv4" in (both[0].error_message() or "")


async def test_http_redirect_policy(nursery: trio.Nursery) -> None:
    port = await serve(nursery, http_handler)
    base = f"http://127.0.0.1:{port}"
    seen = await one("http", base + "/redir")
    assert seen.result.status_code == 302 and seen.is_successful()  # type: ignore[union-attr]
    followed = await one("http", base + "/redir", {"follow_redirects": True})
    res = followed.result
    assert isinstance(res, r.HttpGetResult)
    assert res.status_code == 200 and res.redirects == 1 and res.final_url == base + "/"
    loop = await one("http", base + "/loop", {"follow_redirects": True, "max_redirects": 3})
    assert "too many redirects" in (loop.error_message() or "")


async def test_http_closed_port_and_silent_server(nursery: trio.Nursery) -> None:
    refused = await one("http", f"http://127.0.0.1:{closed_port()}/")
    assert "refused" in (refused.error_message() or "")
    port = await serve(nursery, http_handler)
    hang = await one("http", f"http://127.0.0.1:{port}/hang", limit=0.5)
    assert not hang.is_successful()
    assert "timed out after 0.5s during receive response headers" in (hang.error_message() or "")


def server_ctx(mesh: Mesh, days: int = 30, not_before: dt.datetime | None = None,
               ips: tuple[str, ...] = ("127.0.0.1", "::1")) -> ssl.SSLContext:
    node = mesh.node(f"web{days}", ips=ips, days=days, not_before=not_before)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(node.cert, node.key)
    return ctx


async def test_https_with_test_ca(nursery: trio.Nursery, mesh: Mesh) -> None:
    port = await serve(nursery, http_handler, ssl_ctx=server_ctx(mesh))
    url = f"https://127.0.0.1:{port}/"
    ok = await one("http", url, {"ca_file": str(mesh.ca_cert)})
    assert ok.is_successful() and ok.result.status_code == 200  # type: ignore[union-attr]
    untrusted = await one("http", url)
    assert "certificate" in (untrusted.error_message() or "").lower()
    insecure = await one("http", url, {"verify_tls": False})
    assert insecure.is_successful()


# -- TLS certificate --------------------------------------------------------------------------


async def test_tls_certificate_verified_and_days_to_expiry(nursery: trio.Nursery,
                                                           mesh: Mesh) -> None:
    port = await serve(nursery, hold, ssl_ctx=server_ctx(mesh, days=30))
    res = await one("tls", f"127.0.0.1:{port}", {"ca_file": str(mesh.ca_cert), "min_days": 7})
    tls = res.result
    assert isinstance(res, r.TlsCertificate) and isinstance(tls, r.TlsCertResult)
    assert res.is_successful() and tls.verified and tls.verify_error is None, tls
    assert tls.days_to_expiry is not None and 29.9 < tls.days_to_expiry <= 30.01
    assert "web30" in (tls.subject or "") and "mesh CA" in (tls.issuer or "")
    assert "127.0.0.1" in tls.san and tls.tls_version is not None
    warn = await one("tls", f"127.0.0.1:{port}", {"ca_file": str(mesh.ca_cert),
                                                  "min_days": 60})
    assert not warn.is_successful() and "expires in" in (warn.error_message() or "")


async def test_tls_reads_certificate_even_when_verification_fails(nursery: trio.Nursery,
                                                                  mesh: Mesh) -> None:
    port = await serve(nursery, hold, ssl_ctx=server_ctx(mesh))
    unknown = await one("tls", f"127.0.0.1:{port}")  # the test CA is not trusted
    t = unknown.result
    assert isinstance(t, r.TlsCertResult)
    assert t.handshake_ok and not t.verified and "issuer" in (t.verify_error or "")
    assert t.subject is not None and t.days_to_expiry is not None
    wrong_name = await one("tls", f"127.0.0.1:{port}", {"ca_file": str(mesh.ca_cert),
                                                        "server_name": "other.example"})
    assert "other.example" in (wrong_name.error_message() or "")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    eport = await serve(nursery, hold, ssl_ctx=server_ctx(mesh, days=3, not_before=old))
    expired = await one("tls", f"127.0.0.1:{eport}", {"ca_file": str(mesh.ca_cert)})
    e = expired.result
    assert isinstance(e, r.TlsCertResult) and not e.verified
    assert "expired" in (e.verify_error or "") and e.days_to_expiry is not None
    assert -7.1 < e.days_to_expiry < -6.9


async def test_tls_closed_port_and_silent_server(nursery: trio.Nursery) -> None:
    closed = await one("tls", f"127.0.0.1:{closed_port()}")
    assert "refused" in (closed.error_message() or "")
    port = await serve(nursery, hold)  # plain TCP: accepts, never speaks TLS
    silent = await one("tls", f"127.0.0.1:{port}", limit=0.5)
    assert not silent.is_successful() and "timed out after 0.5s" in (silent.error_message() or "")


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_probe_services_start_engine_and_responder_for_an_agent(
        nursery: trio.Nursery) -> None:
    from meshmon.probes import run_probe_services

    ctx = await nursery.start(partial(run_probe_services, "node-z", echo_address="127.0.0.1",
                                      echo_port=0))
    assert ctx.agent == "node-z" and ctx.icmp is not None and ctx.echo_port
    ctx = dataclasses.replace(ctx, check="svc")
    with trio.fail_after(5):
        (ping,) = await run_probe("ping", "127.0.0.1", {"count": 1}, 1.0, ctx)
        (echo,) = await run_probe("udp", f"127.0.0.1:{ctx.echo_port}", {"mode": "echo",
                                                                      "count": 2}, 1.0, ctx)
    assert ping.is_successful() and ping.agent == "node-z" and ping.check == "svc"
    assert echo.is_successful()
