"""``meshmon tui -c AGENT.toml`` in a real terminal (tmux), used as a person would: a real mesh
runs, the TUI starts in an 80x24 tmux window, keys go in with ``send-keys`` and what the screen
shows comes back with ``capture-pane``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tui_mesh
from tests.harness import LocalMesh, wait_for

ROOT = Path(__file__).resolve().parent.parent
PORT = 19946

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One detached tmux session on a private server (``-L``): others' sessions are untouched."""

    def __init__(self, name: str) -> None:
        self.server = f"meshmon-test-{os.getpid()}"
        self.name = name

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True,
                             timeout=10, check=True)  # fmt: skip
        return out.stdout

    def start(self, command: str, width: int, height: int) -> None:
        self.tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                  command)  # fmt: skip

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def shows(self, *texts: str, timeout: float = 60.0) -> str:
        """Wait until the screen shows every one of ``texts`` (a text wrapped over two lines
        counts); the screen."""
        last = [""]

        def found() -> str | None:
            text = last[0] = self.screen()
            flat = " ".join(line.strip() for line in text.splitlines())
            return text if all(t in text or t in flat for t in texts) else None

        try:
            return wait_for(f"the screen to show {texts}", found, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe screen:\n{last[0]}") from None

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True,
                       timeout=10)  # fmt: skip


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    with tui_mesh.web_service() as web:
        local = tui_mesh.start(tmp_path / "mesh", web, port=PORT, first_host=90)
        try:
            yield local
        finally:
            local.close()


def test_an_operator_walks_through_every_screen(mesh: LocalMesh, tmp_path: Path) -> None:
    config = mesh.agents["tui-1"].config_path
    term = Tmux("tui")
    command = (f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m meshmon tui -c {config}; "
               "echo TUI-EXITED-$?; sleep 60")  # fmt: skip
    term.start(command, 80, 24)  # the smallest terminal the TUI is made for
    try:
        screen = term.shows("1 Mesh", "● live", "tui-4", "alive 4")
        assert "NAME" in screen and "127.0.0.93:19946" in screen

        term.keys("f")
        term.shows("tag to show")  # the input line opens; then type, as a person would
        term.keys("west", "Enter")
        screen = term.shows("tag: west", "alive 2")
        assert "tui-1 " not in screen.split("NAME", 1)[1]  # only the west members listed

        term.keys("2")
        term.shows("LIVE/K", "web-http", "4/4", "this agent probes")

        term.keys("3")
        screen = term.shows("PATH 1/4", "DOWN", "mesh-ping")
        assert "closed-tcp" in screen

        term.keys("g")  # problems only: the closed port, then the web service
        wait_for("only the two problems listed", lambda: "mesh-ping" not in term.screen())
        term.keys("Down", "Enter")
        term.shows("PATH: 1 of 4 probers fail (tui-2)", "minutes ago", "status 200, expect")
        term.keys("Escape")
        term.shows("2 with problems", "problems only")

        term.keys("4")
        screen = term.shows("FROM \\ TO", "median RTT ms")
        assert screen.count("—") >= 4  # the diagonal

        term.keys("5")
        term.shows("east-trace → tui-1", "from tui-", "127.0.0.90")

        term.keys("6")
        term.shows("1 firing", "port-closed", "closed-tcp")

        term.keys("?")
        term.shows("keys (Esc closes)", "Filter tag")
        term.keys("Escape")  # alone: Esc then a key at once would read as Alt+key
        wait_for("the help to close", lambda: "keys (Esc closes)" not in term.screen())
        term.keys("1")
        term.shows("tag: west")

        term.keys("q")
        term.shows("TUI-EXITED-0")
    finally:
        term.kill()


def test_aggregator_source_says_not_yet(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "meshmon", "tui", "--aggregator",
                          "https://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)  # fmt: skip
    assert out.returncode == 2
    assert "cannot read an aggregator yet" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "meshmon", "tui", "--socket",
                          str(tmp_path / "none.sock")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)  # fmt: skip
    assert out.returncode == 1
    assert "no control socket at" in out.stderr and "Traceback" not in out.stderr
