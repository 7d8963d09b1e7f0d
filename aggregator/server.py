"""``meshmon aggregator run``: the service that owns the database and serves HTTPS.

Theory of operation
-------------------
Start-up, in order, each step logged: load and check the aggregator's mesh identity (its
certificate must carry the tag ``aggregator``, or agents would refuse to upload); start the
embedded PostgreSQL under ``data_dir/postgres`` when no database URL is configured; apply the
schema migrations; start the ingest writers, the rollup and retention maintenance, and the
HTTPS server (:mod:`aggregator.https`). ``task_status.started`` receives the bound addresses.

Shut-down (SIGINT/SIGTERM, or the ``shutdown`` event): the listeners close, requests in flight
finish (a few seconds at most), the writers finish the batches in hand, then the embedded
PostgreSQL is stopped. A batch cut off by a hard kill was not acknowledged, so its agent sends
it again: nothing is lost and nothing doubles.

Every failure an operator can fix (certificate, address in use, data directory, database URL)
is a :class:`ServiceError` whose message is one line; :func:`run_command` prints it and returns
exit status 2.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import trio

from aggregator.config import TAG, ServerConfig
from meshmon import pki

log = logging.getLogger("aggregator")

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class ServiceError(Exception):
    """The aggregator cannot run as configured; the message says what to fix."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def load_identity(config: ServerConfig) -> tuple[pki.NodeIdentity, pki.Trust]:
    """The aggregator's mesh identity, checked: valid, from the CA, with the ``aggregator`` tag.

    Raises:
        ServiceError: naming the file and the fix.
    """
    tls = config.tls
    try:
        identity, trust = pki.load_identity(tls.ca_cert, tls.cert, tls.key, tls.crl)
    except pki.PkiError as exc:
        raise ServiceError(f"aggregator.tls: {exc} (the [aggregator.tls] files of the config "
                           "given with -c)") from None  # fmt: skip
    if TAG not in identity.peer.tags:
        raise ServiceError(
            f"{tls.cert}: the certificate of {identity.name!r} lacks the tag {TAG!r}, so agents "
            f"would refuse to upload to it; issue one with: meshmon cert issue --ca CA_DIR "
            f"--name {identity.name} --tag {TAG} --out DIR")  # fmt: skip
    return identity, trust


def embedded_dir(config: ServerConfig) -> Path:
    """Where the embedded PostgreSQL lives."""
    return config.data_dir / "postgres"


def _migrate(url: str) -> Any:
    """Bring the database to the current schema.

    Raises:
        ServiceError: the schema cannot be brought up to date (newer, other variant).
        psycopg.Error: the database cannot be reached.
    """
    from aggregator.schema import SchemaError, migrate

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        try:
            return migrate(conn)
        except SchemaError as exc:
            raise ServiceError(f"database schema: {exc}") from None


def _connect_error(url: str, exc: Exception) -> ServiceError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ServiceError(f"cannot use the database {_redact(url)}: {text}; check database_url "
                        "(or --db), or leave it empty for the embedded PostgreSQL",
                        EXIT_FAILURE)  # fmt: skip


def _redact(url: str) -> str:
    """A conninfo or URL without its password."""
    import re

    url = re.sub(r"(password\s*=\s*)\S+", r"\1***", url)
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


