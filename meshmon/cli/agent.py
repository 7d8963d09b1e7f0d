"""``meshmon agent run`` and ``meshmon demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from meshmon import pki
from meshmon.cli.common import fail

agent_app = typer.Typer(help="Run a meshmon agent.", no_args_is_help=True)
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text or json (one object a line).")]


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's TOML config.")],
    log_level: LogLevel = "",
    log_format: LogFormat = "",
) -> None:
    """Run an agent in the foreground until SIGINT/SIGTERM (then leave the mesh gracefully)."""
    from meshmon.daemon import run_agent_command

    code = run_agent_command(config, log_level, log_format)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo")(demo)



def demo(
    agents: Annotated[int, typer.Option(help="How many agents (on 127.0.0.2, .3, ...).")] = 3,
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo's CA, certificates, "
                                            "configs and data go.")] = Path("demo-data"),
    plain: Annotated[bool, typer.Option("--plain", help="A plain live table instead of the "
                                        "TUI (also when the output is not a terminal).")]
    = False,
) -> None:  # fmt: skip
    """Start a local mesh (agents and an aggregator) with a fresh CA and open the TUI on it;
    q in the TUI or Ctrl-C stops everything."""
    from meshmon.demo import DemoError, run_demo

    try:
        run_demo(directory, agents, tui=not plain and sys.stdout.isatty())
    except pki.PkiError as exc:
        fail(str(exc))
    except DemoError as exc:
        fail(str(exc), exc.exit_code)


