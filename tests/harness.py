"""Real agent processes on 127.0.0.x for integration tests.

``LocalMesh`` makes a CA, one folder per agent (certificate, config, data), starts each agent
as its own ``python -m meshmon agent run`` process and talks to it through the control API,
exactly as an operator would. Waiting is done by polling the agent's own answers against a
deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshmon import pki
from meshmon.control import ControlClient, ControlError

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Call ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ControlError as exc:  # not answering yet: keep waiting, remember why
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(interval)  # polling an external process: there is no event to wait on
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class AgentProc:
    """One agent: its folder, config and process."""

    name: str
    address: str
    port: int
    folder: Path
    extra_config: str = ""
    seeds: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    module: str = "meshmon"
    """What ``python -m`` runs (a test may wrap the CLI, see ``tests/liar_agent.py``)."""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.folder / "agent.toml"

    @property
    def socket(self) -> Path:
        return self.folder / "data" / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "agent.log"

    def write_config(self) -> None:
        seeds = ", ".join(f'"{s}"' for s in self.seeds)
        tags = ", ".join(f'"{t}"' for t in self.tags)
        self.config_path.write_text(f"""\
[node]
name = "{self.name}"
tags = [{tags}]
data_dir = "data"
[listen]
address = "{self.address}"
udp_port = {self.port}
tcp_port = {self.port}
[mesh]
seeds = [{seeds}]
profile = "local"
[tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"
[log]
level = "debug"
{self.extra_config}
""")

    def start(self) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "agent", "run", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM and wait: a graceful leave."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def api(self, endpoint: str, **params: Any) -> Any:
        client = ControlClient(self.socket, timeout=3)
        try:
            return client.get(endpoint, **params)
        finally:
            client.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def member_states(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.api("members")}


class LocalMesh:
    """A CA and agents on 127.0.0.2, .3, ... sharing one port number."""

    def __init__(self, root: Path, port: int = 17946) -> None:
        self.root = root
        self.port = port
        self.ca_dir = root / "ca"
        pki.init_ca(self.ca_dir)
        self.agents: dict[str, AgentProc] = {}

    def add(self, name: str, host: int, seeds: list[str] | None = None,
            tags: list[str] | None = None, extra_config: str = "",
            ca_dir: Path | None = None) -> AgentProc:
        address = f"127.0.0.{host}"
        folder = self.root / name
        pki.issue_cert(ca_dir or self.ca_dir, name, folder / "certs", tags=tags or [],
                       ips=[address])
        agent = AgentProc(name, address, self.port, folder, extra_config, seeds or [],
                          tags or [])
        self.agents[name] = agent
        return agent

    def seed_of(self, name: str) -> str:
        agent = self.agents[name]
        return f"{agent.address}:{agent.port}"

    def wait_up(self, agent: AgentProc, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not agent.running():
                raise AssertionError(f"{agent.name} exited:\n{agent.log_text()[-3000:]}")
            return bool(agent.api("status"))

        wait_for(f"{agent.name} to answer its control API", up, timeout)

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.running():
                agent.stop()
