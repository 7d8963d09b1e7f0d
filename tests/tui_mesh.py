"""A real local mesh with something to see on every TUI screen.

Four agents (tags ``mesh`` and ``east``/``west``) on 127.0.0.x probe each other (ping, full
mesh: the matrix), a local web service (all four: one of them, ``tui-2``, expects another status
code, so its results fail while the others succeed: "one prober's path is bad"), a closed port
(every prober fails: "target down"), and trace the ``east`` members (the Path screen). Alert
rules fire on the closed port (both its probers agree) but not on the web service (only
``tui-2`` calls it failing: no quorum).
Run ``python -m tests.tui_mesh DIR`` to start it by hand and watch it with ``meshmon tui``.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import LocalMesh, wait_for

CHECKS = """
[[checks]]
name = "mesh-ping"
kind = "ping"
interval = "2s"
timeout = "1s"
target_tags = ["mesh"]
replicas = 0
params = {{ count = 3, interval = 0.02 }}

[[checks]]
name = "web-http"
kind = "http"
interval = "2s"
timeout = "1s"
targets = ["http://127.0.0.1:{port}/"]
replicas = 0
params = {{ expect_status = {status} }}

[[checks]]
name = "closed-tcp"
kind = "tcp"
interval = "2s"
timeout = "1s"
targets = ["127.0.0.1:1"]
replicas = 2

[[checks]]
name = "east-trace"
kind = "trace"
interval = "4s"
timeout = "3s"
target_tags = ["east"]
replicas = 2
params = {{ rounds = 2, interval = 0.3 }}

[alerts]

[[alerts.rules]]
name = "port-closed"
condition = "failures"
check = "closed-tcp"
fire = 2
for = "2s"
resolve_for = "2s"

[[alerts.rules]]
name = "web-failing"
condition = "failures"
check = "web-http"
fire = 2
for = "2s"
resolve_for = "2s"
"""

NAMES = ("tui-1", "tui-2", "tui-3", "tui-4")
BAD_PROBER = "tui-2"
"""Expects HTTP 204 from the web service, which answers 200: its web-http results fail."""


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def web_service() -> Iterator[int]:
    """A tiny HTTP service on 127.0.0.1 answering 200; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def start(root: Path, web_port: int, port: int, first_host: int) -> LocalMesh:
    """Start the four agents and wait until each sees all four alive and has results (on
    failure, stop what was started: no agent outlives its test)."""
    mesh = LocalMesh(root, port=port)
    try:
        return _start(mesh, web_port, first_host)
    except BaseException:
        mesh.close()
        raise


def _start(mesh: LocalMesh, web_port: int, first_host: int) -> LocalMesh:
    for i, name in enumerate(NAMES):
        tags = ["mesh", "east" if i < 2 else "west"]
        status = 204 if name == BAD_PROBER else 200
        seeds = [] if i == 0 else [mesh.seed_of(NAMES[0])]
        mesh.add(name, first_host + i, seeds=seeds, tags=tags,
                 extra_config=CHECKS.format(port=web_port, status=status)).start()
    for agent in mesh.agents.values():
        mesh.wait_up(agent)

    def settled() -> bool:
        for agent in mesh.agents.values():
            members = agent.api("members")
            if len(members) != len(NAMES) or any(m["state"] != "alive" for m in members):
                return False
        return True

    wait_for("every agent to see the four members alive", settled, timeout=60)
    first = mesh.agents[NAMES[0]]

    def results() -> bool:
        latest = first.api("mesh/latest")
        if latest.get("partial"):
            return False
        seen = {(r["check"], name) for name, a in latest["answers"].items()
                for r in a["results"]}  # fmt: skip
        return all((check, name) in seen for check in ("mesh-ping", "web-http")
                   for name in NAMES) and any(c == "east-trace" for c, _ in seen)  # fmt: skip

    wait_for("mesh-wide results from every agent, traces included", results, timeout=60)
    return mesh


def record_snapshot_data(root: Path, out: Path) -> None:
    """Make the snapshot tests' recording: the mesh with ``tui-4`` killed and declared dead (a
    dead member, a target down everywhere), recorded from ``tui-1``'s control API."""
    import asyncio

    from meshmon.tui.recorded import record, save

    with web_service() as web:
        mesh = start(root, web, port=19846, first_host=80)
        try:
            time.sleep(100)  # history for the sparklines and the chart: nothing to wait on
            mesh.agents["tui-4"].kill()
            first = mesh.agents[NAMES[0]]
            wait_for("tui-4 to be declared dead", lambda: first.member_states()["tui-4"] == "dead",
                     timeout=60)
            time.sleep(8)  # a few rounds of results with tui-4 gone: nothing to wait on
            save(asyncio.run(record(first.socket)), out)
        finally:
            mesh.close()


def main() -> None:
    """``python -m tests.tui_mesh DIR``: run the mesh until Ctrl-C;
    ``python -m tests.tui_mesh --record OUT DIR``: write the snapshot tests' recording."""
    if sys.argv[1] == "--record":
        root = Path(sys.argv[3])
        root.mkdir(parents=True, exist_ok=True)
        record_snapshot_data(root, Path(sys.argv[2]))
        return
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    with web_service() as web:
        mesh = start(root, web, port=19646, first_host=60)
        print(f"mesh up; watch it with: meshmon tui -c {mesh.agents[NAMES[0]].config_path}",
              flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
