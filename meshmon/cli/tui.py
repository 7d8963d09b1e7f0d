"""``meshmon tui``: open the Textual view of the mesh on a running agent's control API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshmon.cli.common import ConfigOpt, SocketOpt, socket_path


def register(app: typer.Typer) -> None:
    """Add ``meshmon tui`` to the root app."""

    @app.command("tui")
    def tui(
        config: ConfigOpt = None,
        socket: SocketOpt = None,
        aggregator: Annotated[str | None, typer.Option(
            "--aggregator", help="An aggregator's URL (its query API is not available yet).")]
        = None,
        interval: Annotated[float, typer.Option(
            "--interval", help="Seconds between refreshes of the screen shown (0.2 to 60).")]
        = 1.0,
        replay: Annotated[Path | None, typer.Option(
            "--replay", help="Show a recording made with the TUI's recorder instead of a live "
            "agent (for demos and tests).", hidden=True)] = None,
    ) -> None:  # fmt: skip
        """Watch the mesh live from a running agent: members, coverage, results, the latency
        matrix, paths and alerts (press ? inside for the keys)."""
        from meshmon.tui import AgentSource, MeshmonApp, RecordedSource, TuiConfig
        from meshmon.tui.source import DataSource

        given = [name for name, value in (("--config", config), ("--socket", socket),
                                          ("--aggregator", aggregator), ("--replay", replay))
                 if value is not None]  # fmt: skip
        if len(given) > 1:
            typer.echo(f"error: {' and '.join(given)}: give one place to read from", err=True)
            raise typer.Exit(2)
        if aggregator is not None:
            typer.echo("error: --aggregator: the TUI cannot read an aggregator yet (its query "
                       "API is still to come); attach to any agent of the mesh with "
                       "-c AGENT.toml or --socket PATH", err=True)  # fmt: skip
            raise typer.Exit(2)
        if not 0.2 <= interval <= 60:
            typer.echo(f"error: --interval {interval:g}: give 0.2 to 60 seconds", err=True)
            raise typer.Exit(2)
        source: DataSource
        if replay is not None:
            try:
                source = RecordedSource(replay)
            except (OSError, ValueError, KeyError) as exc:
                typer.echo(f"error: --replay {replay}: {exc}", err=True)
                raise typer.Exit(2) from None
        else:
            path = socket_path(config, socket)
            if not path.exists():
                typer.echo(f"error: no control socket at {path}; is the agent running? (start "
                           "it with `meshmon agent run -c FILE`)", err=True)  # fmt: skip
                raise typer.Exit(1)
            source = AgentSource(path)
        MeshmonApp(source, TuiConfig(interval=interval)).run()
