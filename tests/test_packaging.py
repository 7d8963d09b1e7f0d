"""Packaging: the Dockerfile and the image's assumptions, and the systemd units.

No Docker daemon runs here, so the image is checked as far as this machine can: hadolint on the
Dockerfile, then its build and run steps replayed without Docker. The wheel is built from
exactly the files the Dockerfile's build stage copies, installed into a fresh venv, and the
interpreter given ``cap_net_raw+p`` by the Dockerfile's own command. An agent then runs as an
unprivileged user whose capabilities are what ``docker run --cap-drop ALL --cap-add NET_RAW``
leaves (bounding set NET_RAW, nothing else), inside a fresh network namespace, where the
kernel's unprivileged ping sockets are off (``net.ipv4.ping_group_range = 1 0``), so only the
capability can make its pings work; they must show up through ``meshmon results``. The same
agent runs the way the systemd unit starts it: CAP_NET_RAW as an ambient capability of an
interpreter without file capabilities.

The units go through ``systemd-analyze verify`` (no warning allowed) and its offline security
review.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshmon import pki
from meshmon.config import NodeConfig
from tests.netns import add_namespace

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNITS = ROOT / "examples" / "systemd"
BIN = Path(sys.executable).parent
GRANT = "from meshmon.probes.capabilities import grant; grant(sys.argv[1])"
"""The Dockerfile's step that gives the interpreter its file capability (run here verbatim)."""
NOBODY = ["--reuid=65534", "--regid=65534", "--init-groups"]
CONTAINER_CAPS = ["--bounding-set=-all,+net_raw"]
"""``--cap-drop ALL --cap-add NET_RAW`` for a non-root user: NET_RAW may be held, none is."""
SYSTEMD_CAPS = ["--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw",
                "--bounding-set=-all,+net_raw"]  # fmt: skip
"""``AmbientCapabilities=CAP_NET_RAW`` with ``CapabilityBoundingSet=CAP_NET_RAW``."""


def tool(name: str) -> str:
    """A command installed beside this interpreter (the dev extra) or on PATH."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: install meshmon's dev extra (python3 bootstrap.py test)"
    return found


# --- Dockerfile ---------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_dockerfile_is_hadolint_clean() -> None:
    proc = hadolint(DOCKERFILE)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = hadolint(bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3013" in proc.stdout


def build_copies() -> list[str]:
    """What the Dockerfile's build stage copies from the context."""
    build_stage = DOCKERFILE.read_text().split("\nFROM ")[1]
    return [src for line in build_stage.splitlines()
            if line.startswith("COPY ") and "--from=" not in line
            for src in line.split()[1:-1]]  # fmt: skip


def test_dockerignore_lets_the_build_stage_copies_through() -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}  # fmt: skip
    copies = build_copies()
    assert sorted(copies) == sorted(allowed) == ["README.md", "aggregator", "meshmon",
                                                 "pyproject.toml"]  # fmt: skip


def test_dockerfile_states_what_the_tests_replay() -> None:
    text = DOCKERFILE.read_text()
    assert GRANT in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "MESHMON_HEALTH_URL=http://127.0.0.1:9108/healthz" in text
    assert re.search(r'^CMD \["agent", "run", "--config", "/etc/meshmon/agent.toml"\]$', text,
                     re.M)  # fmt: skip


def healthcheck_command() -> list[str]:
    match = re.search(r"^\s*CMD (\[.*\])$", DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1],
                      re.M)  # fmt: skip
    assert match, "the HEALTHCHECK has no exec-form CMD"
    command: list[str] = json.loads(match.group(1))
    return command


# --- the image, replayed without Docker ---------------------------------------------------


@dataclass
class Image:
    """The image's venv (``/opt/meshmon``) built outside Docker."""

    root: Path
    venv: Path
    interpreter: Path
    """The console script's interpreter: the one holding cap_net_raw+p."""

    @property
    def meshmon(self) -> Path:
        return self.venv / "bin" / "meshmon"


