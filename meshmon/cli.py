"""The ``meshmon`` command line (typer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from meshmon import pki
from meshmon.cli_aggregator import aggregator_app
from meshmon.cli_probe import probe_app
from meshmon.configload import ConfigError, encode
from meshmon.version import __version__

app = typer.Typer(
    help="meshmon: a peer-to-peer mesh of network monitoring agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(help="Create the mesh certificate authority (the mesh is its CA).",
                     no_args_is_help=True)  # fmt: skip
cert_app = typer.Typer(help="Issue, revoke and list node certificates.", no_args_is_help=True)
config_app = typer.Typer(help="Validate and print agent configuration files.",
                         no_args_is_help=True)  # fmt: skip
agent_app = typer.Typer(help="Run a meshmon agent.", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
app.add_typer(cert_app, name="cert")
app.add_typer(config_app, name="config")
app.add_typer(agent_app, name="agent")
app.add_typer(probe_app, name="probe")
app.add_typer(aggregator_app, name="aggregator")

from meshmon import cli_ops  # noqa: E402 - after the root app exists

cli_ops.register(app)

from meshmon import cli_mesh  # noqa: E402 - after the root app exists

cli_mesh.register(app)

from meshmon import cli_tui  # noqa: E402 - after the root app exists

cli_tui.register(app)

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text or json (one object a line).")]


from meshmon.daemon import EXIT_USAGE  # noqa: E402 - exit codes, one meaning each


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshmon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:  # fmt: skip
    """meshmon: a peer-to-peer mesh of network monitoring agents."""


@ca_app.command("init")
def ca_init(
    directory: Annotated[Path, typer.Argument(help="Folder for the CA (created).")],
    name: Annotated[str, typer.Option(help="The CA's common name.")] = "meshmon mesh CA",
    days: Annotated[int, typer.Option(help="Validity in days.")] = 3650,
) -> None:
    """Create a mesh CA: ca.key (0600), ca.crt, an empty crl.pem."""
    try:
        cert = pki.init_ca(directory, name=name, days=days)
    except pki.PkiError as exc:
        fail(str(exc))
    typer.echo(f"created mesh CA {cert} (keep {directory / pki.CA_KEY} secret and offline)")


@cert_app.command("issue")
def cert_issue(
    ca: Annotated[Path, typer.Option("--ca", help="The CA folder (from meshmon ca init).")],
    name: Annotated[str, typer.Option("--name", help="Node name (must match node.name).")],
    out: Annotated[Path, typer.Option("--out", help="The node's folder; its key is made here.")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="An IP SAN (repeatable).")] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="A DNS SAN (repeatable).")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Issue a node certificate; the node key is generated in --out and never leaves it."""
    try:
        path = pki.issue_cert(ca, name, out, tags=tag or [], ips=ip or [], dns_names=dns or [],
                              days=days)  # fmt: skip
    except pki.PkiError as exc:
        fail(str(exc))
    typer.echo(f"issued {path} for node {name} (key {out / pki.NODE_KEY}, CA and CRL copied)")


@cert_app.command("revoke")
def cert_revoke(
    node: Annotated[str, typer.Argument(help="Node name whose certificates to revoke.")],
    ca: Annotated[Path, typer.Option("--ca", help="The CA folder.")],
) -> None:
    """Revoke a node's certificates and write a new crl.pem (agents spread it to each other)."""
    try:
        serials = pki.revoke(ca, node)
    except pki.PkiError as exc:
        fail(str(exc))
    if serials:
        typer.echo(f"revoked {len(serials)} certificate(s) of {node}; new CRL {ca / pki.CRL_FILE}")
    else:
        typer.echo(f"{node} had no unrevoked certificates; CRL rewritten")


@cert_app.command("list")
def cert_list(
    ca: Annotated[Path, typer.Option("--ca", help="The CA folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the certificates the CA issued."""
    try:
        rows = pki.list_issued(ca)
    except pki.PkiError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    typer.echo(f"{'NODE':20} {'SERIAL':>12}  {'EXPIRES':25} STATUS")
    for r in rows:
        status = "revoked" if r.revoked else "valid"
        typer.echo(f"{r.name:20} {r.serial % 10**12:>12x}  {r.not_after:25} {status}")


def fail_config(exc: ConfigError) -> NoReturn:
    """Print every config error, one ``error:`` line each, and exit 2."""
    for error in getattr(exc, "errors", [exc]):
        typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


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


@app.command("demo")
def demo(
    agents: Annotated[int, typer.Option(help="How many agents (on 127.0.0.2, .3, ...).")] = 3,
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo's CA, certificates, "
                                            "configs and data go.")] = Path("demo-data"),
) -> None:  # fmt: skip
    """Start a local mesh on this machine with a fresh CA; Ctrl-C stops everything."""
    from meshmon.demo import DemoError, run_demo

    try:
        run_demo(directory, agents)
    except pki.PkiError as exc:
        fail(str(exc))
    except DemoError as exc:
        fail(str(exc), exc.exit_code)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
