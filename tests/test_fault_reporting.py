"""How faults are worded and counted, without starting agent processes.

Startup errors are pure functions of the OS error and the config; reload compares two configs;
the TLS server's admission runs on real loopback sockets inside this process.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from meshmon import pki
from meshmon.config import AgentConfig, ListenConfig, config_from_dict
from meshmon.net import Admission, ListenError, serve_mtls
from meshmon.runner import restart_only_changes
from meshmon.startup import AgentError, data_dir_error, find, listen_error
from tests.conftest import Mesh

# --- startup wording -------------------------------------------------------------------------


def group_of(exc: BaseException) -> BaseExceptionGroup[Any]:
    """Wrapped twice, as an error from inside nested trio nurseries arrives."""
    return ExceptionGroup("outer", [ExceptionGroup("inner", [exc])])  # type: ignore[list-item]


def test_find_digs_through_nested_groups() -> None:
    error = AgentError("listen.address: ...", "listen.address")
    wrapped = ExceptionGroup("x", [ValueError("other"), ExceptionGroup("y", [error])])
    assert find(wrapped, AgentError) is error
    assert find(ValueError("alone"), AgentError) is None


@pytest.mark.parametrize(("proto", "code", "key", "words"), [
    ("udp", errno.EADDRNOTAVAIL, "listen.address", "not an address of this host"),
    ("tcp", errno.EADDRNOTAVAIL, "listen.address", "not an address of this host"),
    ("tcp", errno.EADDRINUSE, "listen.tcp_port", "already in use"),
    ("udp", errno.EADDRINUSE, "listen.udp_port", "already in use"),
    ("tcp", errno.EACCES, "listen.tcp_port", "CAP_NET_BIND_SERVICE"),
    ("udp", errno.EINVAL, "listen.udp_port", "cannot bind"),
])  # fmt: skip
def test_listen_errors_name_the_key(proto: str, code: int, key: str, words: str) -> None:
    exc = ListenError(proto, "10.1.2.3", 7946, OSError(code, "the OS says no"))
    error = listen_error(group_of(exc), ListenConfig(address="10.1.2.3"))
    assert error.key == key
    assert str(error).startswith(f"{key}: ") and words in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(("code", "words"), [
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.ENOTDIR, "not a directory"),
    (errno.ENOSPC, "no space left"),
    (errno.EIO, "cannot create or open"),
])  # fmt: skip
def test_data_dir_errors_name_the_key(code: int, words: str, tmp_path: Path) -> None:
    error = data_dir_error(OSError(code, "the OS says no", str(tmp_path / "x")), tmp_path)
    assert error.key == "node.data_dir"
    assert str(error).startswith("node.data_dir: ") and words in str(error)


# --- reload ----------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "node": {"name": "n1", "data_dir": "data"},
    "listen": {"address": "127.0.0.2"},
    "checks": [{"name": "c1", "kind": "ping", "targets": ["127.0.0.1"]}],
}


def config_with(**sections: dict[str, Any]) -> AgentConfig:
    data = {k: dict(v) if isinstance(v, dict) else list(v) for k, v in BASE.items()}
    for section, values in sections.items():
        if section == "checks":
            data["checks"] = values["items"]
        else:
            data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data, Path("/srv/meshmon"))


@pytest.mark.parametrize(("change", "keys"), [
    ({}, []),
    ({"checks": {"items": []}}, []),
    ({"checks": {"items": [{"name": "c2", "kind": "tcp", "targets": ["127.0.0.1:22"]}]}}, []),
    ({"mesh": {"profile": "wan"}}, ["mesh.profile"]),
    ({"listen": {"udp_port": 9000, "tcp_port": 9001}}, ["listen.tcp_port", "listen.udp_port"]),
    ({"node": {"name": "n2"}}, ["node.name"]),
    ({"node": {"data_dir": "elsewhere"}}, ["node.data_dir"]),
    ({"tls": {"cert": "other.crt"}}, ["tls.cert"]),
    ({"store": {"max_bytes": "64MiB"}}, ["store.max_bytes"]),
    ({"mesh": {"seeds": ["127.0.0.3:7946"]}, "log": {"level": "debug"}},
     ["log.level", "mesh.seeds"]),
])  # fmt: skip
def test_restart_only_changes(change: dict[str, dict[str, Any]], keys: list[str]) -> None:
    assert restart_only_changes(config_with(), config_with(**change)) == keys


# --- strangers on the TLS port ---------------------------------------------------------------

HANDSHAKE_TIMEOUT = 0.3


class WatchedAdmission(Admission):
    """Sets ``bumped`` on every refused connection, so the test waits for the event itself."""

    def __init__(self) -> None:
        super().__init__()
        self.bumped = trio.Event()

    def turn_away(self, kind: str, remote: tuple[str, int], **details: Any) -> None:
        super().turn_away(kind, remote, **details)
        self.bumped.set()


async def test_admission_counts_strangers_and_logs_each_kind_once(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    identity, trust = mesh.identity(mesh.node("server"))
    admission = WatchedAdmission()

    async def handler(conn: object) -> None:
        raise AssertionError("no stranger may reach the handler")

    def connect(port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=5)

    async def counted(kind: str, n: int) -> None:
        while admission.counts[kind] < n:
            admission.bumped = trio.Event()
            await admission.bumped.wait()

    caplog.set_level(logging.DEBUG, logger="meshmon.net.tls")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(
                serve_mtls, handler, "127.0.0.1", 0, lambda: pki.server_context(identity, trust),
                trust, HANDSHAKE_TIMEOUT, admission=admission))  # fmt: skip
            port = listeners[0].socket.getsockname()[1]
            for _ in range(20):
                connect(port).close()
            await counted("connect_only", 20)
            idle = [connect(port) for _ in range(10)]
            await counted("idle", 10)
            for sock in idle:
                sock.close()
            for _ in range(5):
                with connect(port) as sock:
                    sock.sendall(b"\x00\x01binary junk")
            await counted("not_tls", 5)
            nursery.cancel_scope.cancel()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(r.getMessage().split(": ", 1)[1][:30] for r in loud) == sorted([
        "a client connected and sent no", "a client spoke something other"])
    assert "its first byte was 0x00" in caplog.text
    assert "TooSlowError" not in caplog.text
    debug = [r for r in caplog.records if "connect-only check" in r.getMessage()]
    assert len(debug) == 20 and all(r.levelno == logging.DEBUG for r in debug)


async def test_tcp_bind_failure_is_a_listen_error(mesh: Mesh) -> None:
    identity, trust = mesh.identity(mesh.node("server"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_mtls, lambda c: None, "127.0.0.1", port,
                                    lambda: pki.server_context(identity, trust), trust)
    error = find(info.value, ListenError)
    assert error is not None and error.proto == "tcp" and error.errno == errno.EADDRINUSE
