"""``meshmon demo``: a real local mesh on this machine, with a fresh CA.

Creates ``DIR/ca``, one folder per agent with its certificate and config, starts each agent as
its own process on 127.0.0.2, 127.0.0.3, ... (the first is every other's seed), relays their
output and stops them all on Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshmon import pki

BASE_PORT = 7946


def agent_config(name: str, address: str, port: int, seeds: list[str], tags: list[str]) -> str:
    """The TOML config of one demo agent (paths relative to its folder)."""
    seed_list = ", ".join(f'"{s}"' for s in seeds)
    tag_list = ", ".join(f'"{t}"' for t in tags)
    return f"""\
# meshmon demo agent {name}
[node]
name = "{name}"
tags = [{tag_list}]
data_dir = "data"

[listen]
address = "{address}"
udp_port = {port}
tcp_port = {port}

[mesh]
seeds = [{seed_list}]
profile = "local"

[tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"
"""


def prepare(directory: Path, count: int) -> list[Path]:
    """Make a fresh CA and ``count`` agent folders; returns their config paths."""
    if directory.exists():
        shutil.rmtree(directory)
    pki.init_ca(directory / "ca")
    configs = []
    seed = f"127.0.0.2:{BASE_PORT}"
    for i in range(count):
        name = f"agent-{i + 1}"
        address = f"127.0.0.{i + 2}"
        folder = directory / name
        tags = ["demo", "odd" if i % 2 == 0 else "even"]
        pki.issue_cert(directory / "ca", name, folder / "certs", tags=tags, ips=[address])
        seeds = [] if i == 0 else [seed]
        path = folder / "agent.toml"
        path.write_text(agent_config(name, address, BASE_PORT, seeds, tags))
        configs.append(path)
    return configs


def run_demo(directory: Path, count: int) -> None:
    """Start the demo mesh and wait for Ctrl-C."""
    configs = prepare(directory.absolute(), count)
    print(f"meshmon demo: {count} agents, CA and configs in {directory}/", flush=True)
    procs = [
        subprocess.Popen([sys.executable, "-m", "meshmon", "agent", "run", "--config", str(c)])
        for c in configs
    ]
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [c.parent.name for c, p in zip(configs, procs, strict=True) if p.poll()]
        print(f"meshmon demo: agent(s) exited early: {', '.join(failed)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nmeshmon demo: stopping agents", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
