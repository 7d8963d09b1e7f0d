"""``meshmon demo``: a real local mesh on this machine, with a fresh CA, shown live.

Creates ``DIR/ca`` and one folder per agent (certificate, config, data, log), starts a tiny
HTTP service on 127.0.0.1 for the agents to watch, starts each agent as its own process on
127.0.0.2, 127.0.0.3, ... (the first is every other's seed), and refreshes a table of the mesh
from the agents' control APIs until Ctrl-C, which stops everything cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshmon import pki
from meshmon.control import ControlClient, ControlError

BASE_PORT = 7946
SERVICE_PORT = 18080
AGGREGATOR_PORT = 17947
AGGREGATOR_URL = f"https://127.0.0.1:{AGGREGATOR_PORT}"


class DemoError(Exception):
    """The demo cannot start (``exit_code`` 2) or an agent of it stopped (1); the message says
    what to do."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def agent_config(name: str, address: str, seeds: list[str], tags: list[str],
                 sync: bool = False) -> str:  # fmt: skip
    """The TOML config of one demo agent (paths relative to its folder). Only the seed names
    the aggregator (``sync``); the others learn it through gossip."""
    seed_list = ", ".join(f'"{s}"' for s in seeds)
    tag_list = ", ".join(f'"{t}"' for t in tags)
    sync_table = (f'\n[sync]\nurls = ["{AGGREGATOR_URL}"]\nmax_delay = "5s"\n' if sync
                  else "\n# [sync] is learnt from the seed's gossip: no aggregator URL here\n")
    return f"""\
# meshmon demo agent {name}
[node]
name = "{name}"
tags = [{tag_list}]
data_dir = "data"

[listen]
address = "{address}"
udp_port = {BASE_PORT}
tcp_port = {BASE_PORT}

[mesh]
seeds = [{seed_list}]
profile = "local"

[tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"

[store]
max_bytes = "16MiB"
segment_bytes = "1MiB"
{sync_table}
# every agent pings every other agent
[[checks]]
name = "mesh-ping"
kind = "ping"
interval = "5s"
timeout = "2s"
target_tags = ["demo"]
replicas = 0
params = {{ count = 3, interval = 0.02 }}

# two agents watch the local web service
[[checks]]
name = "web-http"
kind = "http"
interval = "5s"
timeout = "2s"
targets = ["http://127.0.0.1:{SERVICE_PORT}/"]
replicas = 2
params = {{ expect_status = 200 }}

# alerts: a target is down when a majority of its probers agree (no receivers in the demo:
# incidents show in `meshmon alerts` and the TUI's Alerts screen)
[[alerts.rules]]
name = "agent-unreachable"
check = "mesh-ping"
condition = "loss"
fire = 50
resolve = 10
for = "15s"

[[alerts.rules]]
name = "web-down"
check = "web-*"
condition = "failures"
fire = 2
for = "10s"

[[checks]]
name = "web-tcp"
kind = "tcp"
interval = "5s"
timeout = "2s"
targets = ["127.0.0.1:{SERVICE_PORT}"]
replicas = 2
"""


def prepare(directory: Path, count: int) -> list[Path]:
    """Make a fresh CA and ``count`` agent folders; returns their config paths.

    Raises:
        DemoError: ``directory`` belongs to a demo that is still running, or cannot be made.
    """
    for lock in directory.glob("agent-*/data/store/LOCK"):
        if _locked(lock):
            raise DemoError(f"{directory} belongs to a meshmon demo that is still running "
                            f"({lock.parent.parent.parent.name} holds its store); stop it with "
                            "Ctrl-C, or pass another --dir")  # fmt: skip
    try:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    except OSError as exc:
        raise DemoError(f"--dir {directory}: cannot make a fresh folder there "
                        f"({exc.strerror or exc}); pass another --dir") from exc
    pki.init_ca(directory / "ca")
    aggregator_config(directory)
    configs = []
    seed = f"127.0.0.2:{BASE_PORT}"
    for i in range(count):
        name = f"agent-{i + 1}"
        address = f"127.0.0.{i + 2}"
        folder = directory / name
        tags = ["demo", "odd" if i % 2 == 0 else "even"]
        pki.issue_cert(directory / "ca", name, folder / "certs", tags=tags, ips=[address])
        path = folder / "agent.toml"
        path.write_text(agent_config(name, address, [] if i == 0 else [seed], tags,
                                     sync=i == 0))
        configs.append(path)
    return configs


