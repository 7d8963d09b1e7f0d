"""One HTTP/1.1 request over a fresh connection: h11 (sans-IO) driven by a trio socket.

Theory of operation
-------------------
A monitor's request is simple — one connection, one request, one response, then close — and
what it measures is latency, so the client does the least work in the event loop between the
first SYN and the last body byte. h11 keeps the protocol (framing, chunked bodies, HEAD, 1xx);
this module only moves bytes and notes the time of each milestone:

* ``connect``: the TCP handshake (and the TLS handshake for https) is done;
* ``first_byte``: the response headers are parsed;
* ``done``: the last body byte arrived.

A general-purpose client (httpx) spends ~1 ms more CPU per request in its pools, hooks and
URL models, which on a loopback target is more than the whole exchange (see
``benchmarks/http.py``). Redirects, validation and error texts live in
:mod:`meshmon.probes.http`.

TLS client contexts are built once per distinct setting and shared (:func:`tls_context`):
``ssl.create_default_context()`` loads the system trust store, ~20 ms of CPU each time.
Content decoding (gzip, deflate) is bounded: at most ``limit`` decoded bytes are ever produced,
so a compression bomb costs nothing.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from meshmon.version import __version__

USER_AGENT = f"meshmon/{__version__}"

_TLS_CONTEXTS: dict[tuple[bool, str | None, int], ssl.SSLContext] = {}
_TLS_CONTEXTS_MAX = 64
"""More distinct settings than this is a misconfiguration; the cache then starts over."""


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The shared client context for (``verify``, ``ca_file``); a CA file changed on disk (its
    modification time) gets a new one.

    Raises:
        OSError, ssl.SSLError: the CA file cannot be read or parsed.
    """
    mtime = os.stat(ca_file).st_mtime_ns if verify and ca_file else 0
    key = (verify, ca_file if verify else None, mtime)
    ctx = _TLS_CONTEXTS.get(key)
    if ctx is None:
        if verify:
            ctx = ssl.create_default_context()
            if ca_file:
                ctx.load_verify_locations(ca_file)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if len(_TLS_CONTEXTS) >= _TLS_CONTEXTS_MAX:
            _TLS_CONTEXTS.clear()
        _TLS_CONTEXTS[key] = ctx
    return ctx


class HttpClientError(Exception):
    """The exchange failed; ``phase`` says during what (``connect tcp``, ``start tls`` ...)."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


@dataclass
class Exchange:
    """What one request/response produced, filled in as it goes (so a timeout keeps the rest)."""

    phase: str = "connect tcp"
    """The current step, named for error messages."""
    started: float = 0.0
    """Monotonic time the connection attempt began."""
    connected: float | None = None
    first_byte: float | None = None
    done: float | None = None
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    size: int = 0
    """Body bytes as received (after de-chunking, before content decoding)."""
    body: bytearray = field(default_factory=bytearray)
    """Decoded body, at most the ``limit`` given to :func:`exchange`."""
    decode_error: str | None = None
    """Why the body could not be decoded (unknown or corrupt content encoding)."""

    def header(self, name: bytes) -> bytes | None:
        """The first response header of this (lower-case) name."""
        return next((v for k, v in self.headers if k == name), None)


async def exchange(address: str, family: int, port: int, tls: ssl.SSLContext | None,
                   server_name: str, method: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None, limit: int, out: Exchange) -> None:  # fmt: skip
    """Send one request to ``address``:``port`` and read the response into ``out``.

    ``headers`` are sent after the defaults (``Host``, ``User-Agent``, ``Accept``,
    ``Accept-Encoding``, ``Connection: close``), replacing any of the same name. ``limit``
    bounds the decoded body kept (0 skips decoding entirely).

    Raises:
        HttpClientError: connect, TLS, send or protocol failure, with the cause chained.
    """
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = trio.socket.socket(af, socket.SOCK_STREAM)
    stream: trio.abc.Stream | None = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out.phase = "connect tcp"
        out.started = time.monotonic()
        try:
            await sock.connect((address, port) if family == 4 else (address, port, 0, 0))
        except OSError as exc:
            raise HttpClientError(out.phase, "") from exc
        stream = trio.SocketStream(sock)
        if tls is not None:
            out.phase = "start tls"
            tls_stream = trio.SSLStream(stream, tls, server_hostname=server_name)
            stream = tls_stream
            await _io(out, tls_stream.do_handshake())
        out.connected = time.monotonic()
        conn = h11.Connection(h11.CLIENT)
        out.phase = "send request"
        request = h11.Request(method=method, target=target,
                              headers=_headers(server_name, port, tls is not None, headers, body))
        data = conn.send(request) + (conn.send(h11.Data(data=body)) if body else b"")
        await _io(out, stream.send_all(data + conn.send(h11.EndOfMessage())))
        out.phase = "receive response headers"
        decode: Decoder | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpClientError(out.phase, f"invalid HTTP from the server: {exc}") from exc
            if event is h11.NEED_DATA:
                conn.receive_data(await _io(out, stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                out.first_byte = time.monotonic()
                out.status = event.status_code
                out.headers = [(k.lower(), v) for k, v in event.headers]
                out.phase = "reading the body"
                if limit:
                    decode = _decoder(out.header(b"content-encoding"), out)
            elif isinstance(event, h11.Data):
                out.size += len(event.data)
                room = limit - len(out.body)
                if decode is not None and room > 0:
                    out.body += decode(bytes(event.data), room)[:room]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                out.done = time.monotonic()
                return
            # InformationalResponse (1xx): keep reading
    finally:
        sock.close()


async def _io(out: Exchange, op: object) -> bytes:
    """Await a stream operation, turning trio's stream errors into :class:`HttpClientError`."""
    try:
        return await op  # type: ignore[misc, no-any-return]
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        raise HttpClientError(out.phase, "") from exc


