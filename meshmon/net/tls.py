"""Mutual-TLS TCP streams between mesh nodes, on trio.

Theory of operation
-------------------
Both sides present a certificate from the mesh CA (contexts from :mod:`meshmon.pki`). TLS 1.3
lets a client finish its handshake before the server has judged the client's certificate, so a
rejected client would only notice at its first read. To give both sides a clear verdict, the
server opens every accepted stream with a short greeting (:data:`GREETING`); the client's
:func:`connect_mtls` returns only after reading it, and turns a TLS alert received instead into a
:class:`PeerRejectedError` that says why (unknown CA, expired, revoked). Both sides then re-check
the peer certificate with :meth:`meshmon.pki.Trust.verify` to learn who the peer is.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshmon.net.admission import CERTIFICATE, CONNECT_ONLY, HANDSHAKE, IDLE, SLOW, Admission
from meshmon.pki import CertificateError, PeerIdentity, Trust

log = logging.getLogger(__name__)

GREETING = b"MM1\n"
"""Sent by the server after the handshake; also names the stream protocol version."""


class MeshConnectionError(Exception):
    """A stream to or from a peer could not be set up or broke."""


class PeerRejectedError(MeshConnectionError):
    """The TLS handshake failed on certificate grounds; the message says which side and why."""


class ListenError(Exception):
    """A listening socket could not be bound; ``proto``, ``host``, ``port`` say which.

    The cause (an :class:`OSError`) is chained and its ``errno`` copied, so the caller can tell
    an address that is not on this host from a port in use and name its own setting.
    """

    def __init__(self, proto: str, host: str, port: int, cause: OSError) -> None:
        self.proto = proto
        self.host = host
        self.port = port
        self.errno = cause.errno
        self.strerror = cause.strerror or str(cause)
        super().__init__(f"cannot listen on {proto.upper()} {host}:{port}: {self.strerror}")
        self.__cause__ = cause


@dataclass
class MtlsStream:
    """An established, mutually authenticated stream and who is at the other end."""

    stream: trio.SSLStream[trio.SocketStream]
    peer: PeerIdentity
    remote: tuple[str, int]

    async def aclose(self) -> None:
        """Close the stream (politely if possible)."""
        await self.stream.aclose()


_VERIFY_HINTS = {
    "unable to get local issuer certificate": "not issued by this mesh's CA",
    "self-signed certificate in certificate chain": "not issued by this mesh's CA",
    "certificate has expired": "issue a new certificate with meshmon cert issue",
    "certificate revoked": "revoked by the mesh CA",
}


def _reason(exc: BaseException) -> str:
    """A short human reason out of an ssl error chain."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            text = str(cause.verify_message)
            hint = _VERIFY_HINTS.get(text)
            return f"certificate verify failed: {text}" + (f" ({hint})" if hint else "")
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or cause).replace("_", " ").lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


