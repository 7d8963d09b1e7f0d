"""Real agent processes for benchmarks: a CA, configs, start/stop, and /proc readings.

The benchmarks that judge the agent's cost run ``python -m meshmon agent run`` exactly as an
operator does, and read what the kernel says about the process (CPU ticks, resident set)
rather than anything the agent reports about itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from meshmon import pki
from meshmon.control import ControlClient, ControlError

T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             interval: float = 0.1) -> T:  # fmt: skip
    """Poll ``probe`` until truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (ControlError, OSError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Proc:
    """One agent process and its folder."""

    name: str
    address: str
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api(self, endpoint: str, **params: Any) -> Any:
        client = ControlClient(self.folder / "data" / "control.sock", timeout=5)
        try:
            return client.get(endpoint, **params)
        finally:
            client.close()

    def log_text(self) -> str:
        path = self.folder / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def compile_package() -> None:
    """Byte-compile meshmon as an install does (pip writes ``__pycache__``), so that agents
    started from a source checkout, with ``PYTHONDONTWRITEBYTECODE`` set or not, do not each
    compile every module at start: ~0.1 s of CPU per process that no installed agent pays."""
    import compileall

    import meshmon

    compileall.compile_dir(Path(meshmon.__file__).parent, quiet=1)


class Mesh:
    """A CA under ``root`` and agents on 127.0.0.2, .3, ... sharing ``port``."""

    def __init__(self, root: Path, port: int = 27946) -> None:
        self.root = root
        self.port = port
        compile_package()
        pki.init_ca(root / "ca")
        self.procs: list[Proc] = []

    def config(self, name: str, address: str, seeds: Sequence[str], extra: str) -> str:
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        return f"""\
[node]
name = "{name}"
data_dir = "data"
[listen]
address = "{address}"
udp_port = {self.port}
tcp_port = {self.port}
[mesh]
seeds = [{seed_list}]
profile = "local"
[tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"
[log]
level = "warning"
{extra}
"""

    def prepare(self, name: str, host: int, seeds: Sequence[str] = (), extra: str = "") -> Path:
        """Certificate and config of one agent; returns its folder."""
        address = f"127.0.0.{host}"
        folder = self.root / name
        pki.issue_cert(self.root / "ca", name, folder / "certs", ips=[address])
        (folder / "agent.toml").write_text(self.config(name, address, seeds, extra))
        return folder

    def start(self, name: str, host: int, seeds: Sequence[str] = (), extra: str = "") -> Proc:
        """Prepare and launch one agent."""
        self.prepare(name, host, seeds, extra)
        return self.launch(name, host)

    def launch(self, name: str, host: int) -> Proc:
        """Start a prepared agent's process."""
        address = f"127.0.0.{host}"
        folder = self.root / name
        with (folder / "agent.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshmon", "agent", "run", "-c",
                 str(folder / "agent.toml")],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        p = Proc(name, address, folder, proc)
        self.procs.append(p)
        return p

    def wait_up(self, p: Proc, timeout: float = 60.0) -> None:
        def up() -> bool:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited:\n{p.log_text()[-2000:]}")
            return bool(p.api("status"))

        wait_for(f"{p.name} to answer its control API", up, timeout)

    def close(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.stop()