def _headers(host: str, port: int, tls: bool, extra: list[tuple[str, str]],
             body: bytes | None) -> list[tuple[str, str]]:  # fmt: skip
    name = f"[{host}]" if ":" in host else host
    default_port = 443 if tls else 80
    base = {
        "host": name if port == default_port else f"{name}:{port}",
        "user-agent": USER_AGENT,
        "accept": "*/*",
        "accept-encoding": ", ".join(_ENCODINGS),
        "connection": "close",
    }
    if body is not None:
        base["content-length"] = str(len(body))
    for key, value in extra:
        base[key.lower()] = value
    return list(base.items())


Decoder = Callable[[bytes, int], bytes]
"""Decodes one chunk, producing at most the given number of bytes (the rest is not needed)."""


def _zlib(wbits: int) -> Callable[[], Decoder]:
    def make() -> Decoder:
        d = zlib.decompressobj(wbits)
        return lambda data, room: d.decompress(data, room)

    return make


_ENCODINGS: dict[str, Callable[[], Decoder]] = {
    "gzip": _zlib(16 + zlib.MAX_WBITS),
    "x-gzip": _zlib(16 + zlib.MAX_WBITS),
    "deflate": _zlib(zlib.MAX_WBITS),  # RFC 9110's deflate is zlib-wrapped
}


def _decoder(encoding: bytes | None, out: Exchange) -> Decoder | None:
    """A chunk decoder for ``encoding``, or ``None`` (with ``out.decode_error``) when the body
    cannot be decoded. Stacked encodings (``gzip, deflate``) are undone in reverse order."""
    names = [e.strip() for e in (encoding or b"").decode("latin-1").lower().split(",")]
    steps: list[Decoder] = []
    for name in reversed([n for n in names if n and n != "identity"]):
        make = _ENCODINGS.get(name)
        if make is None:
            out.decode_error = f"cannot decode content-encoding {name!r} (known: gzip, deflate)"
            return None
        steps.append(make())

    def decode(data: bytes, room: int) -> bytes:
        try:
            for step in steps:
                data = step(data, room)
        except zlib.error as exc:
            if out.decode_error is None:
                out.decode_error = f"corrupt {(encoding or b'').decode('latin-1')} body: {exc}"
            return b""
        return data

    return decode