def run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.skip("needs root: file capabilities, setpriv and network namespaces")
    # not under pytest's tmp (mode 0700): the unprivileged user must reach the venv
    root = Path(tempfile.mkdtemp(prefix="meshmon-image-"))
    try:
        root.chmod(0o755)
        context = root / "context"
        context.mkdir()
        for src in build_copies():  # the Docker build context, as .dockerignore lets it through
            copy = shutil.copytree if (ROOT / src).is_dir() else shutil.copyfile
            copy(ROOT / src, context / src)
        run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--disable-pip-version-check",
            "-w", root / "wheels", context)  # fmt: skip
        (wheel,) = (root / "wheels").glob("meshmon-*.whl")
        venv = root / "venv"
        run(sys.executable, "-m", "venv", "--copies", venv)  # copies: the capability stays ours
        run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
            wheel)  # fmt: skip
        shebang = (venv / "bin" / "meshmon").read_text().splitlines()[0]
        interpreter = Path(shebang.removeprefix("#!"))
        assert interpreter.is_relative_to(venv) and not interpreter.is_symlink()
        run(venv / "bin" / "python", "-c", f"import sys; {GRANT}", interpreter)
        yield Image(root, venv, interpreter)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mmpkg{os.getpid()}"
    add_namespace(name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def as_nobody(ns: str, caps: list[str], *cmd: str | Path) -> list[str]:
    """``cmd`` in namespace ``ns`` as uid 65534 holding ``caps`` (setpriv options)."""
    return ["ip", "netns", "exec", ns, "setpriv", *NOBODY, *caps, "--", *map(str, cmd)]


@pytest.mark.slow
def test_image_interpreter_has_net_raw_permitted_only(image: Image, netns: str) -> None:
    xattr = os.getxattr(image.interpreter, "security.capability")
    assert xattr[4:8] == (1 << 13).to_bytes(4, "little")  # permitted: CAP_NET_RAW (13)
    assert int.from_bytes(xattr[:4], "little") & 1 == 0  # no effective bit
    assert subprocess.run(["ip", "netns", "exec", netns, "cat",
                           "/proc/sys/net/ipv4/ping_group_range"],
                          capture_output=True, text=True).stdout.split() == ["1", "0"]
    # --cap-drop ALL and nothing added: Python still starts (with "+ep" exec would fail)...
    no_caps = as_nobody(netns, ["--bounding-set=-all"], image.meshmon, "--version")
    assert subprocess.run(no_caps, capture_output=True, text=True, timeout=60).returncode == 0
    # ... and says what it lacks when it must ping
    ping = [image.meshmon, "probe", "ping", "127.0.0.1", "--icmp-mode", "raw", "--json"]
    proc = subprocess.run(as_nobody(netns, ["--bounding-set=-all"], *ping), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert "cannot open an ICMPv4 socket" in proc.stderr and "CAP_NET_RAW" in proc.stderr
    # --cap-add NET_RAW: the engine raises the permitted capability and pings over a raw socket
    proc = subprocess.run(as_nobody(netns, CONTAINER_CAPS, *ping), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[0])["result"]
    assert result["successes"] > 0 and result["resolved_ip"] == "127.0.0.1"


def write_agent(folder: Path, metrics_port: int | None) -> Path:
    """An agent of its own mesh in ``folder`` (owned by uid 65534): one ping check of loopback."""
    pki.init_ca(folder / "ca")
    pki.issue_cert(folder / "ca", "pkg-agent", folder / "certs", ips=["127.0.0.1"])
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    config = folder / "agent.toml"
    config.write_text(f"""\
[node]
name = "pkg-agent"
data_dir = "data"
[listen]
address = "127.0.0.1"
{metrics}[[checks]]
name = "loopback"
kind = "ping"
interval = "1s"
timeout = "1s"
targets = ["127.0.0.1"]
""")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, 65534, 65534)
    return config


def ok_pings(image: Image, config: Path) -> list[dict[str, object]]:
    proc = subprocess.run([image.meshmon, "results", "-c", config, "--check", "loopback",
                           "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    if proc.returncode != 0:
        return []
    return [r for r in json.loads(proc.stdout) if r["success"] and r["target"] == "127.0.0.1"]


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["container", "systemd"])
def test_unprivileged_agent_pings_with_only_net_raw(image: Image, netns: str,
                                                    launch: str) -> None:  # fmt: skip
    folder = image.root / f"agent-{launch}"
    folder.mkdir()
    config = write_agent(folder, 19108)  # its /healthz is the image's HEALTHCHECK
    if launch == "container":  # the console script: file capability, bounding set NET_RAW
        cmd = as_nobody(netns, CONTAINER_CAPS, image.meshmon, "agent", "run", "-c", config)
    else:  # systemd: ambient NET_RAW, an interpreter without any file capability
        plain = image.venv / "bin" / "python-plain"
        shutil.copyfile(image.interpreter, plain)  # copies no extended attribute
        plain.chmod(0o755)
        cmd = as_nobody(netns, SYSTEMD_CAPS, plain, "-m", "meshmon", "agent", "run", "-c", config)
    log = (folder / "agent.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (pings := ok_pings(image, config)):
            assert proc.poll() is None, (folder / "agent.log").read_text()
            assert time.monotonic() < deadline, (folder / "agent.log").read_text()
            time.sleep(0.2)  # polling another process: there is no event to wait on
        assert all(isinstance(p["response_time_ms"], float) for p in pings)
        status = json.loads(run(image.meshmon, "status", "-c", config, "--json").stdout)
        assert status["node"] == "pkg-agent"
        text = (folder / "agent.log").read_text()
        assert "IPv4 raw socket" in text  # the capability did it: ping sockets are off here
        owners = {p.stat().st_uid for p in (folder / "data").rglob("*")}
        assert owners == {65534}  # everything the agent wrote is the unprivileged user's
        # the image's HEALTHCHECK, verbatim, where the container would run it
        health = subprocess.run(["ip", "netns", "exec", netns, image.venv / "bin" / "python",
                                 *healthcheck_command()[1:]],
                                env={"MESHMON_HEALTH_URL": "http://127.0.0.1:19108/healthz"},
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert health.returncode == 0, health.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# --- systemd ------------------------------------------------------------------------------


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def systemd_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (.ci/run installs Debian's systemd package)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


def installed_copy(name: str, tmp_path: Path) -> Path:
    """The unit as verify can check it here: its /opt/meshmon is this environment's venv."""
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace("/opt/meshmon/bin/", f"{BIN}/"))
    return unit


UNIT_NAMES = ["meshmon-agent.service", "meshmon-aggregator.service"]


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_unit_verifies_without_a_warning(name: str, tmp_path: Path) -> None:
    proc = systemd_analyze("verify", "--man=no", installed_copy(name, tmp_path))
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_systemd_verify_would_report_a_bad_unit(tmp_path: Path) -> None:
    unit = installed_copy(UNIT_NAMES[0], tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSistem=strict"))
    proc = systemd_analyze("verify", "--man=no", unit)
    assert "Unknown key 'ProtectSistem'" in proc.stderr


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_unit_exposure_is_low(name: str, tmp_path: Path) -> None:
    proc = systemd_analyze("security", "--offline=yes", installed_copy(name, tmp_path))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout  # systemd's scale: 0 (best) to 10


def test_systemd_agent_unit_holds_only_net_raw_and_its_state_folder() -> None:
    s = unit_settings("meshmon-agent.service")
    assert s["AmbientCapabilities"] == s["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == s["PrivateTmp"] == ["yes"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6",
                                                            "AF_NETLINK"}  # fmt: skip
    assert "@system-service" in s["SystemCallFilter"]
    assert Path("/var/lib") / s["StateDirectory"][0] == NodeConfig().data_dir
    assert s["User"] == ["meshmon"]
    assert s["ExecStart"][0].startswith("/opt/meshmon/bin/meshmon agent run --config "
                                        "/etc/meshmon/agent.toml")  # fmt: skip


def test_systemd_aggregator_unit_holds_no_capability() -> None:
    s = unit_settings("meshmon-aggregator.service")
    assert s["CapabilityBoundingSet"] == s["AmbientCapabilities"] == [""]
    assert s["StateDirectory"] == ["meshmon-aggregator"]  # the aggregator's default data_dir
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ExecStart"][0].startswith("/opt/meshmon/bin/meshmon aggregator run --config "
                                        "/etc/meshmon/aggregator.toml")  # fmt: skip
