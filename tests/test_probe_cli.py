"""``meshmon probe ...`` as a user runs it: real processes against servers the test starts."""

from __future__ import annotations

import json
import socket
import ssl
import sys
from pathlib import Path

import trio

from meshmon import results as r
from tests.conftest import Mesh

ROOT = Path(__file__).resolve().parent.parent


async def meshmon(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(30):
        proc = await trio.run_process([sys.executable, "-m", "meshmon", "probe", *args],
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      cwd=ROOT)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_cli_tcp_udp_http_tls(mesh: Mesh) -> None:
    node = mesh.node("cli-web", ips=("127.0.0.1",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(node.cert, node.key)

    async def http(stream: trio.abc.Stream) -> None:
        try:
            if isinstance(stream, trio.SSLStream):
                await stream.do_handshake()
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close"
                                  b"\r\n\r\nok")
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    async def https(stream: trio.SocketStream) -> None:
        await http(trio.SSLStream(stream, server_ctx, server_side=True))

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (http, https):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            ports.append(listeners[0].socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, handler, listeners)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))

        async def udp_echo() -> None:
            while True:
                data, peer = await udp.recvfrom(2048)
                await udp.sendto(data, peer)

        nursery.start_soon(udp_echo)
        uport = udp.getsockname()[1]

        code, out, _ = await meshmon("tcp", f"127.0.0.1:{ports[0]}")
        assert code == 0 and "connected in" in out
        code, out, _ = await meshmon("udp", f"127.0.0.1:{uport}", "--payload", "hello",
                                     "--expect", "hello", "--json")
        assert code == 0 and r.from_dict(json.loads(out)).is_successful()
        code, out, _ = await meshmon("http", f"http://127.0.0.1:{ports[0]}/", "--json")
        res = r.from_dict(json.loads(out))
        assert code == 0 and isinstance(res.result, r.HttpGetResult)
        assert res.result.status_code == 200 and res.result.response_size_bytes == 2
        code, out, _ = await meshmon("http", f"https://127.0.0.1:{ports[1]}/", "--ca-file",
                                     str(mesh.ca_cert))
        assert code == 0 and "status 200" in out
        code, out, _ = await meshmon("tls", f"127.0.0.1:{ports[1]}")
        assert code == 1 and "NOT verified" in out and "CN=cli-web" in out
        assert "error: certificate not verified" in out
        code, out, _ = await meshmon("tls", f"127.0.0.1:{ports[1]}", "--ca-file",
                                     str(mesh.ca_cert), "--min-days", "1")
        assert code == 0 and "verified" in out and "expires in" in out
        code, out, _ = await meshmon("tcp", "a%b.test:80")  # fails locally: no DNS query
        assert code == 1 and "cannot resolve 'a%b.test'" in out
        nursery.cancel_scope.cancel()


async def test_cli_ping_and_trace_loopback_json() -> None:
    code, out, _ = await meshmon("ping", "127.0.0.1", "-c", "3", "-i", "0.01", "--json")
    res = r.from_dict(json.loads(out))
    assert code == 0 and isinstance(res, r.Ping) and res.result.successes == 3
    code, out, _ = await meshmon("trace", "::1", "--rounds", "2", "--json")
    res = r.from_dict(json.loads(out))
    assert code == 0 and isinstance(res, r.Traceroute) and res.family == 6
    assert res.result.target_reached and len(res.result.hops) == 1  # loopback: one hop
    code, out, _ = await meshmon("ping", "127.0.0.1", "--family", "both", "-c", "1", "--json")
    lines = [r.from_dict(json.loads(x)) for x in out.splitlines()]
    assert [x.family for x in lines] == [4, 6] and code == 1  # an IPv4 literal has no IPv6
