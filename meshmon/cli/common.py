"""What the command groups share: options, the control-API fetch, tables and times, and
the one-line errors (exit codes mean one thing each: 0 ok, 1 findings or a failed request, 2
usage)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from meshmon.configload import ConfigError
from meshmon.control import BadParameter, ControlClient, ControlError
from meshmon.daemon import EXIT_USAGE

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="The agent's config file "
                                                "(to find its control socket).")]  # fmt: skip
SocketOpt = Annotated[Path | None, typer.Option("--socket", help="The agent's control socket.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AggregatorOpt = Annotated[str | None, typer.Option(
    "--aggregator", help="Ask this aggregator (https://HOST:PORT) instead of the local agent; "
    "trusts the mesh CA from --ca or the -c config, authenticates with --token or the -c "
    "config's certificate.")]  # fmt: skip
TokenOpt = Annotated[str | None, typer.Option("--token", help="With --aggregator: a bearer "
                                              "token (env MESHMON_TOKEN).")]  # fmt: skip
CaOpt = Annotated[Path | None, typer.Option("--ca", help="With --aggregator: the mesh CA "
                                            "certificate (env MESHMON_CA_CERT).")]  # fmt: skip


def socket_path(config: Path | None, socket: Path | None) -> Path:
    """Where the agent's control API listens, from the options or the environment."""
    if socket:
        return socket
    if os.environ.get("MESHMON_SOCKET"):
        return Path(os.environ["MESHMON_SOCKET"])
    config = config or (Path(os.environ["MESHMON_CONFIG"]) if os.environ.get("MESHMON_CONFIG")
                        else None)  # fmt: skip
    if config is None:
        default = Path("/var/lib/meshmon/control.sock")
        if default.exists():
            return default
        raise typer.BadParameter("pass --config AGENT.toml or --socket PATH of the running agent")
    from meshmon.config import load_config

    try:
        return load_config(config).control_socket
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def fetch(config: Path | None, socket: Path | None, endpoint: str, *,
          client_timeout: float = 5.0, **params: Any) -> Any:  # fmt: skip
    """GET an endpoint or exit with the client's explanation."""
    client = ControlClient(socket_path(config, socket), timeout=client_timeout)
    try:
        return client.get(endpoint, **params)
    except BadParameter as exc:  # a usage error, as a bad option is
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ControlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)  # fmt: skip


def ago(ts: float | None, now: float | None = None) -> str:
    """``12s``, ``5m``, ``3h`` since ``ts``."""
    if not ts:
        return "-"
    delta = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit}"
    return f"{delta:.0f}s"


def clock(ts: float | None) -> str:
    """``HH:MM:SS`` (local time) and how long ago."""
    if not ts:
        return "-"
    return f"{dt.datetime.fromtimestamp(ts).strftime('%H:%M:%S')} ({ago(ts)} ago)"



def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` to stderr and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fail_config(exc: ConfigError) -> NoReturn:
    """Print every config error, one ``error:`` line each, and exit 2."""
    for error in getattr(exc, "errors", [exc]):
        typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)
