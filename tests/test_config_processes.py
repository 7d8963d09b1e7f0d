"""Bad configs through the real CLI and real agent processes; seed warnings in a real agent's log.

The unresolvable-seed agent runs in its own network namespace with only loopback: its resolver
(outside 127.0.0.0/8) is unreachable there, so the name fails to resolve with no packet leaving
the host. The unreachable seed is a 127.0.0.x address where nothing listens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LocalMesh, wait_for

MESHMON = [sys.executable, "-m", "meshmon"]

BAD_SEEDS = ["::::", "a b c:1", "-flag"]
BAD_CHECKS = """
[[checks]]
name = "kind"
kind = "pnig"
targets = ["127.0.0.1"]
[[checks]]
name = "count"
kind = "ping"
targets = ["127.0.0.1"]
params = { count = "lots", cuont = 2 }
[[checks]]
name = "negative"
kind = "ping"
targets = ["127.0.0.1"]
params = { count = -3 }
[[checks]]
name = "port"
kind = "tcp"
targets = ["127.0.0.1"]
params = { port = "http" }
[[checks]]
name = "url"
kind = "http"
targets = ["http://[::1"]
"""

EXPECTED = [
    "mesh.seeds[0]: '::::' is not a valid IPv6 address",
    "mesh.seeds[1]: 'a b c' is not a valid host name",
    "mesh.seeds[2]: '-flag' is not a valid host name",
    "checks[0].kind: 'pnig' is not a probe kind; did you mean 'ping'?",
    "checks[1].params.cuont: unknown param for a ping check; did you mean 'count'?",
    "checks[1].params.count: expected an integer 1-1000, got 'lots'",
    "checks[2].params.count: -3 is out of range; expected an integer 1-1000",
    "checks[3].params.port: expected an integer 1-65535, got 'http'",
    "checks[4].targets[0]: 'http://[::1' is not a valid URL",
    "tls.key: private key",
]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    local = LocalMesh(tmp_path, port=17946)
    yield local
    local.close()


def assert_error_lines(stderr: str, config: Path) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == len(EXPECTED), stderr
    for line, expected in zip(lines, EXPECTED, strict=True):
        assert line.startswith(f"error: {config}: {expected}"), (line, expected)


def test_config_check_reports_every_problem_one_line_each(mesh: LocalMesh) -> None:
    agent = mesh.add("bad", 60, seeds=BAD_SEEDS, extra_config=BAD_CHECKS)
    agent.write_config()
    (agent.folder / "certs" / "node.key").chmod(0o644)
    proc = subprocess.run([*MESHMON, "config", "check", str(agent.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_error_lines(proc.stderr, agent.config_path)


def test_an_agent_started_with_a_bad_config_exits_with_the_errors(mesh: LocalMesh) -> None:
    agent = mesh.add("bad", 61, seeds=BAD_SEEDS, extra_config=BAD_CHECKS)
    (agent.folder / "certs" / "node.key").chmod(0o644)
    agent.start()
    assert agent.proc is not None
    assert agent.proc.wait(timeout=60) == 2
    assert_error_lines(agent.log_text(), agent.config_path)
    assert not agent.socket.exists()  # it never started


def test_seed_that_cannot_be_resolved_or_reached_is_a_warning_retried_with_backoff(
        mesh: LocalMesh) -> None:  # fmt: skip
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a loopback-only network namespace")
    agent = mesh.add("lonely", 2, seeds=["nonexistent.invalid:17946", "127.0.0.9:17999"])
    agent.write_config()
    log = agent.log_path.open("ab")
    command = " ".join([*MESHMON, "agent", "run", "-c", str(agent.config_path)])
    agent.proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {command}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    mesh.wait_up(agent)

    def warned(seed: str, reason: str, attempt: int) -> bool:
        return any(" WARNING " in line and f"seed {seed}: {reason}" in line
                   and f"(attempt {attempt}," in line for line in agent.log_text().splitlines())

    wait_for("the unresolvable seed's warning",
             lambda: warned("nonexistent.invalid:17946", "cannot resolve 'nonexistent.invalid'",
                            1), timeout=30)  # fmt: skip
    wait_for("the unreachable seed's warning",
             lambda: warned("127.0.0.9:17999", "nothing listens on 127.0.0.9:17999", 1),
             timeout=30)
    # the unresolvable seed with backoff (1 s, 2 s...); the refusing one every 0.5 s in the
    # agent's first 30 s (it is up, its agent not yet listening), warned at attempts 1, 2, 4...
    wait_for("both seeds retried", lambda: warned("nonexistent.invalid:17946", "cannot resolve",
                                                  3) and warned("127.0.0.9:17999", "nothing", 4),
             timeout=30)  # fmt: skip
    assert agent.running()
    assert agent.api("status")["node"] == "lonely"


def test_a_reload_is_checked_like_a_start_and_refused_keeping_the_running_config(
        mesh: LocalMesh) -> None:  # fmt: skip
    agent = mesh.add("reloader", 62, extra_config='[[checks]]\nname = "p"\nkind = "tcp"\n'
                     'targets = ["127.0.0.1:1"]\n')  # fmt: skip
    agent.start()
    mesh.wait_up(agent)
    assert agent.proc is not None
    agent.extra_config = '[[checks]]\nname = "p"\nkind = "tcp"\ntargets = ["127.0.0.1"]\n' \
                         'params = { port = "http" }\n'  # fmt: skip
    agent.write_config()
    agent.proc.send_signal(signal.SIGHUP)
    refused = (f"config reload refused, keeping the running config: {agent.config_path}: "
               "checks[0].params.port: expected an integer 1-65535, got 'http'")
    wait_for("the reload to be refused", lambda: refused in agent.log_text(), timeout=20)
    assert agent.running()
    assert [a["target"] for a in agent.api("assignments")["mine"]] == ["127.0.0.1:1"]
    assert "Traceback" not in agent.log_text()