async def _send_pending_alert(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Send the TLS alert OpenSSL queued when a handshake failed, so the peer learns why.

    trio marks the stream broken on a handshake error and drops what is still in its outgoing
    buffer, which is exactly the alert ("unknown ca", "certificate revoked"...). Without it the
    peer only sees the connection drop. Best effort: the transport may already be gone.
    """
    outgoing = getattr(stream, "_outgoing", None)
    pending = outgoing.read() if outgoing is not None else b""
    if pending:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.transport_stream.send_all(pending)


def _we_refused(exc: BaseException) -> bool:
    """True if our side failed verification (rather than the peer sending an alert)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _alerted(exc: BaseException) -> bool:
    """True if the peer ended the handshake with a TLS alert (its verdict on us), rather than
    the connection being reset or closed (a peer killed or restarting mid-handshake)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and not isinstance(
                cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):  # fmt: skip
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _peer_identity(stream: trio.SSLStream[Any], trust: Trust) -> PeerIdentity:
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise PeerRejectedError("peer presented no certificate")
    try:
        return trust.verify(der)
    except CertificateError as exc:
        raise PeerRejectedError(str(exc)) from exc


async def connect_mtls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    trust: Trust,
    timeout: float = 5.0,  # noqa: ASYNC109 - a connect deadline, not a cancel scope
    expected_name: str | None = None,
) -> MtlsStream:
    """Open a mutually authenticated stream to a peer.

    Raises:
        PeerRejectedError: either side refused the other's certificate, or the peer is not
            ``expected_name``.
        MeshConnectionError: the peer could not be reached or did not answer in ``timeout``.
    """
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, context, server_hostname=None)
            try:
                await stream.do_handshake()
                greeting = await stream.receive_some(len(GREETING))
            except trio.BrokenResourceError as exc:
                await _send_pending_alert(stream)
                await trio.aclose_forcefully(stream)
                reason = _reason(exc)
                if _we_refused(exc):
                    raise PeerRejectedError(
                        f"{host}:{port}: we rejected the peer's certificate: {reason}"
                    ) from exc
                if not _alerted(exc):  # reset or closed without a word: not a verdict
                    raise MeshConnectionError(
                        f"{host}:{port}: the connection broke during the TLS handshake "
                        f"({reason}); is the agent running?"
                    ) from exc
                raise PeerRejectedError(
                    f"{host}:{port}: the peer rejected our certificate ({reason}); check that "
                    "this node's certificate comes from the mesh CA, is not expired and is not "
                    "revoked"
                ) from exc
            except BaseException:
                # cancelled or out of time mid-handshake: close at once, or the socket lingers
                # until collected and the peer waits out its handshake deadline for nothing
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise MeshConnectionError(f"{host}:{port}: no TLS answer within {timeout:g}s") from None
    except OSError as exc:
        raise MeshConnectionError(f"{host}:{port}: cannot connect ({exc.strerror or exc})") from exc
    if greeting != GREETING:
        await trio.aclose_forcefully(stream)
        raise MeshConnectionError(f"{host}:{port}: not a meshmon agent (bad greeting)")
    try:
        peer = _peer_identity(stream, trust)
        if expected_name is not None and peer.name != expected_name:
            raise PeerRejectedError(
                f"{host}:{port}: expected node {expected_name!r} but its certificate is for "
                f"{peer.name!r}"
            )
    except PeerRejectedError:
        await trio.aclose_forcefully(stream)
        raise
    return MtlsStream(stream, peer, (host, port))


StreamHandler = Callable[[MtlsStream], Awaitable[None]]


async def serve_mtls(
    handler: StreamHandler,
    host: str,
    port: int,
    context_factory: Callable[[], ssl.SSLContext],
    trust: Trust,
    idle_timeout: float = 5.0,
    *,
    admission: Admission | None = None,
    handshake_timeout: float | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept mTLS streams on ``host:port`` and run ``handler`` for each authenticated peer.

    A client must send its first byte within ``idle_timeout`` and finish the TLS handshake
    within ``handshake_timeout`` (default: ``idle_timeout``) of connecting.
    ``context_factory`` is called per connection so a new CRL takes effect without a restart.
    Connections that do not become authenticated peers are counted and logged rate-limited by
    ``admission`` (see :mod:`meshmon.net.admission`); the handler never sees them.

    Raises:
        ListenError: the TCP port cannot be bound (address not on this host, port in use...).
    """
    admit = admission if admission is not None else Admission()
    handshake_timeout = idle_timeout if handshake_timeout is None else handshake_timeout

    async def on_connect(tcp: trio.SocketStream) -> None:
        try:
            remote = tcp.socket.getpeername()
        except OSError:  # gone before we looked: a connect-and-abort check
            admit.turn_away(CONNECT_ONLY, ("?", 0))
            return
        stream = trio.SSLStream(tcp, context_factory(), server_side=True)
        kind, detail, timeout = IDLE, "", idle_timeout
        start = trio.current_time()
        try:
            with trio.fail_at(start + idle_timeout) as scope:
                refused = await admit.first_contact(tcp)
                if refused is not None:
                    kind, detail = refused
                    raise _TurnAway
                kind, timeout = SLOW, max(idle_timeout, handshake_timeout)
                scope.deadline = start + timeout
                await stream.do_handshake()
                await stream.send_all(GREETING)
            peer = _peer_identity(stream, trust)
        except (_TurnAway, trio.TooSlowError):
            admit.turn_away(kind, remote, timeout=timeout, detail=detail)
            await trio.aclose_forcefully(stream)
            return
        except (trio.BrokenResourceError, PeerRejectedError) as exc:
            cert = _we_refused(exc) or isinstance(exc, PeerRejectedError)
            admit.turn_away(CERTIFICATE if cert else HANDSHAKE, remote, detail=_reason(exc))
            await _send_pending_alert(stream)
            await trio.aclose_forcefully(stream)
            return
        conn = MtlsStream(stream, peer, (remote[0], remote[1]))
        try:
            await handler(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("stream from %s closed: %s", peer.name, exc)
        finally:
            await trio.aclose_forcefully(stream)

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ListenError("tcp", host, port, exc) from exc
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connect, listeners)
        task_status.started(listeners)


class _TurnAway(Exception):
    """Internal: the first byte already showed this is no TLS client."""
