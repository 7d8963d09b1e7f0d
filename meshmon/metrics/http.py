"""A small HTTP/1.1 server on trio for ``/metrics`` and the health endpoints.

Theory of operation
-------------------
h11 parses and writes HTTP; this module only moves bytes and time, on the loop of the service it
reports on (so ``/healthz`` answering *is* the proof that the loop answers). Routes map a path
to an async handler returning a :class:`Response`; a handler that must do heavy work (building
the exposition) hands it to a worker thread itself. Only ``GET`` and ``HEAD`` are served.

A client is not trusted to behave: at most :data:`MAX_CONNECTIONS` are served at once (more wait
in the listen backlog), a request must arrive within :data:`REQUEST_TIMEOUT` and a response be
taken within :data:`SEND_TIMEOUT`, request heads are capped by h11 and bodies by
:data:`MAX_BODY`, and a handler's bug answers 500 (logged) instead of stopping the service.
Keep-alive is honoured between requests, within the same timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import trio

from meshmon.net.http1 import read_request, send_response

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
"""Clients served at once: a Prometheus or two, the kubelet, a health check, an operator."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send a request, or stay idle between two on one connection."""
SEND_TIMEOUT = 30.0
"""Seconds a client may take to read a response (an exposition can be megabytes)."""
MAX_BODY = 16 * 1024
"""A GET has no body; a client sending more than this is answered 413 and disconnected."""
MAX_HEAD = 16 * 1024
"""Request line and headers."""


@dataclass(frozen=True)
class Response:
    """What a handler answers."""

    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[h11.Request], Awaitable[Response]]


def json_response(status: int, body: Any) -> Response:
    """``body`` as a JSON response."""
    return Response(status, json.dumps(body, default=str).encode() + b"\n")



async def serve_http(
    address: tuple[str, int],
    routes: Mapping[str, Handler],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``address`` until cancelled; ``started`` with the bound port.

    Raises:
        OSError: the address cannot be bound (before ``started``).
    """
    host, port = address
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            await _serve_connection(routes, stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def _serve_connection(routes: Mapping[str, Handler], stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            request = None
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = await read_request(conn, stream, MAX_BODY)
            if request is None:
                return  # closed, idle or too slow
            response = await _answer(routes, request)
            with trio.move_on_after(SEND_TIMEOUT) as scope:
                await _respond(conn, stream, response, head=request.method == b"HEAD")
            if scope.cancelled_caught or conn.our_state is not h11.DONE \
                    or conn.their_state is not h11.DONE:  # fmt: skip
                return  # too slow a reader, HTTP/1.0 or "Connection: close"
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError,
                                     trio.ClosedResourceError):  # fmt: skip
                bad = json_response(exc.error_status_hint, {"error": f"bad HTTP request: {exc}"})
                await _respond(conn, stream, bad, head=False)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await trio.aclose_forcefully(stream)


async def _answer(routes: Mapping[str, Handler], request: h11.Request) -> Response:
    path = request.target.partition(b"?")[0].decode("latin-1")
    handler = routes.get(path)
    if handler is None:
        return json_response(404, {"error": f"no such path {path!r}; try "
                                            f"{', '.join(sorted(routes))}"})  # fmt: skip
    if request.method not in (b"GET", b"HEAD"):
        return json_response(405, {"error": f"{request.method.decode('latin-1')} is not "
                                            "allowed here; use GET"})  # fmt: skip
    try:
        return await handler(request)
    except Exception as exc:  # a handler's bug must not take the service down
        log.exception("metrics listener: error answering %s", path)
        return json_response(500, {"error": f"internal error: {exc}"})


async def _respond(conn: h11.Connection, stream: trio.SocketStream, response: Response,
                   head: bool) -> None:  # fmt: skip
    headers = [(b"content-type", response.content_type.encode("latin-1")),
               (b"cache-control", b"no-store")]  # fmt: skip
    await send_response(conn, stream, response.status, headers, response.body, head)
