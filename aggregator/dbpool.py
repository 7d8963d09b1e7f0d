"""A small bounded pool of synchronous psycopg connections, used from trio through threads.

Theory of operation
-------------------
psycopg's async connection is asyncio-only, so the query API (like the ingest writer) runs
plain synchronous connections in worker threads (``trio.to_thread.run_sync``). A semaphore caps
how many run at once (``size``); idle connections are kept for reuse and opened lazily, so an
aggregator starts even while PostgreSQL is still coming up and recovers by itself when it
comes back. A connection that fails with an operational error (server gone, network cut) is
thrown away and the caller gets :class:`DatabaseUnavailable`; the next call opens a new one.
Connections are in autocommit mode: a function that writes more than one statement opens its
own ``conn.transaction()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio

from aggregator.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_IDLE = psycopg.pq.TransactionStatus.IDLE

T = TypeVar("T")

CONNECT_TIMEOUT = 5
"""Seconds to wait for PostgreSQL to accept a connection before calling it unavailable."""


class Pool:
    """At most ``size`` connections to ``conninfo``, each used by one thread at a time."""

    def __init__(self, conninfo: str, size: int = 4) -> None:
        self.conninfo = conninfo
        self.size = size
        self._limit = trio.CapacityLimiter(size)
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(conn, *args)`` in a worker thread with a pooled connection.

        Raises:
            DatabaseUnavailable: the connection could not be opened or broke.
            psycopg.Error: the statement failed (the connection is kept when it is usable).
        """
        async with self._limit:
            conn = self._idle.pop() if self._idle else None
            box: list[psycopg.Connection[Any] | None] = [conn]
            try:
                return await trio.to_thread.run_sync(self._call, box, fn, args)
            finally:
                kept = box[0]
                if kept is not None and not kept.closed:
                    if self._closed:
                        kept.close()
                    else:
                        self._idle.append(kept)

    def _call(self, box: list[psycopg.Connection[Any] | None], fn: Callable[..., T],
              args: tuple[Any, ...]) -> T:  # fmt: skip
        conn = box[0]
        try:
            if conn is None or conn.closed:
                conn = box[0] = psycopg.connect(self.conninfo, autocommit=True,
                                                connect_timeout=CONNECT_TIMEOUT)  # fmt: skip
            return fn(conn, *args)
        except psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise DatabaseUnavailable(f"database unavailable: {_first_line(exc)}") from exc
        except psycopg.Error:
            # the statement failed (a bug or a constraint): the connection is reusable once no
            # transaction is left open, which autocommit and ``conn.transaction()`` ensure
            if conn is not None and conn.info.transaction_status != _IDLE:
                conn.close()
            raise

    def close(self) -> None:
        """Close the idle connections; connections in use close when they come back."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