async def run_service(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the aggregator until ``shutdown`` is set or the task is cancelled.

    Raises:
        ServiceError: something an operator must fix (the message says what).
    """
    identity, trust = load_identity(config)  # before anything starts
    from aggregator.app import Services, create_app
    from aggregator.auth import Authenticator, CrlWatch
    from aggregator.dbpool import Pool
    from aggregator.https import serve_https, server_context
    from aggregator.metrics import serve_metrics
    from aggregator.writer import Ingestor, IngestorConfig

    log.info("identity %s (tags %s), CA %s, CRL number %d", identity.name,
             ",".join(identity.peer.tags), config.tls.ca_cert, trust.crl_number)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        observed = await stack.enter_async_context(serve_metrics(config, identity.name,
                                                                 ServiceError))  # fmt: skip
        url = config.database_url
        if not url:
            url = await _start_embedded(config, stack)
        else:
            log.info("using the PostgreSQL server at %s", _redact(url))
        try:
            info = await trio.to_thread.run_sync(_migrate, url)
        except psycopg.Error as exc:
            raise _connect_error(url, exc) from None
        log.info("database schema version %d (%s)", info.version,
                 "TimescaleDB" if info.timescale else "plain PostgreSQL")  # fmt: skip
        pool = observed.pool = Pool(url, config.db_connections)
        stack.callback(pool.close)
        retention = config.retention
        ingestor = Ingestor(url, info, IngestorConfig(
            raw_retention_days=retention.days("raw_days"), processes=config.ingest_processes))
        auth = Authenticator(pool, CrlWatch(trust, config.tls.crl))
        ingestor.on_write, observed.queued = observed.observe_write, ingestor.queued
        services = Services(pool=pool, auth=auth, ingestor=observed.wrap_ingestor(ingestor),
                            query=config.query)  # fmt: skip
        app = observed.wrap_app(create_app(services))
        context = server_context(identity, trust)
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
                await serve_https(app, context, config.address, config.port, shutdown=shutdown,
                                  task_status=task_status)  # fmt: skip
                log.info("requests finished; stopping the writers")
                nursery.cancel_scope.cancel()  # the writers and maintenance run until then

            await nursery.start(ingestor.run)
            await _start_maintenance(nursery, config, url, info, ingestor.busy)
            try:
                bound = await nursery.start(serve)
            except OSError as exc:
                raise _listen_error(config, exc) from None
            urls = [f"https://{host if ':' not in host else f'[{host}]'}:{port}"
                    for host, port in bound]  # fmt: skip
            for url_ in urls:
                log.info("listening on %s (agents: mesh TLS; readers: tokens or mesh "
                         "certificates)", url_)  # fmt: skip
            _write_listening(config, urls)
            observed.listening = bound
            stack.callback(_remove_listening, config)
            task_status.started(bound)
    log.info("stopped")


async def _start_embedded(config: ServerConfig, stack: contextlib.AsyncExitStack) -> str:
    from aggregator.postgres import EmbeddedPostgres, EmbeddedPostgresError

    server = EmbeddedPostgres(embedded_dir(config))
    log.info("starting the embedded PostgreSQL in %s", server.directory)
    try:
        await trio.to_thread.run_sync(server.start)
    except EmbeddedPostgresError as exc:
        raise ServiceError(f"embedded PostgreSQL: {exc}") from None

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            log.info("stopping the embedded PostgreSQL")
            await trio.to_thread.run_sync(server.stop)

    stack.push_async_callback(stop)
    return server.url


async def _start_maintenance(nursery: trio.Nursery, config: ServerConfig, url: str,
                             info: Any, busy: Callable[[], bool]) -> None:  # fmt: skip
    """Rollups and retention: the aggregator's own jobs on plain PostgreSQL, TimescaleDB's
    policies (configured here) on TimescaleDB."""
    from aggregator.rollups import Retention, RollupConfig, Rollups

    r, every = config.retention, config.rollups
    retention = Retention(raw_days=r.days("raw_days"), minute_days=r.days("minute_days"),
                          hour_days=r.days("hour_days"))  # fmt: skip
    jobs = RollupConfig(minute_interval=every.minute_interval, hour_interval=every.hour_interval,
                        maintain_interval=every.maintain_interval)  # fmt: skip
    await nursery.start(Rollups(url, info, retention, jobs, busy).run)
    kept = ", ".join(f"{name.removesuffix('_days')} {getattr(r, name) or 'for ever'}"
                     for name in ("raw_days", "minute_days", "hour_days"))  # fmt: skip
    log.info("rollups and retention running (kept days: %s)", kept)


GC_THRESHOLD0 = 20_000
"""Net container allocations between young-generation collections (Python's default, 700,
runs several a batch of a few thousand series)."""


def _settle_heap() -> None:
    """Once started, leave what the imports and the set-up allocated (a few hundred thousand
    long-lived objects: modules, the ASGI app, pydantic models) out of the cyclic garbage
    collector's passes (``gc.freeze``), and collect the young generation less often: ingest
    allocates and frees containers by the thousand a batch, nearly all of them freed by
    reference counting, and the passes over the whole heap cost the aggregator ~0.5 µs a record
    ingested (``benchmarks.ingest --quick``: ~4.1 -> ~3.6 µs of CPU a record). Only the
    aggregator's own process does this (:func:`run_command`), not a caller of
    :func:`run_service` such as a test."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])


LISTENING = "listening"
"""File in ``data_dir`` with the URLs the running aggregator serves (one a line), so that
``meshmon aggregator status -c CONFIG`` finds it even on a wildcard address or port 0."""


def _write_listening(config: ServerConfig, urls: list[str]) -> None:
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        (config.data_dir / LISTENING).write_text("\n".join(urls) + "\n")
    except OSError as exc:
        log.warning("cannot write %s: %s", config.data_dir / LISTENING, exc)


def _remove_listening(config: ServerConfig) -> None:
    with contextlib.suppress(OSError):
        (config.data_dir / LISTENING).unlink()


def listening_url(config: ServerConfig) -> str | None:
    """The first URL the running aggregator of ``config`` said it serves, if any."""
    try:
        lines = (config.data_dir / LISTENING).read_text().split()
    except OSError:
        return None
    return lines[0] if lines else None


def _listen_error(config: ServerConfig, exc: OSError) -> ServiceError:
    where = f"{config.address}:{config.port}"
    if exc.errno == errno.EADDRINUSE:
        return ServiceError(f"aggregator.port: {where} is in use by another program; stop it or "
                            "choose another port")  # fmt: skip
    if exc.errno == errno.EADDRNOTAVAIL:
        return ServiceError(f"aggregator.address: {config.address} is not an address of this "
                            "host; use one of its addresses or 0.0.0.0")  # fmt: skip
    if exc.errno == errno.EACCES:
        return ServiceError(f"aggregator.port: not allowed to listen on {where} (ports below "
                            "1024 need privileges); choose a port above 1023")  # fmt: skip
    return ServiceError(f"cannot listen on {where}: {exc.strerror or exc}")


# --- the command ------------------------------------------------------------------------------


def run_command(config: ServerConfig, log_level: str = "", log_format: str = "") -> int:
    """Run the aggregator in the foreground until SIGINT/SIGTERM; the exit status. Every
    failure an operator can fix is one ``error:`` line."""
    from meshmon.logs import setup_logging

    fmt = log_format or config.log.format
    if fmt not in ("text", "json"):
        return _error(f"--log-format must be text or json, not {fmt!r}")
    level = log_level or config.log.level
    if level not in ("debug", "info", "warning", "error"):
        return _error(f"--log-level must be debug, info, warning or error, not {level!r}")
    setup_logging(level, fmt)  # type: ignore[arg-type]

    async def main() -> None:
        shutdown = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_on_signal, signals, shutdown, nursery.cancel_scope)

                async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
                                ) -> None:  # fmt: skip
                    await run_service(config, shutdown=shutdown, task_status=task_status)
                    nursery.cancel_scope.cancel()

                await nursery.start(serve)
                _settle_heap()  # this process is the aggregator: its start-up heap is for good

    try:
        trio.run(main)
    except Exception as exc:  # trio wraps errors in ExceptionGroups
        from meshmon.startup import find

        fault = find(exc, ServiceError)
        if fault is not None:
            return _error(str(fault), fault.exit_code)
        logging.getLogger("aggregator").error("the aggregator stopped on an unexpected error",
                                              exc_info=exc)  # fmt: skip
        return _error("the aggregator stopped on an unexpected error; this is a bug: please "
                      "report it with the traceback logged above", EXIT_FAILURE)  # fmt: skip
    return EXIT_OK


