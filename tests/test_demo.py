"""The README's main job, run as a person would: ``meshmon demo`` in a terminal (tmux) starts
an aggregator and three agents, opens the TUI, results reach the aggregator, a second terminal
attaches with ``meshmon tui -c``, and ``q`` stops everything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshmon.demo import aggregator_view
from tests.harness import wait_for
from tests.test_tui_tmux import ROOT, Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.mark.slow
def test_the_demo_opens_the_tui_and_syncs_to_its_aggregator(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    term = Tmux("demo")
    term.start(f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m meshmon demo --dir "
               f"{demo_dir}; echo DEMO-EXITED-$?; sleep 60", 100, 30)  # fmt: skip
    second = Tmux("second")
    try:
        term.shows("1 Mesh", "● live", "agent-3", "alive 3", timeout=120)
        # every agent's results arrive centrally (agents 2 and 3 learnt the URL by gossip)
        agents = wait_for("results from every agent at the aggregator", lambda: (
            {a["agent"] for a in view["agents"] if a["records"] > 0} == {
                "agent-1", "agent-2", "agent-3"} and view["agents"]
        ) if "agents" in (view := aggregator_view(demo_dir)) else None, timeout=90)
        assert all(a["lost_total"] == 0 for a in agents)
        term.keys("3")
        term.shows("web-http", "mesh-ping", "agent-2")
        term.keys("6")
        term.shows("2 rules", "0 firing")  # the demo's rules are on, nothing fires
        # a second terminal attaches to another agent of the same mesh
        second.start(f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m meshmon tui -c "
                     f"{demo_dir / 'agent-2' / 'agent.toml'}; sleep 30", 100, 30)  # fmt: skip
        second.shows("agent-2", "● live", "alive 3")
        second.keys("q")
        term.keys("q")
        term.shows("meshmon demo: stopped", "DEMO-EXITED-0", timeout=60)
    finally:
        second.kill()
        term.kill()
        subprocess.run(["pkill", "-f", f"--dir {demo_dir}"], check=False)
