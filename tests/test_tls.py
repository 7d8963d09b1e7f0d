"""Mutual TLS over real trio sockets between node identities of one mesh."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import socket
import struct
from collections.abc import Callable

import pytest
import trio

from meshmon import pki
from meshmon.net.tls import (
    MeshConnectionError,
    MtlsStream,
    PeerRejectedError,
    connect_mtls,
    serve_mtls,
)
from tests.conftest import Mesh, Node


async def start_server(
    nursery: trio.Nursery, mesh: Mesh, node: Node, seen: list[str]
) -> tuple[int, pki.Trust]:
    identity, trust = mesh.identity(node)

    async def handler(conn: MtlsStream) -> None:
        seen.append(conn.peer.name)
        data = await conn.stream.receive_some(100)
        await conn.stream.send_all(b"echo:" + data)

    listeners = await nursery.start(
        serve_mtls, handler, "127.0.0.1", 0, lambda: pki.server_context(identity, trust), trust
    )
    return listeners[0].socket.getsockname()[1], trust


async def test_two_members_talk(mesh: Mesh) -> None:
    server, client = mesh.node("server"), mesh.node("client", tags=("edge",))
    seen: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_server(nursery, mesh, server, seen)
            identity, trust = mesh.identity(client)
            conn = await connect_mtls("127.0.0.1", port, pki.client_context(identity, trust),
                                      trust, expected_name="server")
            assert conn.peer.name == "server"
            await conn.stream.send_all(b"hi")
            assert await conn.stream.receive_some(100) == b"echo:hi"
            await conn.aclose()
            nursery.cancel_scope.cancel()
    assert seen == ["client"]


async def rejected_client(mesh: Mesh, server: Node, client_identity: pki.NodeIdentity,
                          client_trust: pki.Trust, caplog: pytest.LogCaptureFixture) -> str:
    seen: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_server(nursery, mesh, server, seen)
            logged = trio.Event()
            watcher = logging.Handler()
            watcher.emit = lambda record: logged.set()  # type: ignore[method-assign]
            server_log = logging.getLogger("meshmon.net.tls")
            server_log.addHandler(watcher)
            try:
                with caplog.at_level(logging.WARNING, logger="meshmon.net.tls"):
                    with pytest.raises(PeerRejectedError) as info:
                        await connect_mtls("127.0.0.1", port,
                                           pki.client_context(client_identity, client_trust),
                                           client_trust)
                    await logged.wait()  # the server's verdict, logged as it drops the stream
            finally:
                server_log.removeHandler(watcher)
            nursery.cancel_scope.cancel()
    assert seen == []
    return str(info.value)


async def test_client_from_another_ca_is_rejected(
    make_mesh: Callable[[str], Mesh], caplog: pytest.LogCaptureFixture
) -> None:
    mesh, other = make_mesh("ours"), make_mesh("theirs")
    server = mesh.node("server")
    intruder = other.node("intruder")
    # the intruder trusts our CA (it may have stolen ca.crt) but its certificate is not ours
    identity, _ = other.identity(intruder)
    ours = pki.Trust.from_files(mesh.ca_cert, mesh.crl)
    message = await rejected_client(mesh, server, identity, ours, caplog)
    assert "peer rejected our certificate" in message
    assert "unknown ca" in message
    assert "certificate verify failed" in caplog.text
    assert "not issued by this mesh's CA" in caplog.text


async def test_expired_client_is_rejected(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    server = mesh.node("server")
    old = mesh.node("old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5))
    # build the expired identity by hand: load_identity itself refuses expired certificates
    trust = pki.Trust.from_files(mesh.ca_cert, mesh.crl)
    identity = pki.NodeIdentity(old.cert, old.key, mesh.ca_cert, mesh.crl,
                                pki.load_certificate(old.cert), pki._load_key(old.key),
                                trust.verify(pki.load_certificate(old.cert),
                                             now=dt.datetime.now(dt.UTC) - dt.timedelta(days=4.5)))
    message = await rejected_client(mesh, server, identity, trust, caplog)
    assert "certificate expired" in message
    assert "certificate has expired" in caplog.text


async def test_revoked_client_is_rejected(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    server, client = mesh.node("server"), mesh.node("client")
    identity, trust = mesh.identity(client)
    pki.revoke(mesh.ca_dir, "client")  # the server loads the new CRL when it starts
    message = await rejected_client(mesh, server, identity, trust, caplog)
    assert "revoked" in message
    assert "certificate revoked" in caplog.text


async def test_client_refuses_server_from_another_ca(make_mesh: Callable[[str], Mesh]) -> None:
    mesh, other = make_mesh("ours"), make_mesh("theirs")
    impostor = other.node("server")
    client = mesh.node("client")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_server(nursery, other, impostor, [])
            identity, trust = mesh.identity(client)
            with pytest.raises(PeerRejectedError, match="we rejected the peer's certificate"):
                await connect_mtls("127.0.0.1", port, pki.client_context(identity, trust), trust)
            nursery.cancel_scope.cancel()


async def test_wrong_node_name_is_rejected(mesh: Mesh) -> None:
    server, client = mesh.node("server"), mesh.node("client")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_server(nursery, mesh, server, [])
            identity, trust = mesh.identity(client)
            with pytest.raises(PeerRejectedError, match="expected node 'db-1'"):
                await connect_mtls("127.0.0.1", port, pki.client_context(identity, trust), trust,
                                   expected_name="db-1")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
async def test_a_peer_gone_mid_handshake_is_no_certificate_verdict(mesh: Mesh,
                                                                   reset: bool) -> None:
    """A peer killed (reset) or closing mid-handshake sent no alert: the connection broke,
    nothing was said about our certificate."""
    client = mesh.node("client")
    identity, trust = mesh.identity(client)

    async def vanish(tcp: trio.SocketStream) -> None:
        await tcp.receive_some(65536)  # the ClientHello
        if reset:
            tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await tcp.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, vanish, 0,
                                                              host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(MeshConnectionError, match="broke during the TLS handshake") as info:
                await connect_mtls("127.0.0.1", port, pki.client_context(identity, trust), trust)
            assert not isinstance(info.value, PeerRejectedError)
            nursery.cancel_scope.cancel()


async def test_the_server_sends_no_session_tickets(mesh: Mesh) -> None:
    # no mesh client resumes a session: tickets would be pure CPU on both ends of every stream
    server, client = mesh.node("server"), mesh.node("client")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await start_server(nursery, mesh, server, [])
            identity, trust = mesh.identity(client)
            conn = await connect_mtls("127.0.0.1", port, pki.client_context(identity, trust),
                                      trust, expected_name="server")
            await conn.stream.send_all(b"hi")
            assert await conn.stream.receive_some(100) == b"echo:hi"  # tickets would be here
            session = conn.stream.session
            assert session is None or not session.has_ticket
            await conn.aclose()
            nursery.cancel_scope.cancel()
