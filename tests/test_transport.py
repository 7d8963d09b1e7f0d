"""The mesh transport over real UDP and mTLS sockets on 127.0.0.x, and the in-memory one."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from meshmon import pki
from meshmon.mesh import failure_reason
from meshmon.net import (
    Datagram,
    MemoryNetwork,
    MeshTransport,
    PeerUnreachableError,
    RemoteError,
    TransportConfig,
    connect_mtls,
    open_transport,
)
from meshmon.net.frames import encode
from meshmon.wire import MAX_PLAINTEXT, Keyring
from tests.conftest import Mesh


@asynccontextmanager
async def transports(mesh: Mesh, *names: str, base: int = 40) -> AsyncIterator[
    list[MeshTransport]
]:  # fmt: skip
    async with AsyncExitStack() as stack:
        out = []
        for i, name in enumerate(names):
            identity, trust = mesh.identity(mesh.node(name))
            config = TransportConfig(host=f"127.0.0.{base + i}", udp_port=0)
            out.append(await stack.enter_async_context(open_transport(identity, trust, config)))
        yield out


async def test_datagrams_flow_after_automatic_key_exchange(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "a", "b", "c") as (a, b, c):
            assert a.tcp_address[1] == a.udp_address[1]  # one port number for both
            for i in range(3):
                await a.send_datagram(b.udp_address, b"ping %d" % i)  # queued, then exchanged
            got = [await b.datagrams.receive() for _ in range(3)]
            assert got == [Datagram("a", a.udp_address, 0, b"ping %d" % i) for i in range(3)]
            # hello taught b who a is: b answers at once, with no exchange of its own
            assert b.keyring.peer("a") is not None
            await b.send_datagram(a.udp_address, b"ack")
            assert await a.datagrams.receive() == Datagram("b", b.udp_address, 0, b"ack")
            # another purpose goes to its own channel; the largest plaintext fits
            echo = c.channel(9)
            await a.send_datagram(c.udp_address, bytes(MAX_PLAINTEXT), purpose=9)
            assert (await echo.receive()).plaintext == bytes(MAX_PLAINTEXT)
            assert not (a.drops + b.drops + c.drops)


async def test_requests_over_mtls(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "p", "q", base=50) as (p, q):

            async def push_pull(peer: pki.PeerIdentity, body: bytes) -> bytes:
                return peer.name.encode() + b":" + body[::-1]

            async def broken(peer: pki.PeerIdentity, body: bytes) -> bytes:
                raise ValueError("state is inconsistent")

            async def stuck(peer: pki.PeerIdentity, body: bytes) -> bytes:
                await trio.sleep_forever()
                raise AssertionError

            q.on_request("push-pull", push_pull)
            q.on_request("broken", broken)
            q.on_request("stuck", stuck)
            big = os.urandom(1_000_000)
            assert await p.request(q.tcp_address, "push-pull", big) == b"p:" + big[::-1]
            assert await p.request(q.tcp_address, "ping", b"tcp ping") == b"tcp ping"
            with pytest.raises(RemoteError, match="unknown request kind 'nope'"):
                await p.request(q.tcp_address, "nope", b"")
            with pytest.raises(RemoteError, match="ValueError: state is inconsistent"):
                await p.request(q.tcp_address, "broken", b"")
            with pytest.raises(PeerUnreachableError, match="no answer to 'stuck'"):
                await p.request(q.tcp_address, "stuck", b"", timeout=0.5)
            closed = ("127.0.0.59", 9)
            with pytest.raises(PeerUnreachableError, match="cannot connect"):
                await p.request(closed, "ping", b"")

            # a frame that breaks the protocol gets an error answer, not a crash
            conn = await connect_mtls(*q.tcp_address, pki.client_context(p.identity, p.trust),
                                      p.trust)  # fmt: skip
            await conn.stream.send_all(encode({"v": 99, "kind": "ping", "body": b""}))
            answer = await conn.stream.receive_some(1000)
            assert b"unsupported request version" in answer
            await conn.aclose()
            assert await p.request(q.tcp_address, "ping", b"still") == b"still"


async def test_garbage_and_replays_are_counted_and_harmless(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "g1", "g2", base=60) as (g1, g2):
            await g1.send_datagram(g2.udp_address, b"hello")
            assert (await g2.datagrams.receive()).plaintext == b"hello"
            # an attacker's socket: captured datagram of g1 (sealed by a copy of its keyring)
            spy = Keyring(g1.identity, g1.trust)
            now = time.time()
            spy.add_peer(g2.identity.certificate, now)
            captured = spy.seal("g2", b"captured", now + 1)
            tampered = bytearray(captured)
            tampered[-1] ^= 1
            bad = [os.urandom(5), os.urandom(200), bytes(2000), captured[:30], bytes(tampered),
                   b"\x01" + os.urandom(100)]  # fmt: skip
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.69", 0))
                for d in bad:
                    await sock.sendto(d, g2.udp_address)
                await sock.sendto(captured, g2.udp_address)
                first = await g2.datagrams.receive()
                assert (first.sender, first.plaintext) == ("g1", b"captured")
                await sock.sendto(captured, g2.udp_address)  # replay
                await g1.send_datagram(g2.udp_address, b"after")
                assert (await g2.datagrams.receive()).plaintext == b"after"
            assert g2.drops["replay"] == 1
            assert g2.drops["truncated"] == 2  # 5 bytes, 30 bytes
            assert g2.drops["oversized"] == 1
            assert g2.drops["auth"] == 1
            assert g2.drops["unknown_sender"] + g2.drops["version"] == 2
            assert g2.datagrams.statistics().current_buffer_used == 0


async def test_revoked_node_is_cut_off(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "r1", "r2", "bad", base=70) as (r1, r2, bad):
            await bad.send_datagram(r1.udp_address, b"hi")
            assert (await r1.datagrams.receive()).sender == "bad"
            pki.revoke(mesh.ca_dir, "bad")
            crl = pki.Trust.from_files(mesh.ca_cert, mesh.crl).crl
            assert r1.trust.update_crl(crl)
            await bad.send_datagram(r1.udp_address, b"still here")  # bad knows r1's key
            await r2.send_datagram(r1.udp_address, b"marker")
            assert (await r1.datagrams.receive()).sender == "r2"  # bad's datagram was dropped
            assert r1.drops["revoked"] == 1
            assert r1.refresh_trust() == ["bad"]
            await r1.send_datagram(bad.udp_address, b"no")  # no key: exchange, which fails
            await r1.wait_exchange(bad.udp_address)
            assert r1.drops["exchange_failed"] == 1
            assert r1.keyring.peer("bad") is None
            with pytest.raises(PeerUnreachableError):  # fresh server context: new CRL applies
                await bad.request(r1.tcp_address, "ping", b"")
            with pytest.raises(PeerUnreachableError):  # and we refuse to talk to it
                await r1.request(bad.tcp_address, "ping", b"")


async def test_unreachable_peer_drops_queued_datagrams(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "lonely", base=80) as (t,):
            nowhere = ("127.0.0.89", 9)
            await t.send_datagram(nowhere, b"1")
            await t.send_datagram(nowhere, b"2")
            await t.wait_exchange(nowhere)
            assert t.drops["exchange_failed"] == 2
            await t.send_datagram(nowhere, b"3")  # inside the backoff: dropped at once
            assert t.drops["exchange_failed"] == 3


async def test_memory_transport() -> None:
    net = MemoryNetwork()
    a = net.transport("a", ("10.0.0.1", 7946))
    b = net.transport("b", ("10.0.0.2", 7946))

    async def hello(peer: pki.PeerIdentity, body: bytes) -> bytes:
        return b"hi " + peer.name.encode()

    b.on_request("hello-user", hello)
    await a.send_datagram(b.udp_address, b"x")
    assert await b.datagrams.receive() == Datagram("a", a.udp_address, 0, b"x")
    assert await a.request(b.tcp_address, "hello-user", b"") == b"hi a"
    net.blocked.add(("udp", a.udp_address, b.udp_address))
    await a.send_datagram(b.udp_address, b"lost")
    assert a.dropped == 1
    assert await a.request(b.tcp_address, "ping", b"tcp ok") == b"tcp ok"
    with pytest.raises(RemoteError):
        await a.request(b.tcp_address, "nope", b"")
    net.blocked.add(("tcp", a.tcp_address, b.tcp_address))
    with pytest.raises(PeerUnreachableError):
        await a.request(b.tcp_address, "ping", b"")


async def test_peers_that_met_over_mtls_exchange_datagrams_without_hello(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "j", "k", "l", base=60) as (j, k, l_):
            hellos: list[str] = []
            for t in (j, k, l_):
                original = t._handlers["hello"]

                async def counting(peer: pki.PeerIdentity, body: bytes, t: MeshTransport = t,
                                   original=original) -> bytes:  # type: ignore[no-untyped-def]
                    hellos.append(f"{peer.name}->{t.name}")
                    return await original(peer, body)

                t.on_request("hello", counting)
            # a join's push-pull: both ends now hold each other's certificate
            assert await j.request(k.tcp_address, "ping", b"join") == b"join"
            # the members' proven announcements name them: no hello either way
            j.learn_peer(k.udp_address, k.tcp_address, "k")
            k.learn_peer(j.udp_address, j.tcp_address, "j")
            await j.send_datagram(k.udp_address, b"to k")
            assert await k.datagrams.receive() == Datagram("j", j.udp_address, 0, b"to k")
            await k.send_datagram(j.udp_address, b"to j")
            assert await j.datagrams.receive() == Datagram("k", k.udp_address, 0, b"to j")
            # a member never met still gets a hello first (it must learn our certificate)
            j.learn_peer(l_.udp_address, l_.tcp_address, "l")
            await j.send_datagram(l_.udp_address, b"to l")
            assert await l_.datagrams.receive() == Datagram("j", j.udp_address, 0, b"to l")
            assert hellos == ["j->l"]
            assert not (j.drops + k.drops + l_.drops)


async def test_drain_routes_what_waits_in_the_socket_without_waiting(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "p", "q", base=90) as (p, q):
            await p.send_datagram(q.udp_address, b"hello first")  # keys exchanged both ways
            assert (await q.datagrams.receive()).plaintext == b"hello first"
            sealed = [p.keyring.seal("q", b"late %d" % i, time.time()) for i in range(3)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.bind((p.udp_address[0], 0))
                for data in sealed:  # loopback delivers before sendto returns
                    sender.sendto(data, q.udp_address)
            # no checkpoint since: q's receive task has not run, drain() reads them now
            assert q.drain() == 3
            got = [q.datagrams.receive_nowait().plaintext for _ in range(3)]
            assert got == [b"late 0", b"late 1", b"late 2"]
            assert q.drain() == 0


async def test_drain_after_the_transport_stopped_reads_nothing(mesh: Mesh) -> None:
    with trio.fail_after(20):
        async with transports(mesh, "r", base=93) as (r,):
            pass
        assert r.drain() == 0  # the socket is closed: no error loop, nothing routed


async def test_failed_requests_say_why_in_one_word(mesh: Mesh) -> None:
    async def stuck(peer: pki.PeerIdentity, body: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def broken(peer: pki.PeerIdentity, body: bytes) -> bytes:
        raise ValueError("the handler failed")

    with trio.fail_after(20):
        async with transports(mesh, "a", "b", base=46) as (a, b):
            b.on_request("stuck", stuck)
            b.on_request("broken", broken)
            closed = socket.socket()
            closed.bind(("127.0.0.48", 0))  # bound, never listening: the connect is refused
            reasons = []
            for addr, kind in [(closed.getsockname(), "ping"), (b.tcp_address, "stuck"),
                               (b.tcp_address, "broken")]:  # fmt: skip
                try:
                    await a.request(addr, kind, b"x", timeout=0.5)
                except (PeerUnreachableError, RemoteError) as exc:
                    reasons.append(failure_reason(exc))
            closed.close()
    assert reasons == ["refused", "timeout", "remote_error"]
