"""A minimal aggregator for the uploader's tests: a real HTTPS server with mutual TLS on loopback.

It is a test double of ``aggregator/`` (built in parallel), keeping what the contract asks
of ingest in memory: one high-water mark per (agent, store), only records above it inserted,
an undeclared gap refused with 409 and ``expected``, a batch whose ``agent`` is not the client
certificate's node refused with 403, a malformed body with 400. Every insert is counted per
seq, so a test can prove that nothing arrived twice.

Faults on demand: ``drop_after_commit`` (commit, then close the connection without answering:
a lost acknowledgement), ``refuse`` (answer the next requests with a given 4xx/5xx).
It is trio + h11, served by :func:`trio.serve_ssl_over_tcp`. With a ``backend`` (the real
aggregator's :meth:`aggregator.writer.Ingestor.ingest`), batches go to it instead of memory:
the HTTP shell stays a double, the exactly-once bookkeeping is the real one.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import h11
import trio
from cryptography import x509

from meshmon import pki
from meshmon.wire.ingest import (
    CONTENT_TYPE,
    PATH,
    Ack,
    Batch,
    BatchError,
    decode_batch,
    encode_ack,
)


@dataclass
class Stream:
    """One (agent, store) as the double holds it."""

    high_water: int = 0
    skipped: int = 0
    lost_total: int = 0
    payloads: dict[int, bytes] = field(default_factory=dict)
    inserts: collections.Counter[int] = field(default_factory=collections.Counter)
    members: tuple[object, ...] | None = None


def free_port(host: str) -> int:
    """A port free for TCP and UDP on ``host``, with the next one free for UDP (echo)."""
    for _ in range(100):
        port = random.randrange(20000, 60000)
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u, \
                    socket.socket(type=socket.SOCK_DGRAM) as e:  # fmt: skip
                t.bind((host, port))
                u.bind((host, port))
                e.bind((host, port + 1))
                return port
        except OSError:
            continue
    raise AssertionError(f"no free port on {host}")


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS 1.3, this certificate, client certificates from ``client_ca`` required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


class TestAggregator:
    """The double; ``await nursery.start(agg.serve)`` then use ``agg.url``."""

    __test__ = False  # not a pytest class

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0,
                 backend: Callable[[str, Batch], Awaitable[Ack]] | None = None) -> None:
        self.context = context
        self.backend = backend
        self.host = host
        self.port = port
        self.streams: dict[tuple[str, str], Stream] = {}
        self.batches: list[Batch] = []
        """Every well-formed batch received, in order (including refused and dropped ones)."""
        self.requests = 0
        """HTTP requests received (a refused TLS handshake never gets this far)."""
        self.connections = 0
        self.drop_after_commit = 0
        self.refuse: list[tuple[int, dict[str, object]]] = []
        self.unknown_versions: set[int] = set()
        """Protocol versions refused as unknown (400 ``v: ...``)."""
        self.versions: collections.Counter[int] = collections.Counter()
        """Well-formed batches received, by protocol version."""
        self.answers: list[int] = []
        self._changed = trio.Event()
        self._scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def stream(self, agent: str, store: str) -> Stream:
        return self.streams.setdefault((agent, store), Stream())

    async def wait_for(self, what: Callable[[], bool]) -> None:
        """Until ``what()`` holds (the caller puts a deadline around it)."""
        while not what():
            await self._changed.wait()

    def _touch(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # --- serving ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_ssl_over_tcp_listeners(
                self.port, self.context, host=self.host, https_compatible=True)
            self.port = listeners[0].transport_listener.socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _backend(self, peer: str, batch: Batch) -> tuple[int, bytes, bool]:
        return await _call_backend(self, peer, batch)

    def stop(self) -> None:
        """Close the listener and every connection (the server goes down)."""
        if self._scope is not None:
            self._scope.cancel()

    async def _handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.connections += 1
        try:
            await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            peer = pki.node_name_of(x509.load_der_x509_certificate(der)) if der else ""
            conn = h11.Connection(h11.SERVER)
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                self.requests += 1
                status, answer, drop = await self._ingest(peer, request, body)
                self._touch()
                if drop:
                    await stream.aclose()
                    return
                self.answers.append(status)
                ctype = CONTENT_TYPE if status == 200 else "application/json"
                await stream.send_all(conn.send(h11.Response(
                    status_code=status, headers=[("Content-Type", ctype),
                                                 ("Content-Length", str(len(answer)))])))
                await stream.send_all(conn.send(h11.Data(data=answer)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: trio.SSLStream[trio.SocketStream]
                            ) -> tuple[h11.Request | None, bytes]:
        request = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _ingest(self, peer: str, request: h11.Request, body: bytes,
                      ) -> tuple[int, bytes, bool]:  # fmt: skip
        """(status, body, drop the connection instead of answering)."""
        if request.method != b"POST" or request.target != PATH.encode():
            return 404, _json({"error": f"no route {request.target!r}"}), False
        headers = {k.lower(): v for k, v in request.headers}
        encoding = headers.get(b"content-encoding")
        try:
            version = cbor2.loads(zlib.decompress(body) if encoding else body).get("v")
            if version in self.unknown_versions:  # as an aggregator of an older release
                raise BatchError(f"v: protocol version {version!r}, this aggregator speaks 1 "
                                 "and 2")  # fmt: skip
            batch = decode_batch(body, encoding.decode() if encoding else None)
        except BatchError as exc:
            return 400, _json({"error": str(exc)}), False
        except (ValueError, AttributeError, zlib.error) as exc:  # not CBOR: decode_batch says
            return 400, _json({"error": f"body: {exc}"}), False
        self.batches.append(batch)
        self.versions[version] += 1
        if self.refuse:
            status, answer = self.refuse.pop(0)
            return status, _json(answer), False
        if self.backend is not None:
            return await self._backend(peer, batch)
        if batch.agent != peer:
            return 403, _json({"error": f"agent: {batch.agent!r} is not the certificate's node "
                                        f"{peer!r}"}), False  # fmt: skip
        s = self.stream(batch.agent, batch.store)
        if batch.after > s.high_water:
            return 409, _json({"error": f"after: {batch.after} is above the high-water mark "
                                        f"{s.high_water}: undeclared gap",
                               "expected": s.high_water + 1}), False  # fmt: skip
        inserted = 0
        for rec in batch.records:
            if rec.seq > s.high_water:
                s.payloads[rec.seq] = rec.payload
                s.inserts[rec.seq] += 1
                inserted += 1
        s.skipped += max(0, batch.first - s.high_water - 1)
        s.high_water = max(s.high_water, batch.last)
        s.lost_total = batch.lost_total
        if batch.members is not None:
            s.members = batch.members
        if self.drop_after_commit:
            self.drop_after_commit -= 1
            return 200, b"", True
        return 200, encode_ack(Ack(s.high_water, inserted)), False


async def _call_backend(double: TestAggregator, peer: str, batch: Batch,
                        ) -> tuple[int, bytes, bool]:  # fmt: skip
    from aggregator.errors import DatabaseUnavailable, IngestRefused

    assert double.backend is not None
    try:
        ack = await double.backend(peer, batch)
    except IngestRefused as exc:
        return exc.status, _json({"error": exc.message, **exc.extra}), False
    except DatabaseUnavailable as exc:
        return 503, _json({"error": f"database unavailable: {exc}"}), False
    if double.drop_after_commit:
        double.drop_after_commit -= 1
        return 200, b"", True
    return 200, encode_ack(ack), False


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()