def aggregator_data(directory: Path) -> Path:
    """Where the demo aggregator keeps its embedded PostgreSQL: in the demo folder, unless the
    server's own user (as root, PostgreSQL runs as ``postgres``) cannot reach it there."""
    wanted = directory / "aggregator" / "data"
    if os.geteuid() != 0:
        return wanted
    from aggregator.pghost import server_user, unreachable_ancestor

    if unreachable_ancestor(wanted, server_user()) is None:
        return wanted
    return Path("/var/tmp") / f"meshmon-demo-{abs(hash(str(directory))) % 10**8}" / "aggregator"


def aggregator_config(directory: Path) -> Path:
    """The demo aggregator's certificate (tagged ``aggregator``) and config."""
    folder = directory / "aggregator"
    pki.issue_cert(directory / "ca", "aggregator", folder / "certs", tags=["aggregator"],
                   ips=["127.0.0.1"])  # fmt: skip
    data = aggregator_data(directory)
    if data.exists() and not data.is_relative_to(directory):
        shutil.rmtree(data)  # a fresh demo starts with an empty history
    path = folder / "aggregator.toml"
    path.write_text(f"""\
# meshmon demo aggregator: a private PostgreSQL under data_dir, HTTPS with the mesh's mTLS
[aggregator]
address = "127.0.0.1"
port = {AGGREGATOR_PORT}
data_dir = "{data}"

[aggregator.tls]
ca_cert = "certs/ca.crt"
cert = "certs/node.crt"
key = "certs/node.key"
crl = "certs/crl.pem"
""")
    return path


def aggregator_view(directory: Path) -> dict[str, Any]:
    """What the aggregator holds (asked with the aggregator's own mesh certificate)."""
    from aggregator.client import AggregatorClient, ClientError

    certs = directory / "aggregator" / "certs"
    try:
        client = AggregatorClient(AGGREGATOR_URL, ca=certs / "ca.crt", cert=certs / "node.crt",
                                  key=certs / "node.key", timeout=2.0)  # fmt: skip
        agents = client.get("/v1/agents")
    except (ClientError, OSError) as exc:
        return {"error": str(exc).split(";")[0]}
    return {"agents": agents}


def _locked(lock: Path) -> bool:
    """True if a running agent holds the store lock file ``lock``."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases a lock we took
    return False


def last_error(log: Path) -> str:
    """The ``error:`` line an agent printed before exiting, or its log's last line."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1]


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"meshmon demo service: ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def web_service() -> Iterator[None]:
    """A tiny HTTP service on 127.0.0.1 for the agents to probe."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", SERVICE_PORT), _QuietHandler)
    except OSError as exc:
        raise DemoError(f"cannot serve the demo's web service on 127.0.0.1:{SERVICE_PORT} "
                        f"({exc.strerror or exc}); is another meshmon demo running? stop it "
                        "first") from exc
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def snapshot(sockets: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Ask every agent for its status, members, assignments and latest results."""
    view: dict[str, dict[str, Any]] = {}
    for name, path in sockets.items():
        client = ControlClient(path, timeout=1.0)
        try:
            view[name] = {
                "status": client.get("status"),
                "members": client.get("members"),
                "assignments": client.get("assignments"),
                "latest": client.get("results", latest=1),
            }
        except ControlError as exc:
            view[name] = {"error": str(exc).split(";")[0]}
        finally:
            client.close()
    return view


