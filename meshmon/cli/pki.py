"""``meshmon ca`` and ``meshmon cert``: the mesh's certificate authority and node certificates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshmon import pki
from meshmon.cli.common import fail

ca_app = typer.Typer(help="Create the mesh certificate authority (the mesh is its CA).",
                     no_args_is_help=True)  # fmt: skip
cert_app = typer.Typer(help="Issue, revoke and list node certificates.", no_args_is_help=True)


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


