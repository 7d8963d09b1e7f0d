"""HTTPS for the aggregator: hypercorn's HTTP protocol on trio, over our own TLS listener.

Theory of operation
-------------------
The aggregator has two kinds of clients on one port: agents, which authenticate with their
mesh certificate, and readers, which may hold only a bearer token. So the TLS layer *asks* for
a client certificate without requiring one (``CERT_OPTIONAL``): a certificate that is presented
must chain to the mesh CA or the handshake fails; whether one is needed, and whether it is
revoked, is decided per request by :mod:`aggregator.auth` (the CRL can change while a
connection stays open, and a 403 with a reason helps an agent's operator more than a TLS
alert).

hypercorn 0.18 does not tell an ASGI application about the client certificate (its
``serve()`` builds its listeners and scopes itself). So this module runs the listener: it
accepts TCP, completes the TLS handshake under a deadline, reads the peer certificate and then
hands the stream to hypercorn's own per-connection ``TCPServer`` (h11 and h2, keep-alive,
flow control) with an application wrapper that adds the ASGI ``tls`` extension
(``scope["extensions"]["tls"]``: ``client_cert_chain`` as PEM, ``client_cert_name``, and the
DER under :data:`aggregator.app.TLS_PEER_DER`). hypercorn's ``TCPServer`` finds the handshake
already done. The lifespan protocol is not used: the service owns its resources outside the
application.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from aggregator.app import TLS_PEER_DER
from meshmon import pki
from meshmon.logs import RateLimitedLog

log = logging.getLogger(__name__)

AsgiApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI 3 application."""
_handshakes = RateLimitedLog(log, interval=30.0)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete the TLS handshake (a slow or silent client is dropped)."""
KEEP_ALIVE = 75.0
"""Idle seconds before a keep-alive connection is closed: longer than an agent's usual batch
delay (10 s), so a syncing agent keeps its connection and its TLS session."""
GRACEFUL = 5.0
"""Seconds requests in flight get to finish when the server stops."""


def server_context(identity: pki.NodeIdentity, trust: pki.Trust) -> ssl.SSLContext:
    """TLS 1.2+ with the aggregator's mesh certificate; client certificates optional, and
    checked against the mesh CA when presented (revocation is checked per request)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # readers use generic HTTP clients
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.load_verify_locations(cadata=trust.ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class _TlsScope:
    """hypercorn's app wrapper interface, adding the connection's ``tls`` extension."""

    def __init__(self, app: AsgiApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Any, receive: Any, send: Any, sync_spawn: Any,
                       call_soon: Any) -> None:  # fmt: skip
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = self.tls
        await self.app(scope, receive, send)


def _tls_extension(stream: trio.SSLStream[Any]) -> dict[str, Any]:
    der = stream.getpeercert(binary_form=True)
    name = None
    if der:
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
        TLS_PEER_DER: der or None,
    }


def _handshake_problem(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate refused: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc) or type(exc).__name__


async def serve_https(
    app: AsgiApp,
    ssl_context: ssl.SSLContext,
    host: str,
    port: int,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTPS on ``host:port`` until ``shutdown`` is set (or cancelled).

    ``task_status.started`` receives the bound ``(host, port)`` of every listener. When
    ``shutdown`` is set the listeners close, idle connections are closed and requests in flight
    get :data:`GRACEFUL` seconds to finish; cancellation stops everything at once.

    Raises:
        OSError: the address cannot be bound (not on this host, port in use).
    """
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("aggregator.http")
    config.keep_alive_timeout = KEEP_ALIVE
    config.graceful_timeout = GRACEFUL
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = [(str(lst.socket.getsockname()[0]), int(lst.socket.getsockname()[1]))
             for lst in listeners]  # fmt: skip

    async def connection(stream: trio.SocketStream) -> None:
        tls_stream = trio.SSLStream(stream, ssl_context, server_side=True,
                                    https_compatible=True)  # fmt: skip
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls_stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            peer = _peer(stream)
            _handshakes.warning(f"tls:{peer.rpartition(':')[0]}", "TLS handshake with %s "
                                "failed: %s", peer, _handshake_problem(exc))  # fmt: skip
            await trio.aclose_forcefully(tls_stream)
            return
        wrapper = _TlsScope(app, _tls_extension(tls_stream))
        await TCPServer(wrapper, config, context, ConnectionState({}), tls_stream).run()

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(partial(trio.serve_listeners, connection, listeners,
                                         handler_nursery=handlers))  # fmt: skip
            task_status.started(bound)
            if shutdown is None:
                await trio.sleep_forever()
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await context.terminated.set()  # hypercorn closes idle keep-alive connections
        handlers.cancel_scope.deadline = trio.current_time() + GRACEFUL


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
