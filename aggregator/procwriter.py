"""Ingest writers in processes of their own: an upload's decoding and COPY off the server's
interpreter lock.

Theory of operation
-------------------
Reading a batch (:func:`meshmon.wire.ingest.decode_batch`: an agent's frames or columns into
columns) and building its COPY stream (:mod:`aggregator.copybin`) are Python, ~2-3 µs a
record: in the server's own process they share one interpreter lock with TLS, HTTP and each
other, so ingest stops at what one core does while PostgreSQL and the other cores wait. Each
:class:`WriterProcess` is a child process with its own :class:`~aggregator.writer.BatchWriter`
(and so its own PostgreSQL connection); the server hands it a request body as it came and the
name in the client certificate, and it answers with the acknowledgement or the refusal. The
exactly-once rules are the writer's, unchanged: one transaction per batch.

The child is started with ``spawn`` (a fresh interpreter: nothing of the server's threads or
event loop is copied) and asks the kernel to kill it when the server dies
(``PR_SET_PDEATHSIG``), so that a killed aggregator leaves no writer behind; it also stops at
the end of its pipe. A child that dies is started again for the next batch; the batch it had
gets :class:`~aggregator.errors.DatabaseUnavailable` (the agent retries; nothing or all of it
was committed).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from aggregator.errors import DatabaseUnavailable, IngestRefused, not_the_peer
from aggregator.schema import SchemaInfo
from meshmon.wire import ingest as wire

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the pipe's end stops it
        pass


def _child(conn: Connection, conninfo: str, schema: SchemaInfo, config: Any,
           level: int) -> None:  # fmt: skip
    """The child's loop: (peer, body, encoding) in, an answer out (see :func:`handle`)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops it through the pipe
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from aggregator.writer import BatchWriter
    from meshmon.runner import tune_gc

    writer = BatchWriter(conninfo, schema, config)
    tune_gc()
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                break
            if job is None:
                break
            conn.send(handle(writer, *job))
    finally:
        writer.close()


def handle(writer: Any, peer: str, body: bytes, encoding: str | None) -> tuple[Any, ...]:
    """Decode and write one request body; the answer as a tuple a pipe carries:
    ``("ok", high_water, inserted, records, seconds)``, ``("bad", message, status)`` (400, 413),
    ``("refused", status, message, extra)``, ``("unavailable", message)``."""
    started = time.perf_counter()
    try:
        batch = wire.decode_batch(body, encoding)
    except wire.BatchError as exc:
        return ("bad", str(exc), exc.status)
    try:
        if batch.agent != peer:
            raise not_the_peer(batch.agent, peer)
        ack = writer.write(peer, batch)
    except IngestRefused as exc:
        return ("refused", exc.status, exc.message, exc.extra)
    except DatabaseUnavailable as exc:
        return ("unavailable", str(exc))
    except Exception as exc:  # a bug must not take the writer down with it
        log.exception("ingest of a batch from %s failed", peer)
        return ("unavailable", f"database unavailable: internal error ({exc})")
    count = len(batch.records) if isinstance(batch, wire.Batch) else batch.count
    return ("ok", ack.high_water, ack.inserted, count, time.perf_counter() - started)


def answer(reply: tuple[Any, ...]) -> tuple[wire.Ack, int, float]:
    """(ack, records, seconds) of a child's answer.

    Raises:
        wire.BatchError: the body does not decode (400) or is too large (413).
        IngestRefused: the batch is refused (403, 409, 422...).
        DatabaseUnavailable: PostgreSQL is down or busy, or the child failed.
    """
    kind = reply[0]
    if kind == "ok":
        return wire.Ack(high_water=reply[1], inserted=reply[2]), reply[3], reply[4]
    if kind == "bad":
        raise wire.BatchError(reply[1], reply[2])
    if kind == "refused":
        raise IngestRefused(reply[1], reply[2], **reply[3])
    raise DatabaseUnavailable(reply[1])


class WriterProcess:
    """One child writer; :meth:`call` from one thread at a time (it blocks on the pipe)."""

    def __init__(self, conninfo: str, schema: SchemaInfo, config: Any) -> None:
        self.conninfo, self.schema, self.config = conninfo, schema, config
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _start(self) -> Connection:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, name="meshmon-ingest-writer", daemon=True,
                           args=(child, self.conninfo, self.schema, self.config,
                                 logging.getLogger().getEffectiveLevel()))  # fmt: skip
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        return parent

    def start(self) -> None:
        """Start the child now (else on the first batch)."""
        with self._lock:
            if self._conn is None:
                self._start()

    def call(self, peer: str, body: bytes, encoding: str | None) -> tuple[Any, ...]:
        """Hand a body to the child and wait for its answer (see :func:`handle`)."""
        with self._lock:
            conn = self._conn or self._start()
            try:
                conn.send((peer, body, encoding))
                return conn.recv()  # type: ignore[no-any-return]
            except (EOFError, OSError) as exc:
                self._reap()
                log.warning("an ingest writer process ended (%s); starting another", exc)
                return ("unavailable", "database unavailable: the ingest writer process "
                        "ended; retry")  # fmt: skip

    def _reap(self) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def close(self) -> None:
        """Stop the child (it finishes the batch in hand first)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(None)
            self._reap()