def render(view: dict[str, dict[str, Any]], started: float,
           central: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """A rich renderable of the mesh: one row per agent, the newest results, and what the
    aggregator holds centrally."""
    from rich.console import Group
    from rich.table import Table

    agents = Table(title=f"meshmon demo — {len(view)} agents, up {time.time() - started:.0f}s "
                   "(Ctrl-C stops)", expand=True)  # fmt: skip
    for col in ("agent", "address", "sees alive", "suspect/dead", "probes", "stored", "lost"):
        agents.add_column(col)
    results = Table(title="newest results (by agent)", expand=True)
    for col in ("agent", "check", "target", "status", "rtt ms", "error"):
        results.add_column(col)
    for name, data in sorted(view.items()):
        if "error" in data:
            agents.add_row(name, "-", f"[red]{data['error']}[/red]", "", "", "", "")
            continue
        states = [m["state"] for m in data["members"]]
        store = data["status"].get("store", {})
        agents.add_row(
            name, str(data["status"].get("address")),
            f"{states.count('alive')}/{len(states)}",
            f"{states.count('suspect')}/{states.count('dead')}",
            str(len(data["assignments"].get("mine", []))),
            str(store.get("records", "-")), str(store.get("lost", "-")),
        )  # fmt: skip
        for r in data["latest"][:8]:
            rtt = r.get("response_time_ms")
            results.add_row(name, r["check"], r["target"],
                            "[green]ok[/green]" if r["success"] else "[red]FAIL[/red]",
                            "-" if rtt is None else f"{rtt:.3f}", r.get("error") or "")  # fmt: skip
    parts: list[Any] = [agents, results]
    if central is not None:
        synced = Table(title=f"aggregator {AGGREGATOR_URL} (PostgreSQL): results that arrived "
                       "centrally", expand=True)  # fmt: skip
        for col in ("agent", "rows", "last sync", "lag s", "lost"):
            synced.add_column(col)
        if "error" in central:
            synced.add_row("-", f"[yellow]{central['error']}[/yellow]", "", "", "")
        for a in central.get("agents", []):
            lag = a.get("lag_s")
            synced.add_row(a["agent"], str(a["records"]), (a.get("last_sync") or "-")[11:19],
                           "-" if lag is None else f"{lag:.0f}", str(a.get("lost_total", 0)))
        parts.append(synced)
    return Group(*parts)


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _log_of(directory: Path, name: str) -> Path:
    return directory / name / ("aggregator.log" if name == "aggregator" else "agent.log")


def start_aggregator(directory: Path, console: Any) -> subprocess.Popen[bytes]:
    """Start the demo aggregator (embedded PostgreSQL) and wait until it listens."""
    import socket

    folder = directory / "aggregator"
    console.print("meshmon demo: starting the aggregator (a private PostgreSQL; the first start "
                  "runs initdb, a few seconds) ...")  # fmt: skip
    with (folder / "aggregator.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "meshmon", "aggregator", "run", "-c",
                                 str(folder / "aggregator.toml")], stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the aggregator exited: {last_error(folder / 'aggregator.log')} "
                            f"(full log: {folder / 'aggregator.log'})", exit_code=1)  # fmt: skip
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", AGGREGATOR_PORT)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise DemoError(f"the aggregator did not listen on 127.0.0.1:{AGGREGATOR_PORT} within 120 s "
                    f"(see {folder / 'aggregator.log'})", exit_code=1)  # fmt: skip


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_tui(config: Path, socket: Path, seed: subprocess.Popen[bytes], console: Any) -> None:
    """Open the TUI on the first agent in this terminal; quitting it stops the demo."""
    _wait_for_socket(socket, seed)
    console.print(f"meshmon demo: opening the TUI on {config.parent.name} (q quits and stops the "
                  f"demo; from another terminal: meshmon tui -c {config})")  # fmt: skip
    tui = subprocess.run([sys.executable, "-m", "meshmon", "tui", "-c", str(config)], check=False)
    if tui.returncode not in (0, 130):
        raise DemoError(f"the TUI exited with status {tui.returncode}; the mesh is still "
                        "inspectable with `meshmon status -c ...` next time (run the demo with "
                        "--plain for the plain live table)", exit_code=1)  # fmt: skip


def run_demo(directory: Path, count: int, tui: bool = True) -> None:
    """Start the demo mesh, show it live (the TUI, or a plain table), stop everything on
    Ctrl-C or when the TUI quits."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    directory = directory.absolute()
    configs = prepare(directory, count)
    console.print(f"meshmon demo: {count} agents; CA, configs and logs in {directory}/")
    procs: list[subprocess.Popen[bytes]] = []
    started = time.time()
    signal.signal(signal.SIGTERM, _interrupt)  # a plain kill stops the agents too,
    signal.signal(signal.SIGHUP, _interrupt)  # and so does closing the terminal
    try:
        with web_service():
            aggregator = start_aggregator(directory, console)
            procs.append(aggregator)
            sockets = {c.parent.name: c.parent / "data" / "control.sock" for c in configs}
            for i, config in enumerate(configs):
                with (config.parent / "agent.log").open("wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "meshmon", "agent", "run", "--config", str(config)],
                        stdout=log, stderr=subprocess.STDOUT,
                    ))  # fmt: skip
                if i == 0:  # the seed first, so the others join at once
                    _wait_for_socket(sockets[config.parent.name], procs[-1])
            if tui:
                _run_tui(configs[0], sockets[configs[0].parent.name], procs[-1], console)
                return
            with Live(console=console, refresh_per_second=2) as live:
                while True:
                    dead = [c.parent.name for c, p in zip(configs, procs[1:], strict=True)
                            if p.poll() is not None]  # fmt: skip
                    if aggregator.poll() is not None:
                        dead.append("aggregator")
                    if dead:
                        why = "; ".join(f"{name}: {last_error(_log_of(directory, name))}"
                                        for name in dead)  # fmt: skip
                        raise DemoError(f"agent(s) exited, so the demo stops. {why} (full logs: "
                                        f"{directory}/<agent>/agent.log)", exit_code=1)  # fmt: skip
                    live.update(render(snapshot(sockets), started, aggregator_view(directory)))
                    time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("\nmeshmon demo: stopping agents (graceful leave) ...")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        console.print("meshmon demo: stopped")
