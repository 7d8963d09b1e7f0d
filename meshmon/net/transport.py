"""The mesh transport: sealed UDP datagrams and framed requests over mTLS TCP, on trio.

Theory of operation
-------------------
:class:`Transport` is the narrow interface the membership driver (and later features) use:
``send_datagram`` (fire and forget), one receive channel per datagram ``purpose``, ``request``
(one request/response over a fresh mTLS stream) and ``on_request`` to serve a request kind.
:class:`MeshTransport` is the real one; :class:`meshmon.net.memory.MemoryTransport` the
in-memory one for tests and the simulator.

Keys: datagrams are sealed by :class:`meshmon.wire.Keyring`, which needs the receiver's
certificate. Every mTLS stream, in either direction, teaches both ends the other's certificate.
Sending to a UDP address whose node is not known yet queues the datagram (a few per address),
runs the built-in ``hello`` request over mTLS in the background, and flushes the queue once the
peer is known; ``hello`` also swaps UDP/TCP addresses so the peer can answer without its own
exchange. A datagram from an unknown, revoked, replaying or forging sender is dropped, counted
in :attr:`MeshTransport.drops` by reason and logged at most once per reason every 10 s.

UDP and TCP addresses: a peer's TCP address is learned from ``hello`` or :meth:`learn_peer`;
otherwise it is assumed to be the UDP address (one port number for both, as memberlist does).
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import cbor2
import trio

from meshmon import pki
from meshmon.logs import RateLimitedLog
from meshmon.net.admission import Admission
from meshmon.net.frames import (
    MAX_FRAME,
    FrameError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    read_frame,
)
from meshmon.net.tls import ListenError, MeshConnectionError, MtlsStream, connect_mtls, serve_mtls
from meshmon.wire import MAX_DATAGRAM, MAX_PLAINTEXT, Keyring, SealConfig, SealError

log = logging.getLogger(__name__)

Address = tuple[str, int]
RequestHandler = Callable[[pki.PeerIdentity, bytes], Awaitable[bytes]]
"""Serves one request kind: gets the authenticated peer and the body, returns the answer."""

PURPOSE_MEMBERSHIP = 0
"""Datagram purpose of SWIM messages (the :attr:`Transport.datagrams` channel)."""
PURPOSE_ECHO = 1
"""Reserved for the UDP echo probe responder."""


class TransportError(Exception):
    """A transport operation failed."""


class PeerUnreachableError(TransportError):
    """No answer from the peer: cannot connect, TLS refused, timed out or the stream broke."""


class RemoteError(TransportError):
    """The peer answered the request with an error (unknown kind or a failing handler)."""


@dataclass(frozen=True)
class Datagram:
    """An authenticated datagram: who sealed it, where it came from, what it says."""

    sender: str
    addr: Address
    purpose: int
    plaintext: bytes


@dataclass(frozen=True)
class TransportConfig:
    """Where to listen and how patient to be."""

    host: str = "127.0.0.1"
    """Address to bind UDP and TCP on."""
    udp_port: int = 7946
    """UDP port (memberlist's default); 0 picks a free one."""
    tcp_port: int | None = None
    """TCP port; None means the UDP port number (0 then picks a free one)."""
    receive_queue: int = 1024
    """Datagrams buffered per purpose before new ones are dropped (a stalled consumer)."""
    pending_per_peer: int = 16
    """Datagrams queued per address while its key exchange runs; older ones are dropped."""
    exchange_backoff: float = 5.0
    """Seconds after a failed key exchange during which datagrams to that address are dropped
    instead of retrying (an unreachable peer would otherwise cost a TCP connect per probe)."""
    connect_timeout: float = 10.0
    """Seconds for TCP connect plus TLS handshake of a request that names no longer timeout,
    and for a client to send its first byte to our server (a silent one is closed then)."""
    handshake_timeout: float = 30.0
    """Seconds our server gives a client that started a TLS handshake to finish it. Generous on
    purpose: a handshake costs a few milliseconds of CPU, but a machine starting dozens of
    agents at once leaves a peer unscheduled for seconds, and a handshake given up on is only
    repeated (with its CPU) by the client's retry."""
    exchange_timeout: float = 30.0
    """Seconds for a key exchange (``hello``): as patient as a join, for the same reason."""
    request_timeout: float = 10.0
    """Default seconds for a whole request (connect, send, answer); also the server's limit."""
    max_frame: int = MAX_FRAME
    """Largest request or response frame accepted."""
    seal: SealConfig = field(default_factory=SealConfig)
    """Datagram key rotation and replay settings."""


class Transport(Protocol):
    """What the membership driver and other features need from the network."""

    name: str
    datagrams: trio.MemoryReceiveChannel[Datagram]

    async def send_datagram(self, addr: Address, plaintext: bytes, purpose: int = 0) -> None:
        """Seal and send ``plaintext`` to the node at UDP ``addr``; never raises for the network."""

    def channel(self, purpose: int) -> trio.MemoryReceiveChannel[Datagram]:
        """The receive channel of datagrams with ``purpose``."""

    async def request(self, addr: Address, kind: str, payload: bytes,
                      timeout: float | None = None,  # noqa: ASYNC109
                      max_answer: int | None = None) -> bytes:  # fmt: skip
        """Send one request to the node at TCP ``addr`` and return its answer.

        Raises:
            PeerUnreachableError: no answer (or one larger than ``max_answer`` bytes).
            RemoteError: the peer answered with an error.
        """

    def on_request(self, kind: str, handler: RequestHandler) -> None:
        """Serve requests of ``kind`` with ``handler``."""


def _pack_addrs(udp: Address, tcp: Address) -> bytes:
    return cbor2.dumps([udp[0], udp[1], tcp[0], tcp[1]])


def _unpack_addrs(data: bytes) -> tuple[Address, Address]:
    try:
        uh, up, th, tp = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise FrameError(f"bad hello body ({exc})") from None
    if not (isinstance(uh, str) and isinstance(th, str) and isinstance(up, int)
            and isinstance(tp, int)):  # fmt: skip
        raise FrameError("bad hello body: expected [udp_host, udp_port, tcp_host, tcp_port]")
    return (uh, up), (th, tp)


class MeshTransport:
    """Sealed UDP plus mTLS requests for one node. Start with ``await nursery.start(t.run)``.

    Args:
        identity: this node's credentials.
        trust: the mesh CA and CRL; update its CRL and call :meth:`refresh_trust`.
        config: addresses and limits.
        handlers: request kind -> handler, besides the built-in ``hello`` and ``ping``.
    """

    def __init__(self, identity: pki.NodeIdentity, trust: pki.Trust,
                 config: TransportConfig | None = None,
                 handlers: dict[str, RequestHandler] | None = None) -> None:  # fmt: skip
        self.identity = identity
        self.trust = trust
        self.config = config or TransportConfig()
        self.name = identity.name
        self.keyring = Keyring(identity, trust, self.config.seal)
        self.drops: collections.Counter[str] = collections.Counter()
        """Dropped datagrams by reason (seal reasons, plus backlog, no_listener, queue_overflow,
        exchange_failed, send_refused, send_error)."""
        self.admission = Admission()
        """TCP connections turned away before becoming peers, counted by kind."""
        self.streams: collections.Counter[str] = collections.Counter()
        """mTLS requests by ``sent:KIND``, ``failed:KIND`` (no answer, or an error answer) and
        ``served:KIND``: each one is a TLS handshake on both ends."""
        self._bad = RateLimitedLog(log)
        self._handlers: dict[str, RequestHandler] = {"hello": self._on_hello, "ping": self._on_ping}
        self._handlers.update(handlers or {})
        self._channels: dict[int, tuple[trio.MemorySendChannel[Datagram],
                                        trio.MemoryReceiveChannel[Datagram]]] = {}  # fmt: skip
        self.datagrams = self.channel(PURPOSE_MEMBERSHIP)
        self._name_of: dict[Address, str] = {}
        self._tcp_of: dict[Address, Address] = {}
        self._pending: dict[Address, collections.deque[tuple[bytes, int]]] = {}
        self._failed_at: dict[Address, float] = {}
        self._exchanging: dict[Address, trio.Event] = {}
        self._sock: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self._client_ctx: tuple[int, ssl.SSLContext] | None = None
        self._server_ctx: tuple[int, ssl.SSLContext] | None = None
        self.udp_address: Address = (self.config.host, self.config.udp_port)
        self.tcp_address: Address = (self.config.host, self.config.tcp_port or 0)
        self.on_peer_cert: Callable[[bytes], None] = lambda der: None
        """Called with the certificate (DER) of every mTLS peer, either direction."""
        self.on_unknown_sender: Callable[[Address], None] = lambda addr: None
        """Called with the source of a datagram sealed by a sender we hold no certificate for
        (a member whose announcement has not reached us yet, or garbage)."""

    # -- public API ----------------------------------------------------------------------------

    def channel(self, purpose: int) -> trio.MemoryReceiveChannel[Datagram]:
        """The receive channel of datagrams with ``purpose`` (created on first use)."""
        if purpose not in self._channels:
            self._channels[purpose] = trio.open_memory_channel[Datagram](self.config.receive_queue)
        return self._channels[purpose][1]

    def on_request(self, kind: str, handler: RequestHandler) -> None:
        """Serve requests of ``kind`` with ``handler`` (replaces an earlier one)."""
        self._handlers[kind] = handler

    def learn_peer(self, udp: Address, tcp: Address, name: str | None = None) -> None:
        """Tell the transport the TCP address of the node at UDP ``udp`` (e.g. from gossip).

        With ``name`` (from a member's proven announcement): if an mTLS stream with that node
        already taught both ends each other's certificate (a join's push-pull, a certificate
        fetch), datagrams to ``udp`` are sealed for it at once, without a ``hello``.
        """
        self._tcp_of[udp] = tcp
        if name is not None and udp not in self._name_of and self.keyring.peer(name) is not None:
            self._name_of[udp] = name

    def tcp_address_of(self, udp: Address) -> Address:
        """The TCP address of the node at UDP ``udp`` (learned from ``hello``, or the same)."""
        return self._tcp_of.get(udp, udp)

    def name_at(self, udp: Address) -> str | None:
        """The node whose sealed datagrams came from UDP address ``udp``, if any did."""
        return self._name_of.get(udp)

    def refresh_trust(self) -> list[str]:
        """After ``trust.update_crl``: forget revoked or expired peers; returns their names."""
        gone = set(self.keyring.prune(time.time()))
        for addr in [a for a, n in self._name_of.items() if n in gone]:
            del self._name_of[addr]
        return sorted(gone)

    async def send_datagram(self, addr: Address, plaintext: bytes, purpose: int = 0) -> None:
        """Seal and send; if the node at ``addr`` is unknown, queue and exchange keys first.

        Never raises for network trouble or unknown peers: such datagrams are counted in
        :attr:`drops`, like a lost packet. Raises :class:`SealError` only for a plaintext
        larger than :data:`meshmon.wire.MAX_PLAINTEXT` (a bug in the caller).
        """
        name = self._name_of.get(addr)
        if name is not None and self.keyring.peer(name) is not None:
            await self._send_sealed(addr, name, plaintext, purpose)
            return
        if len(plaintext) > MAX_PLAINTEXT:
            raise SealError("send", f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        failed = self._failed_at.get(addr)
        if failed is not None and trio.current_time() - failed < self.config.exchange_backoff:
            self.drops["exchange_failed"] += 1
            return
        queue = self._pending.get(addr)
        if queue is None:
            queue = self._pending[addr] = collections.deque(maxlen=self.config.pending_per_peer)
            assert self._nursery is not None, "start the transport with nursery.start(t.run)"
            self._exchanging[addr] = trio.Event()
            self._nursery.start_soon(self._exchange_then_flush, addr)
        if len(queue) == queue.maxlen:
            self.drops["queue_overflow"] += 1
        queue.append((plaintext, purpose))

    async def request(self, addr: Address, kind: str, payload: bytes,
                      timeout: float | None = None,  # noqa: ASYNC109
                      max_answer: int | None = None) -> bytes:  # fmt: skip
        """Send one ``kind`` request to the node at TCP ``addr``; return its answer's body.

        Raises:
            PeerUnreachableError: cannot connect, TLS refused either way, no answer within
                ``timeout`` (default ``config.request_timeout``), the stream broke, or the
                answer frame is larger than ``max_answer`` bytes (default ``config.max_frame``).
            RemoteError: the peer answered with an error.
        """
        return (await self._request(addr, kind, payload, timeout, max_answer))[1]

    async def _request(self, addr: Address, kind: str, payload: bytes,
                       timeout: float | None,  # noqa: ASYNC109
                       max_answer: int | None = None) -> tuple[str, bytes]:  # fmt: skip
        limit = self.config.request_timeout if timeout is None else timeout
        host, port = addr
        self.streams[f"sent:{kind}"] += 1
        try:
            with trio.fail_after(limit):
                connect = limit if timeout is not None else self.config.connect_timeout
                conn = await connect_mtls(host, port, self._client_context(), self.trust, connect)
                try:
                    self._learn_cert(conn)
                    await conn.stream.send_all(encode_request(Request(kind, payload)))
                    limit_bytes = self.config.max_frame if max_answer is None else max_answer
                    resp = decode_response(await read_frame(conn.stream, limit_bytes))
                finally:
                    await trio.aclose_forcefully(conn.stream)
        except trio.TooSlowError:
            self.streams[f"failed:{kind}"] += 1
            raise PeerUnreachableError(
                f"{host}:{port}: no answer to {kind!r} within {limit:g}s; is the agent running?"
            ) from None
        except MeshConnectionError as exc:
            self.streams[f"failed:{kind}"] += 1
            raise PeerUnreachableError(str(exc)) from exc
        except (trio.BrokenResourceError, FrameError) as exc:
            self.streams[f"failed:{kind}"] += 1
            raise PeerUnreachableError(f"{host}:{port}: {kind!r} failed mid-stream: {exc}") from exc
        if not resp.ok:
            self.streams[f"failed:{kind}"] += 1
            raise RemoteError(f"{host}:{port} answered {kind!r} with an error: {resp.error}")
        return conn.peer.name, resp.body

    async def exchange_keys(self, addr: Address) -> str:
        """Run ``hello`` with the node at UDP ``addr``; returns its name.

        Raises:
            PeerUnreachableError, RemoteError: as :meth:`request`.
        """
        tcp = self._tcp_of.get(addr, addr)
        hello = _pack_addrs(self.udp_address, self.tcp_address)
        name, body = await self._request(tcp, "hello", hello, self.config.exchange_timeout)
        try:
            udp, peer_tcp = _unpack_addrs(body)
        except FrameError as exc:
            raise PeerUnreachableError(f"{tcp[0]}:{tcp[1]}: {exc}") from exc
        self._name_of[addr] = name
        self._tcp_of[udp] = peer_tcp
        self._name_of.setdefault(udp, name)
        return name

    # -- driver --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[MeshTransport] = trio.TASK_STATUS_IGNORED
                  ) -> None:  # fmt: skip
        """Bind UDP and TCP, then receive and serve until cancelled.

        Raises:
            ListenError: the UDP or TCP socket cannot be bound (``proto`` says which).
        """
        host = self.config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        with trio.socket.from_stdlib_socket(raw) as sock:  # non-blocking from here on
            try:
                await sock.bind((host, self.config.udp_port))
            except OSError as exc:
                raise ListenError("udp", host, self.config.udp_port, exc) from exc
            self._sock, self._raw = sock, raw
            self.udp_address = sock.getsockname()[:2]
            tcp_port = self.udp_address[1] if self.config.tcp_port is None else self.config.tcp_port
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                listeners = await nursery.start(partial(
                    serve_mtls, self._serve, host, tcp_port, self._server_context, self.trust,
                    self.config.connect_timeout, admission=self.admission,
                    handshake_timeout=self.config.handshake_timeout))  # fmt: skip
                self.tcp_address = listeners[0].socket.getsockname()[:2]
                nursery.start_soon(self._receive_loop, sock)
                task_status.started(self)

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, src = await sock.recvfrom(MAX_DATAGRAM + 1)
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                self.drops["socket_error"] += 1
                self._bad.warning("socket", "UDP receive error: %s", exc)
                continue
            self.deliver(data, (src[0], src[1]), time.time())

    def drain(self) -> int:
        """Read and route every datagram already waiting in the UDP socket, without waiting;
        returns how many. A process that was not scheduled for a while wakes with a deadline
        due and the answers that beat it both waiting: call this before judging the deadline,
        or a busy machine turns late scheduling into lost answers."""
        raw = self._raw
        count = errors = 0
        while raw is not None and raw.fileno() >= 0 and count + errors < self.config.receive_queue:
            try:
                data, src = raw.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                break
            except OSError as exc:  # as in the receive loop (ICMP errors reported on the socket)
                errors += 1
                self.drops["socket_error"] += 1
                self._bad.warning("socket", "UDP receive error: %s", exc)
                continue
            count += 1
            self.deliver(data, (src[0], src[1]), time.time())
        return count

    def deliver(self, data: bytes, src: Address, now: float) -> None:
        """Open one received datagram and route it; bad ones are counted and logged."""
        try:
            opened = self.keyring.open(data, now)
        except SealError as exc:
            self.drops[exc.reason] += 1
            # a member whose announcement has not reached us yet speaks first after a join, or
            # when many agents start at once: expected, so not a warning (it is still counted)
            level = logging.INFO if exc.reason == "unknown_sender" else logging.WARNING
            self._bad.log(level, exc.reason, "dropped datagram from %s:%s: %s", src[0], src[1],
                          exc)  # fmt: skip
            if exc.reason == "unknown_sender":
                self.on_unknown_sender(src)
            return
        self._name_of[src] = opened.sender.name
        pair = self._channels.get(opened.purpose)
        if pair is None:
            self.drops["no_listener"] += 1
            return
        try:
            pair[0].send_nowait(Datagram(opened.sender.name, src, opened.purpose, opened.plaintext))
        except trio.WouldBlock:
            self.drops["backlog"] += 1
            self._bad.warning("backlog", "receive queue full for purpose %d", opened.purpose)

    async def _send_sealed(self, addr: Address, name: str, plaintext: bytes, purpose: int) -> None:
        assert self._sock is not None, "start the transport with nursery.start(t.run)"
        try:
            sealed = self.keyring.seal(name, plaintext, time.time(), purpose)
        except SealError as exc:
            self.drops["send_refused"] += 1
            self._bad.warning("send_refused", "not sending to %s: %s", name, exc)
            return
        try:
            await self._sock.sendto(sealed, addr)
        except OSError as exc:
            self.drops["send_error"] += 1
            self._bad.warning("send_error", "UDP send to %s:%s failed: %s", addr[0], addr[1], exc)

    async def wait_exchange(self, addr: Address) -> None:
        """Wait until a background key exchange with UDP ``addr`` (if one runs) has finished."""
        event = self._exchanging.get(addr)
        if event is None:
            await trio.lowlevel.checkpoint()
        else:
            await event.wait()

    async def _exchange_then_flush(self, addr: Address) -> None:
        try:
            await self._exchange_and_flush(addr)
        finally:
            self._exchanging.pop(addr).set()

    async def _exchange_and_flush(self, addr: Address) -> None:
        try:
            name = await self.exchange_keys(addr)
        except TransportError as exc:
            self._failed_at[addr] = trio.current_time()
            queue = self._pending.pop(addr, None)
            self.drops["exchange_failed"] += len(queue or ())
            self._bad.warning("exchange", "key exchange with %s:%s failed: %s", addr[0], addr[1],
                              exc)  # fmt: skip
            return
        self._failed_at.pop(addr, None)
        for plaintext, purpose in self._pending.pop(addr, ()):
            await self._send_sealed(addr, name, plaintext, purpose)

    # -- TLS side ------------------------------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        # one per CRL: building one (key, CA and CRL loaded) costs ~2 ms of CPU, which a busy
        # peer would pay on every accepted connection; a newer CRL gets a new one at once
        number = self.trust.crl_number
        if self._server_ctx is None or self._server_ctx[0] != number:
            self._server_ctx = (number, pki.server_context(self.identity, self.trust))
        return self._server_ctx[1]

    def _client_context(self) -> ssl.SSLContext:
        number = self.trust.crl_number
        if self._client_ctx is None or self._client_ctx[0] != number:
            self._client_ctx = (number, pki.client_context(self.identity, self.trust))
        return self._client_ctx[1]

    def _learn_cert(self, conn: MtlsStream) -> None:
        der = conn.stream.getpeercert(binary_form=True)
        if der:
            self.on_peer_cert(der)
            try:
                self.keyring.add_peer(der, time.time())
            except pki.CertificateError as exc:  # TLS accepted it, but e.g. it has no P-256 key
                self._bad.warning("cert", "cannot seal datagrams for %s: %s", conn.peer.name, exc)

    async def _serve(self, conn: MtlsStream) -> None:
        self._learn_cert(conn)
        with trio.move_on_after(self.config.request_timeout):
            try:
                req = decode_request(await read_frame(conn.stream, self.config.max_frame))
            except FrameError as exc:
                self._bad.warning("frame", "bad request from %s: %s", conn.peer.name, exc)
                await conn.stream.send_all(encode_response(Response(False, error=str(exc))))
                return
            handler = self._handlers.get(req.kind)
            self.streams[f"served:{req.kind if handler else '?'}"] += 1  # bounded: known kinds
            if handler is None:
                resp = Response(False, error=f"unknown request kind {req.kind!r}")
            else:
                try:
                    resp = Response(True, await handler(conn.peer, req.body))
                except Exception as exc:  # a failing handler answers, never crashes
                    log.exception("handler for %r failed on a request from %s", req.kind,
                                  conn.peer.name)  # fmt: skip
                    resp = Response(False, error=f"{type(exc).__name__}: {exc}")
            await conn.stream.send_all(encode_response(resp))

    async def _on_hello(self, peer: pki.PeerIdentity, body: bytes) -> bytes:
        udp, tcp = _unpack_addrs(body)
        self._name_of[udp] = peer.name
        self._tcp_of[udp] = tcp
        return _pack_addrs(self.udp_address, self.tcp_address)

    async def _on_ping(self, peer: pki.PeerIdentity, body: bytes) -> bytes:
        return body


@asynccontextmanager
async def open_transport(identity: pki.NodeIdentity, trust: pki.Trust,
                         config: TransportConfig | None = None,
                         handlers: dict[str, RequestHandler] | None = None,
                         ) -> AsyncIterator[MeshTransport]:  # fmt: skip
    """Run a :class:`MeshTransport` for the duration of the ``async with`` block."""
    transport = MeshTransport(identity, trust, config, handlers)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            yield transport
        finally:
            nursery.cancel_scope.cancel()
