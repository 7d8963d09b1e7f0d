"""Alerts across a real mesh: three agent processes watch a target inside a network namespace
and notify a webhook on loopback. The target is taken down by setting its link down."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalMesh, wait_for
from tests.netns import add_namespace, sh

NS = "mm-alert"
HOST_IP, TARGET_IP = "10.231.0.1", "10.231.0.2"


class Webhook:
    """A receiver that keeps every notification it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        return [(b["event"], b["incident_id"]) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def target() -> Iterator[None]:
    sh("ip", "netns", "del", NS) if Path(f"/run/netns/{NS}").exists() else None
    add_namespace(NS)
    sh("ip", "link", "add", "mm-alert0", "type", "veth", "peer", "name", "mm-alert1")
    sh("ip", "link", "set", "mm-alert1", "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "mm-alert0")
    sh("ip", "link", "set", "mm-alert0", "up")
    sh("ip", "-n", NS, "addr", "add", f"{TARGET_IP}/24", "dev", "mm-alert1")
    sh("ip", "-n", NS, "link", "set", "mm-alert1", "up")
    try:
        yield
    finally:
        sh("ip", "netns", "del", NS)


def link(up: bool) -> None:
    sh("ip", "-n", NS, "link", "set", "mm-alert1", "up" if up else "down")


def alert_config(webhook: str, rule: str) -> str:
    return f"""
[[checks]]
name = "ping-target"
kind = "ping"
interval = "1s"
timeout = "0.8s"
targets = ["{TARGET_IP}", "127.0.0.1"]
replicas = 3
params = {{ count = 1 }}

[alerts]
webhooks = [{{ url = "{webhook}" }}]

[[alerts.rules]]
{rule}
"""


DOWN_RULE = """name = "target-down"
condition = "failures"
check = "ping-target"
fire = 2
for = "2s"
resolve_for = "2s"
"""


def start_mesh(tmp_path: Path, hook: Webhook, rule: str) -> LocalMesh:
    mesh = LocalMesh(tmp_path, port=18100)
    seed = None
    for i, name in enumerate(("al-1", "al-2", "al-3")):
        agent = mesh.add(name, 71 + i, seeds=[seed] if seed else [],
                         extra_config=alert_config(hook.url, rule))
        seed = seed or mesh.seed_of(name)
        agent.start()
    for agent in mesh.agents.values():
        mesh.wait_up(agent)
    wait_for("everyone probing the target", lambda: all(
        any(r["target"] == TARGET_IP and r["success"] for r in a.api("results", latest=1))
        for a in mesh.agents.values()), timeout=30)
    return mesh


def incidents(mesh: LocalMesh, name: str) -> dict[str, Any]:
    return mesh.agents[name].api("alerts")


@pytest.mark.slow
def test_down_then_up_notifies_once_each(target: None, tmp_path: Path) -> None:
    hook = Webhook()
    mesh = start_mesh(tmp_path, hook, DOWN_RULE)
    try:
        link(False)
        wait_for("a firing notification", lambda: hook.events(), timeout=30)
        (firing,) = hook.bodies
        assert firing["event"] == "firing" and firing["target"] == TARGET_IP
        assert len(firing["probers"]) >= 2, "a quorum of the three probers agreed"
        link(True)
        wait_for("the resolved notification", lambda: len(hook.bodies) >= 2, timeout=30)
        # every agent has learnt both deliveries: nobody will say it again
        wait_for("deliveries known mesh-wide", lambda: all(
            any(i["id"] == firing["incident_id"] and i["resolved_sent"]
                for i in a.api("alerts")["recent"]) for a in mesh.agents.values()), timeout=20)
        assert hook.events() == [("firing", firing["incident_id"]),
                                 ("resolved", firing["incident_id"])]
        history = mesh.agents[firing["notifier"]].api("results", check="_alerts", limit=10)
        assert len(history) == 2, "incident history is kept in the notifier's ring store"
    finally:
        mesh.close()
        hook.close()


@pytest.mark.slow
def test_notifier_dies_mid_incident_without_duplicate(target: None, tmp_path: Path) -> None:
    hook = Webhook()
    mesh = start_mesh(tmp_path, hook, DOWN_RULE)
    try:
        link(False)
        wait_for("a firing notification", lambda: hook.events(), timeout=30)
        (firing,) = hook.bodies
        notifier = firing["notifier"]
        others = [a for n, a in mesh.agents.items() if n != notifier]
        wait_for("the delivery known to the others", lambda: all(
            any(i["id"] == firing["incident_id"] and i["firing_sent"]
                for i in a.api("alerts")["firing"]) for a in others), timeout=20)
        mesh.agents[notifier].kill()
        wait_for("a new notifier", lambda: any(
            i["notifier"] != notifier for a in others for i in a.api("alerts")["firing"]),
            timeout=40)  # fmt: skip
        link(True)
        wait_for("the resolved notification", lambda: len(hook.bodies) >= 2, timeout=40)
        assert hook.events() == [("firing", firing["incident_id"]),
                                 ("resolved", firing["incident_id"])]
        assert hook.bodies[1]["notifier"] != notifier
    finally:
        mesh.close()
        hook.close()


@pytest.mark.slow
def test_flapping_target_makes_no_storm(target: None, tmp_path: Path) -> None:
    rule = """name = "lossy"
condition = "loss"
check = "ping-target"
window = "10s"
fire = 40
resolve = 5
for = "3s"
resolve_for = "6s"
"""
    hook = Webhook()
    mesh = start_mesh(tmp_path, hook, rule)
    try:
        deadline = time.monotonic() + 30
        up = True
        while time.monotonic() < deadline:  # the link flaps every 2 s for 30 s
            up = not up
            link(up)
            time.sleep(2)
        link(True)
        wait_for("the incident resolved", lambda: any(
            b["event"] == "resolved" for b in hook.bodies), timeout=40)
        assert [e for e, _ in hook.events()] == ["firing", "resolved"]
    finally:
        mesh.close()
        hook.close()