async def _on_signal(signals: Any, shutdown: trio.Event, scope: trio.CancelScope) -> None:
    async for signum in signals:
        if shutdown.is_set():
            log.warning("second %s: stopping at once", signal.Signals(signum).name)
            scope.cancel()
            return
        log.info("%s received: shutting down", signal.Signals(signum).name)
        shutdown.set()


def _error(message: str, code: int = EXIT_USAGE) -> int:
    import sys

    print(f"error: {message}", file=sys.stderr)
    return code


# --- direct database access for the CLI ---------------------------------------------------------


@contextlib.contextmanager
def database_url(config: ServerConfig) -> Iterator[str]:
    """A conninfo for the aggregator's database, migrated: ``database_url``, or the embedded
    server (the running one if the aggregator is up, else started for the duration).

    Raises:
        ServiceError: the database cannot be reached or started.
    """
    if config.database_url:
        yield config.database_url
        return
    running = running_embedded_url(embedded_dir(config))
    if running is not None:
        yield running
        return
    from aggregator.postgres import EmbeddedPostgres, EmbeddedPostgresError

    server = EmbeddedPostgres(embedded_dir(config))
    if not (server.pgdata / "PG_VERSION").exists():
        raise ServiceError(f"no aggregator database in {config.data_dir}; start the aggregator "
                           "once (meshmon aggregator run), or pass --data / --db / -c")
    try:
        server.start()
    except EmbeddedPostgresError as exc:
        raise ServiceError(f"embedded PostgreSQL: {exc}") from None
    try:
        yield server.url
    finally:
        server.stop()


def running_embedded_url(directory: Path) -> str | None:
    """The conninfo of the embedded server running in ``directory``, if one is up.

    PostgreSQL's ``postmaster.pid`` names the server's pid, port and socket directory.
    """
    from aggregator.postgres import DEFAULT_DATABASE, SUPERUSER

    try:
        lines = (directory / "pgdata" / "postmaster.pid").read_text().split("\n")
        pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4].strip()
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    host = socket_dir or str(directory)
    return f"host={host} port={port} user={SUPERUSER} dbname={DEFAULT_DATABASE}"


def database_call(config: ServerConfig, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` on the aggregator's database (migrated first)."""
    with database_url(config) as url:
        try:
            _migrate(url)
            return direct_call(url, fn, *args)
        except psycopg.Error as exc:
            raise _connect_error(url, exc) from None


def direct_call(url: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` on one autocommit connection to ``url``."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return fn(conn, *args)
