"""Startup faults of a real ``meshmon agent run``: one ``error:`` line naming the key, exit 2.

Each case runs the agent as an operator would, on 127.0.0.1 with ports chosen by the kernel or
held busy by the test, and checks what the operator sees: no traceback, exactly one line that
starts with ``error:`` and names the config key to change, and exit code 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshmon import pki
from meshmon.control import ControlClient
from tests.harness import wait_for

EXIT_USAGE = 2
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
"""The agent under test is this checkout's, whatever folder the process starts in."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the certificate of node ``n1``, shared by every case (they only read them)."""
    root = tmp_path_factory.mktemp("faults-pki")
    pki.init_ca(root / "ca")
    pki.issue_cert(root / "ca", "n1", root / "n1", ips=["127.0.0.1", "192.0.2.1"])
    return root / "n1"


def write_config(folder: Path, certs: Path, *, address: str = "127.0.0.1", udp_port: int = 0,
                 tcp_port: int = 0, data_dir: str = "data", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(f"""\
[node]
name = "n1"
data_dir = "{data_dir}"
[listen]
address = "{address}"
udp_port = {udp_port}
tcp_port = {tcp_port}
[mesh]
profile = "local"
[tls]
ca_cert = "{certs / 'ca.crt'}"
cert = "{certs / 'node.crt'}"
key = "{certs / 'node.key'}"
crl = "{certs / 'crl.pem'}"
{extra}
""")
    return path


def agent_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "meshmon", "agent", "run", "-c", str(config)]


def run_agent(config: Path, cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd or agent_cmd(config), capture_output=True, text=True, timeout=60,
                          cwd=config.parent, env=ENV)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert proc.returncode == EXIT_USAGE, output
    return errors[0]


def test_listen_address_not_on_this_host(tmp_path: Path, certs: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no host; binding fails before any packet could be sent
    proc = run_agent(write_config(tmp_path, certs, address="192.0.2.1"))
    line = assert_one_line_error(proc, "listen.address", "192.0.2.1")
    assert "not an address of this host" in line


@pytest.fixture
def busy_tcp_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def busy_udp_port() -> Iterator[int]:
    with socket.socket(type=socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_tcp_port_in_use(tmp_path: Path, certs: Path, busy_tcp_port: int) -> None:
    proc = run_agent(write_config(tmp_path, certs, tcp_port=busy_tcp_port))
    line = assert_one_line_error(proc, "listen.tcp_port", str(busy_tcp_port))
    assert "already in use" in line


def test_udp_port_in_use(tmp_path: Path, certs: Path, busy_udp_port: int) -> None:
    proc = run_agent(write_config(tmp_path, certs, udp_port=busy_udp_port))
    line = assert_one_line_error(proc, "listen.udp_port", str(busy_udp_port))
    assert "already in use" in line


def test_data_dir_that_cannot_be_created(tmp_path: Path, certs: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    proc = run_agent(write_config(tmp_path, certs, data_dir="a-file/data"))
    line = assert_one_line_error(proc, "node.data_dir", str(tmp_path / "a-file"))
    assert "is not a folder" in line


def test_read_only_data_dir(tmp_path: Path, certs: Path) -> None:
    """The data_dir is a read-only bind mount, made in a private mount namespace (as root)."""
    data = tmp_path / "ro-data"
    data.mkdir()
    config = write_config(tmp_path, certs, data_dir=str(data))
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to make a read-only mount")
    mount = f"mount --bind {data} {data} && mount -o remount,bind,ro {data}"
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"{mount} && ! touch {data}/x"],
                           capture_output=True, timeout=30)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    # sh runs the mount, then execs the agent command given as its positional parameters
    wrapped = [unshare, "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *agent_cmd(config)]
    proc = run_agent(config, wrapped)
    line = assert_one_line_error(proc, "node.data_dir", str(data))
    assert "read-only" in line


def test_second_agent_on_the_same_data_dir(tmp_path: Path, certs: Path) -> None:
    first_cfg = write_config(tmp_path / "first", certs, data_dir=str(tmp_path / "shared"))
    second_cfg = write_config(tmp_path / "second", certs, data_dir=str(tmp_path / "shared"))
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(agent_cmd(first_cfg), stdout=log, stderr=subprocess.STDOUT,
                             env=ENV)  # fmt: skip
    sock = tmp_path / "shared" / "control.sock"
    try:
        def first_up() -> bool:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            client = ControlClient(sock, timeout=2)
            try:
                return bool(client.get("status"))
            finally:
                client.close()

        wait_for("the first agent to answer", first_up)
        proc = run_agent(second_cfg)
        line = assert_one_line_error(proc, "node.data_dir", str(tmp_path / "shared"))
        assert "in use by another running meshmon agent" in line
        assert first_up()  # the refused second agent left the first one (and its socket) alone
    finally:
        first.terminate()
        assert first.wait(timeout=15) == 0
        log.close()


def test_control_socket_path_too_long(tmp_path: Path, certs: Path) -> None:
    long_path = tmp_path / ("s" * 120) / "control.sock"
    proc = run_agent(write_config(tmp_path, certs, extra=f'[control]\nsocket = "{long_path}"\n'))
    line = assert_one_line_error(proc, "control.socket")
    assert "unix socket path" in line.lower() and "set control.socket to a shorter path" in line


def run_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshmon", "demo", "--agents", "1", "--dir",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=ENV)  # fmt: skip


def test_demo_with_its_web_port_busy(tmp_path: Path) -> None:
    from meshmon.demo import SERVICE_PORT

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already busy (another demo): just as good
            busy.bind(("127.0.0.1", SERVICE_PORT))
            busy.listen()
        proc = run_demo(tmp_path)
    line = assert_one_line_error(proc, f"127.0.0.1:{SERVICE_PORT}")
    assert "another meshmon demo" in line


def test_demo_refuses_the_folder_of_a_running_demo(tmp_path: Path) -> None:
    lock = tmp_path / "demo" / "agent-1" / "data" / "store" / "LOCK"
    lock.parent.mkdir(parents=True)
    (tmp_path / "demo" / "agent-1" / "agent.log").write_text("precious\n")
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the running demo's agent does
        proc = run_demo(tmp_path)
    line = assert_one_line_error(proc, str(tmp_path / "demo"), "--dir")
    assert "still running" in line
    assert (tmp_path / "demo" / "agent-1" / "agent.log").read_text() == "precious\n"
