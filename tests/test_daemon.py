"""The typer-free ``meshmon agent run`` path: which command lines it takes, which it leaves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshmon.daemon import parse_agent_run


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["agent", "run", "-c", "a.toml"], {"config": "a.toml"}),
        (["agent", "run", "--config", "a.toml"], {"config": "a.toml"}),
        (["agent", "run", "--config=a.toml", "--log-level", "debug"],
         {"config": "a.toml", "log_level": "debug"}),
        (["agent", "run", "-c", "a.toml", "--log-format=json"],
         {"config": "a.toml", "log_format": "json"}),
        # everything else is typer's: help, usage errors, other commands
        (["agent", "run"], None),
        (["agent", "run", "--help"], None),
        (["agent", "run", "-c"], None),
        (["agent", "run", "-c", "a.toml", "-c", "b.toml"], None),
        (["agent", "run", "-c", "a.toml", "--verbose"], None),
        (["agent", "run", "a.toml"], None),
        (["status", "-c", "a.toml"], None),
        ([], None),
    ],
)
def test_parse_agent_run(argv: list[str], expected: dict[str, str] | None) -> None:
    assert parse_agent_run(argv) == expected


def test_agent_run_does_not_load_the_cli_framework(tmp_path: pytest.TempPathFactory) -> None:
    code = ("import sys; from meshmon.daemon import main\n"
            "try:\n    main(['agent', 'run', '-c', sys.argv[1]])\n"
            "except SystemExit as e:\n"
            "    print(e.code, 'typer' in sys.modules, 'pydantic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path) + "/missing.toml"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False", "False"], out
    assert out.stderr.startswith("error: ") and "missing.toml" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_other_commands_still_reach_typer() -> None:
    out = subprocess.run([sys.executable, "-m", "meshmon", "agent", "run", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--config" in out.stdout
