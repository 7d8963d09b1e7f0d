"""Runtime faults of a real agent process: strangers on its TCP port, bad control API requests,
and a reload that changes what only a restart applies.

Every wait polls the agent's own answers (its status, its log) against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import AgentProc, LocalMesh, wait_for

PORT = 27951
"""Apart from the other process tests' 17946, so they can run side by side."""

IDLE, PROBES, PLAIN_TEXT = 60, 40, 5


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    mesh = LocalMesh(tmp_path_factory.mktemp("runtime-faults"), port=PORT)
    one = mesh.add("lonely", 231)
    one.start()
    mesh.wait_up(one)
    yield one
    mesh.close()


def refused(agent: AgentProc) -> dict[str, int]:
    counts: dict[str, int] = agent.api("status").get("refused_connections", {})
    return counts


def test_strangers_on_the_tcp_port_give_a_few_readable_lines(agent: AgentProc) -> None:
    before = refused(agent)
    idle = [socket.create_connection((agent.address, agent.port), timeout=5) for _ in range(IDLE)]
    try:
        for _ in range(PROBES):  # what a TCP check does: connect, then close
            socket.create_connection((agent.address, agent.port), timeout=5).close()
        for _ in range(PLAIN_TEXT):
            with socket.create_connection((agent.address, agent.port), timeout=5) as http:
                http.sendall(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):  # unread data: a reset
                    http.recv(100)  # the agent closes on us

        def all_counted() -> dict[str, int] | None:
            now = refused(agent)
            grown = {k: now.get(k, 0) - before.get(k, 0) for k in now}
            wanted = {"idle": IDLE, "connect_only": PROBES, "not_tls": PLAIN_TEXT}
            return grown if all(grown.get(k, 0) >= n for k, n in wanted.items()) else None

        # idle ones are closed after the 10 s handshake deadline (TransportConfig.connect_timeout)
        grown = wait_for("the agent to count every refused connection", all_counted, 30)
    finally:
        for sock in idle:
            sock.close()
    assert grown["idle"] == IDLE and grown["connect_only"] == PROBES
    log = agent.log_text()
    loud = [line for line in log.splitlines()
            if (" WARNING " in line or " ERROR " in line) and "meshmon.net" in line]
    # one line per kind per 10 s, whatever the number of connections
    assert 2 <= len(loud) <= 6, "\n".join(loud)
    assert "TooSlowError" not in log and "Traceback" not in log
    assert any("sent nothing for 10s" in line for line in loud), loud
    assert any("plain text such as HTTP" in line for line in loud), loud
    assert not any("connect-only" in line for line in loud)  # checks are DEBUG at most


def control(agent: AgentProc) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)),
                        base_url="http://meshmon", timeout=5)  # fmt: skip


@pytest.mark.parametrize(("endpoint", "query", "parameter"), [
    ("results", "since=nan", "since"),
    ("results", "since=inf", "since"),
    ("results", "since=-inf", "since"),
    ("results", "since=-10", "since"),
    ("results", "since=soon", "since"),
    ("results", "until=NaN", "until"),
    ("results", "limit=nan", "limit"),
    ("results", "limit=-1", "limit"),
    ("results", "latest=maybe", "latest"),
    ("results", "check=", "check"),
    ("results", "since=1&since=2", "since"),
    ("results", "bogus=1", "bogus"),
    ("status", "since=nan", "since"),
    ("members", "x=1", "x"),
    ("assignments", "limit=5", "limit"),
])  # fmt: skip
def test_bad_query_parameters_get_400_naming_them(agent: AgentProc, endpoint: str, query: str,
                                                  parameter: str) -> None:  # fmt: skip
    with control(agent) as client:
        response = client.get(f"/v1/{endpoint}?{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["parameter"] == parameter and parameter in body["error"]


def test_good_query_parameters_still_answer(agent: AgentProc) -> None:
    with control(agent) as client:
        for query in ("since=10m", "since=30&until=0", "limit=5&latest=1", "check=x&target=y"):
            response = client.get(f"/v1/results?{query}")
            assert response.status_code == 200, (query, response.text)


def test_websocket_upgrade_gets_a_4xx(agent: AgentProc) -> None:
    request = (b"GET /v1/status HTTP/1.1\r\nHost: meshmon\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(agent.socket))
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer
    assert "Traceback" not in agent.log_text()


def test_reload_names_restart_only_keys_and_still_applies_checks(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, port=PORT + 1)
    check = ('[[checks]]\nname = "{name}"\nkind = "tcp"\ninterval = "30s"\n'
             'targets = ["127.0.0.1:9"]\n')  # fmt: skip
    agent = mesh.add("reloader", 232, extra_config=check.format(name="first"))
    try:
        agent.start()
        mesh.wait_up(agent)
        assert agent.api("status")["checks"] == 1
        text = agent.config_path.read_text()
        changed = (text.replace('profile = "local"', 'profile = "lan"')
                   .replace(f"udp_port = {PORT + 1}", f"udp_port = {PORT + 2}")
                   + check.format(name="second"))  # fmt: skip
        agent.config_path.write_text(changed)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        wait_for("the new check to apply", lambda: agent.api("status")["checks"] == 2)

        def warned() -> str | None:
            return next((line for line in agent.log_text().splitlines()
                         if " WARNING " in line and "config reload" in line), None)  # fmt: skip

        line = wait_for("the reload WARNING", warned, 10)
        assert "listen.udp_port" in line and "mesh.profile" in line and "restart" in line
        assert "checks" not in line.split("changed")[0]
        status = agent.api("status")
        assert status["udp_port"] == PORT + 1  # still the running one until a restart
        assert json.dumps(status)  # and the agent answers as before
    finally:
        mesh.close()


def test_cli_turns_a_refused_parameter_into_a_usage_error(agent: AgentProc) -> None:
    proc = subprocess.run([sys.executable, "-m", "meshmon", "results", "--socket",
                           str(agent.socket), "--since", "nan"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: since: ") and "finite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
