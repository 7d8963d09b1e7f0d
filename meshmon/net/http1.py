"""The two halves of one HTTP/1.1 exchange over h11, shared by the agent's small servers.

The control API (:mod:`meshmon.control`) and the metrics listener (:mod:`meshmon.metrics.http`)
each run their own accept loop, limits and routes; what they share is here: reading one whole
request (its body read and dropped, at most ``max_body`` bytes of it) and writing one whole
response. h11 keeps the protocol; these functions only move bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11
import trio

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           408: b"Request Timeout", 413: b"Content Too Large", 500: b"Internal Server Error",
           503: b"Service Unavailable"}  # fmt: skip
"""Reason phrases of the statuses these servers send."""


async def read_request(conn: h11.Connection, stream: trio.SocketStream,
                       max_body: int) -> h11.Request | None:  # fmt: skip
    """The next complete request, its body read and dropped; ``None`` when the client closed.

    Raises:
        h11.RemoteProtocolError: a malformed request, or a body over ``max_body`` bytes (with
            ``error_status_hint`` 413).
    """
    request: h11.Request | None = None
    body = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(16384))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > max_body:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage):
            return request
        else:  # ConnectionClosed; PAUSED never (each cycle ends before the next is read)
            return None


async def send_response(conn: h11.Connection, stream: trio.SocketStream, status: int,
                        headers: Sequence[tuple[bytes, bytes]], body: bytes,
                        head: bool = False) -> None:  # fmt: skip
    """One whole response: ``headers`` plus content-length, and ``body`` unless ``head``."""
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    data = conn.send(h11.Response(status_code=status, headers=all_headers,
                                  reason=REASONS.get(status, b"")))  # fmt: skip
    if not head:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
