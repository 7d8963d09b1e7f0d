"""The ``meshmon`` command line (typer): the root app and its command groups, one module each.

======================  ===========================================================
module                  commands
======================  ===========================================================
:mod:`.pki`             ``ca init``, ``cert issue | revoke | list``
:mod:`.config`          ``config check``
:mod:`.agent`           ``agent run``, ``demo``
:mod:`.ops`             ``status``, ``members``, ``assignments``, ``results``, ``alerts``
:mod:`.mesh`            ``matrix``, ``history`` (and ``results --mesh``)
:mod:`.probe`           ``probe ping | trace | tcp | udp | http | tls | ...``
:mod:`.aggregator`      ``aggregator run | status | token``
:mod:`.tui`             ``tui``
======================  ===========================================================

Every read command takes ``--json``. Exit codes mean one thing each: 0 ok, 1 findings (a
firing alert, a failed probe, an agent that did not answer), 2 usage or configuration errors.
Shell completion: ``meshmon --install-completion``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from meshmon.cli import agent, mesh, ops, tui
from meshmon.cli.aggregator import aggregator_app
from meshmon.cli.config import config_app
from meshmon.cli.pki import ca_app, cert_app
from meshmon.cli.probe import probe_app
from meshmon.version import __version__

app = typer.Typer(
    help="meshmon: a peer-to-peer mesh of network monitoring agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(ca_app, name="ca")
app.add_typer(cert_app, name="cert")
app.add_typer(config_app, name="config")
app.add_typer(agent.agent_app, name="agent")
app.add_typer(probe_app, name="probe")
app.add_typer(aggregator_app, name="aggregator")
agent.register(app)
ops.register(app)
mesh.register(app)
tui.register(app)


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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
