"""Startup faults: what the OS says when the agent binds and opens, as one line naming the key.

Theory of operation
-------------------
The agent binds its UDP and TCP ports, its UDP echo responder and its control socket, and opens
its ring store under ``node.data_dir``. When one of these fails, the operator needs the config
key to change and what to do, not an ``OSError`` wrapped in trio's exception groups. The agent
catches each failure where it binds or opens (``except*``, since trio's nurseries wrap errors
in :class:`ExceptionGroup`) and raises :class:`AgentError` built here, with the OS error chained
as the cause. The CLI finds the :class:`AgentError` in whatever groups surround it
(:func:`find`) and prints its message as one line.

Callers raise the result ``from`` the group they caught, so the OS error stays chained.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TypeVar

from meshmon.config import ListenConfig, StoreConfig
from meshmon.net import ListenError
from meshmon.store import AsyncRingStore, StoreLocked, open_store

E = TypeVar("E", bound=BaseException)

UNIX_PATH_MAX = 107
"""Longest unix socket path Linux accepts (``sun_path`` is 108 bytes with the final NUL)."""


class AgentError(Exception):
    """The agent cannot start; the message names the config key (``key``) and what to fix."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def find(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``exc`` or in the exception groups nested around it, else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find(inner, kind)
            if found is not None:
                return found
    return None


def _leaf(group: BaseExceptionGroup[E], kind: type[E]) -> E:
    found = find(group, kind)
    assert found is not None, "except* matched, so the group holds one"
    return found


def listen_error(group: BaseExceptionGroup[ListenError], listen: ListenConfig) -> AgentError:
    """The :class:`AgentError` for a UDP or TCP socket of the mesh that cannot be bound."""
    exc = _leaf(group, ListenError)
    key = f"listen.{exc.proto}_port"
    where = f"{exc.proto.upper()} port {exc.port} on {exc.host}"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        key = "listen.address"
        message = (f"listen.address: {exc.host} is not an address of this host ({exc.strerror});"
                   " set listen.address to one of this host's addresses (`ip -brief address`),"
                   " or to 0.0.0.0 together with listen.advertise")  # fmt: skip
    elif exc.errno == errno.EADDRINUSE:
        ss = "ss -ltnp" if exc.proto == "tcp" else "ss -lunp"
        message = (f"{key}: {where} is already in use (by another meshmon agent or another "
                   f"program: `{ss} 'sport = :{exc.port}'`); stop it or set {key} to a free "
                   "port")  # fmt: skip
    elif exc.errno == errno.EACCES:
        message = (f"{key}: not allowed to bind {where} (ports below 1024 need root or "
                   f"CAP_NET_BIND_SERVICE); set {key} to 1024 or above")  # fmt: skip
    else:
        message = (f"{key}: cannot bind {where}: {exc.strerror}; check listen.address and "
                   f"{key}")  # fmt: skip
    return AgentError(message, key)


def echo_error(group: BaseExceptionGroup[OSError], host: str, port: int) -> AgentError:
    """The :class:`AgentError` for the UDP echo responder (``listen.udp_port`` + 1)."""
    exc = _leaf(group, OSError)
    where = f"UDP port {port} on {host} (the UDP echo responder uses listen.udp_port + 1)"
    if exc.errno == errno.EADDRINUSE:
        problem = "is already in use"
    else:
        problem = f"cannot be bound: {exc.strerror or exc}"
    message = (f"listen.udp_port: {where} {problem}; free that port or move listen.udp_port "
               "so that it and the next port are free")  # fmt: skip
    return AgentError(message, "listen.udp_port")


def _data_dir_key() -> str:
    return ("node.data_dir (set by MESHMON_DATA_DIR)" if os.environ.get("MESHMON_DATA_DIR")
            else "node.data_dir")  # fmt: skip


def data_dir_error(exc: OSError, data_dir: Path) -> AgentError:
    """The :class:`AgentError` for a data directory that cannot be created or written."""
    key = _data_dir_key()
    path = exc.filename or data_dir
    if exc.errno == errno.EROFS:
        problem = f"{data_dir} is on a read-only file system"
        fix = "point node.data_dir at a writable directory, or mount it read-write"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        problem = f"permission denied on {path}"
        fix = (f"make {data_dir} writable by this user (uid {os.getuid()}), or point "
               "node.data_dir elsewhere")  # fmt: skip
    elif exc.errno == errno.ENOTDIR:
        problem = f"cannot create {data_dir}: part of that path is a file, not a directory"
        fix = "point node.data_dir at a directory"
    elif exc.errno == errno.ENOSPC:
        problem = f"no space left on the device of {data_dir}"
        fix = "free some space or point node.data_dir at another disk"
    else:
        problem = f"cannot create or open {path}: {exc.strerror or exc}"
        fix = "check node.data_dir"
    return AgentError(f"{key}: {problem}; {fix}", "node.data_dir")


@asynccontextmanager
async def open_data_store(data_dir: Path, config: StoreConfig) -> AsyncIterator[AsyncRingStore]:
    """Open the ring store in ``data_dir/store``; opening failures become :class:`AgentError`.

    Only opening is translated: errors raised later inside the ``async with`` block pass as
    they are.
    """
    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(open_store(data_dir / "store", config))
        except* StoreLocked as group:
            raise AgentError(
                f"{_data_dir_key()}: {data_dir} is in use by another running meshmon agent "
                "(its store is locked); stop that agent, or give this one its own "
                "node.data_dir", "node.data_dir") from group
        except* OSError as group:
            raise data_dir_error(_leaf(group, OSError), data_dir) from group
        yield store


def control_socket_error(group: BaseExceptionGroup[OSError], path: Path,
                         configured: bool) -> AgentError:  # fmt: skip
    """The :class:`AgentError` for a control socket that cannot be bound."""
    exc = _leaf(group, OSError)
    key = "control.socket" if configured else _data_dir_key()
    where = "control.socket" if configured else "node.data_dir (the socket is its control.sock)"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        message = (f"{key}: the control socket path {path} is {len(os.fsencode(path))} bytes, "
                   f"longer than a unix socket path may be ({UNIX_PATH_MAX}); set "
                   "control.socket to a shorter path")  # fmt: skip
    else:
        message = (f"{key}: cannot create the control socket {path}: {exc.strerror or exc}; "
                   f"check {where}")  # fmt: skip
    return AgentError(message, key)
