"""``meshmon config``: check a config file as the agent would, print the effective config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshmon.cli.common import fail_config
from meshmon.configload import ConfigError, encode

config_app = typer.Typer(help="Validate and print agent configuration files.",
                         no_args_is_help=True)  # fmt: skip


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The agent's TOML config.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the effective config as JSON.")]
    = False,
    skip_files: Annotated[bool, typer.Option(
        "--skip-files", help="Check the file alone, not the TLS files and CA bundles it names "
        "(e.g. in CI, away from the node's secrets).")] = False,
) -> None:  # fmt: skip
    """Check a config as the agent would and print the effective configuration.

    Checks every key, type and range; probe kinds (plugins too), their params and the syntax
    of every target and seed; and the TLS files (readable, key private, certificate from the
    mesh CA, valid, not revoked, for node.name and node.tags). Prints every problem, one line
    each, and exits 2; prints the effective config (defaults filled in) and exits 0 otherwise.
    """
    from meshmon.configcheck import load_checked

    try:
        config = load_checked(file, files=not skip_files)
    except ConfigError as exc:
        fail_config(exc)
    data = encode(config)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(f"# {file}: OK")
        typer.echo(_to_toml(data))


def _to_toml(data: dict[str, object], prefix: str = "") -> str:
    """Render effective config as TOML (enough for the shapes config produces)."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and key != "params":
            tables.append(_table(f"{prefix}{key}", value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(_table(f"[{prefix}{key}]", item))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines + tables)


def _table(name: str, value: dict[str, object]) -> str:
    body = _to_toml(value, prefix=f"{name.strip('[]')}.")
    return f"\n[{name}]\n{body}"


