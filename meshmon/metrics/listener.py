"""The metrics listener of a service (agent or aggregator), open for the length of a block.

``async with open_listener(address, routes, key) as port:`` binds ``address``, serves ``routes``
(:mod:`meshmon.metrics.http`) and samples the loop's lag (:class:`~meshmon.metrics.loop.LoopLag`,
handed in so that the exposition can read it) until the block ends. A bind failure is a
:class:`ListenerError` whose message is one line naming ``key``, for the service to raise as its
own operator error.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from meshmon.metrics.http import Handler, serve_http
from meshmon.metrics.loop import LoopLag

log = logging.getLogger(__name__)


class ListenerError(Exception):
    """The listener cannot be bound; the message names the config key and the fix."""


def listen_error(exc: OSError, key: str, address: tuple[str, int]) -> str:
    """One line naming ``key`` for a listener that cannot be bound."""
    host, port = address
    where = f"TCP port {port} on {host}"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return (f"{key}: {host} is not an address of this host ({exc.strerror}); use one of "
                "its addresses (`ip -brief address`), 127.0.0.1, or 0.0.0.0 for all")
    if exc.errno == errno.EADDRINUSE:
        return (f"{key}: {where} is already in use (another agent or program: `ss -ltnp "
                f"'sport = :{port}'`); stop it or choose another port")  # fmt: skip
    if exc.errno == errno.EACCES:
        return (f"{key}: not allowed to bind {where} (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE); use 1024 or above, e.g. 9108")  # fmt: skip
    return f"{key}: cannot bind {where}: {exc.strerror or exc}"


@asynccontextmanager
async def open_listener(address: tuple[str, int], routes: Mapping[str, Handler], key: str,
                        lag: LoopLag) -> AsyncIterator[int]:  # fmt: skip
    """Serve ``routes`` on ``address`` while the block runs; yields the bound port.

    Raises:
        ListenerError: ``address`` cannot be bound.
    """
    async with trio.open_nursery() as nursery:
        try:
            port: int = await nursery.start(functools.partial(serve_http, address, routes))
        except* OSError as group:
            exc = group.exceptions[0]
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            assert isinstance(exc, OSError)
            raise ListenerError(listen_error(exc, key, address)) from exc
        nursery.start_soon(lag.run)
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, port)
        yield port
        nursery.cancel_scope.cancel()
