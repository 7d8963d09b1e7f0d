"""``meshmon aggregator run | status | token``: the optional central history service.

The service itself lives in the ``aggregator`` package; these commands import it only when
they run, so the rest of the CLI starts as quickly as before. How a command reaches the
aggregator:

* ``--aggregator URL`` (or ``MESHMON_AGGREGATOR``): its HTTPS API, trusting the mesh CA from
  ``--ca`` (or ``MESHMON_CA_CERT``, or the ``-c`` config's ``tls.ca_cert``), authenticated by
  ``--token`` (or ``MESHMON_TOKEN``) and/or the ``-c`` config's certificate;
* ``-c AGGREGATOR.toml`` without a URL: ``status`` asks the running aggregator at its
  configured address with the aggregator's own certificate; ``token`` commands open its
  database (``database_url``, or the embedded server under ``data_dir``, started for the
  command if the aggregator is not running) — that is how the first admin token is made;
* ``--db URL`` / ``--data DIR``: that database directly.

Every operator mistake is one ``error:`` line and exit status 2; an unreachable or refusing
aggregator is exit status 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from aggregator.client import AggregatorClient
    from aggregator.config import ServerConfig

aggregator_app = typer.Typer(help="The optional aggregator: central history in PostgreSQL.",
                             no_args_is_help=True)  # fmt: skip
token_app = typer.Typer(help="API tokens for readers of the aggregator.", no_args_is_help=True)
aggregator_app.add_typer(token_app, name="token")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="The aggregator's TOML "
                                                "config.")]  # fmt: skip
DbOpt = Annotated[str | None, typer.Option("--db", help="PostgreSQL URL (overrides "
                                           "database_url; empty config: embedded).")]  # fmt: skip
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data directory (overrides "
                                              "data_dir).")]  # fmt: skip
UrlOpt = Annotated[str | None, typer.Option("--aggregator", help="https://HOST:PORT of a "
                                            "running aggregator (env MESHMON_AGGREGATOR).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Bearer token (env "
                                              "MESHMON_TOKEN).")]  # fmt: skip
CaOpt = Annotated[Path | None, typer.Option("--ca", help="The mesh CA certificate (env "
                                            "MESHMON_CA_CERT).")]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, db: str | None = None, data: Path | None = None) -> ServerConfig:
    """The aggregator config with command-line overrides, or exit with its errors."""
    import dataclasses

    from aggregator.config import load_config
    from meshmon.configload import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for error in getattr(exc, "errors", [exc]):
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if db is not None:
        cfg = dataclasses.replace(cfg, database_url=db)
    if data is not None:
        cfg = dataclasses.replace(cfg, data_dir=data.absolute())
    return cfg


def client_for(url: str | None, token: str | None, ca: Path | None,
               tls: Any | None = None) -> AggregatorClient:  # fmt: skip
    """An API client: URL and token from options or environment; the CA from ``--ca``, the
    environment or ``tls`` (a config's ``[tls]``, whose certificate also authenticates)."""
    from aggregator.client import AggregatorClient, ClientError

    url = url or os.environ.get("MESHMON_AGGREGATOR")
    if not url:
        _fail("pass --aggregator https://HOST:PORT (or set MESHMON_AGGREGATOR), or -c with the "
              "aggregator's config on its host")  # fmt: skip
    token = token or os.environ.get("MESHMON_TOKEN") or None
    ca = ca or (Path(os.environ["MESHMON_CA_CERT"]) if os.environ.get("MESHMON_CA_CERT")
                else None) or (tls.ca_cert if tls is not None else None)  # fmt: skip
    if ca is None:
        _fail("pass --ca CA.crt (the mesh CA certificate) or -c CONFIG to trust the aggregator")
    cert = key = crl = None
    if tls is not None and tls.cert.exists() and tls.key.exists():
        cert, key, crl = tls.cert, tls.key, tls.crl
    if token is None and cert is None:
        _fail("pass --token TOKEN (or set MESHMON_TOKEN), or -c CONFIG whose certificate "
              "authenticates this client")  # fmt: skip
    try:
        return AggregatorClient(url, ca=ca, token=token, cert=cert, key=key, crl=crl)
    except ClientError as exc:
        _fail(str(exc))


def ask(client: AggregatorClient, method: str, path: str, params: dict[str, Any] | None = None,
        body: Any = None) -> Any:  # fmt: skip
    """One request, or exit with the aggregator's explanation (2 for a bad parameter)."""
    from aggregator.client import ClientError

    try:
        return client.request(method, path, params, body)
    except ClientError as exc:
        _fail(str(exc), EXIT_USAGE if exc.status in (400, 404) else EXIT_FAILURE)


def _local_url(cfg: ServerConfig) -> str:
    """The running aggregator's URL (as it recorded it), else its configured address."""
    from aggregator.server import listening_url

    running = listening_url(cfg)
    if running:
        return running
    host = cfg.address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"https://{f'[{host}]' if ':' in host else host}:{cfg.port}"


# --- run ---------------------------------------------------------------------------------------


@aggregator_app.command("run")
def run(
    config: ConfigOpt = None,
    db: DbOpt = None,
    data: DataOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or "
                                           "error.")] = "",
    log_format: Annotated[str, typer.Option("--log-format", help="text or json.")] = "",
) -> None:  # fmt: skip
    """Run the aggregator in the foreground until SIGINT/SIGTERM.

    Starts the embedded PostgreSQL when no database URL is configured, applies the schema
    migrations, then serves agents' uploads and the query API over HTTPS (mesh TLS).
    """
    from aggregator.server import run_command

    cfg = _load(config, db, data)
    code = run_command(cfg, log_level, log_format)
    if code:
        raise typer.Exit(code)


# --- status ------------------------------------------------------------------------------------


@aggregator_app.command("status")
def status(
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
    db: Annotated[str | None, typer.Option("--db", help="Read this database directly instead "
                                           "of asking the running aggregator.")] = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Agents that upload to the aggregator: last sync, lag, records, losses."""
    if db is not None:
        from aggregator import queries
        from aggregator.server import direct_call

        agents = direct_call(db, queries.agents)
        health = {"status": "ok", "database": "ok (read directly)"}
    else:
        tls = None
        if config is not None:
            cfg = _load(config)
            url = url or os.environ.get("MESHMON_AGGREGATOR") or _local_url(cfg)
            tls = cfg.tls
        client = client_for(url, token, ca, tls)
        health = ask(client, "GET", "/healthz")
        agents = ask(client, "GET", "/v1/agents")
    if as_json:
        typer.echo(json.dumps({"health": health, "agents": agents}, indent=2))
        return
    typer.echo(f"aggregator: {health.get('status')}, database {health.get('database')}")
    typer.echo(agents_table(agents))


def agents_table(agents: list[dict[str, Any]]) -> str:
    """Agents as a table: last sync, lag, records, skipped and lost counts."""
    from meshmon.cli.common import table

    def age(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"{seconds / size:.0f}{unit}"
        return f"{seconds:.0f}s"

    rows = [(a["agent"], ",".join(a.get("tags") or []), (a.get("last_sync") or "-")[:19],
             age(a.get("since_sync_s")), age(a.get("lag_s")), a.get("records", 0),
             a.get("skipped", 0), a.get("lost_total", 0), len(a.get("stores", [])))
            for a in agents]  # fmt: skip
    if not rows:
        return "no agent has uploaded yet"
    return table(("AGENT", "TAGS", "LAST SYNC (UTC)", "AGO", "LAG", "RECORDS", "SKIPPED", "LOST",
                  "STORES"), rows)  # fmt: skip


# --- tokens ------------------------------------------------------------------------------------


def _token_call(config: Path | None, db: str | None, data: Path | None, fn: Any,
                *args: Any) -> Any:  # fmt: skip
    from aggregator.auth import TokenError
    from aggregator.server import ServiceError, database_call

    cfg = _load(config, db, data)
    try:
        return database_call(cfg, fn, *args)
    except TokenError as exc:
        _fail(str(exc))
    except ServiceError as exc:
        _fail(str(exc), exc.exit_code)


def _print_tokens(rows: list[dict[str, Any]], as_json: bool) -> None:
    from meshmon.cli.common import table

    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no tokens; create one with: meshmon aggregator token create NAME")
    else:
        typer.echo(table(("NAME", "SCOPE", "CREATED (UTC)", "LAST USED (UTC)"),
                         [(r["name"], r["scope"], (r.get("created_at") or "-")[:19],
                           (r.get("last_used") or "-")[:19]) for r in rows]))  # fmt: skip


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token (who or what uses it).")],
    scope: Annotated[str, typer.Option("--scope", help="read, or admin (also manages "
                                       "tokens).")] = "read",
    config: ConfigOpt = None, db: DbOpt = None, data: DataOpt = None,
    url: UrlOpt = None, token: TokenOpt = None, ca: CaOpt = None,
) -> None:  # fmt: skip
    """Create an API token and print it (once: only its hash is stored)."""
    if scope not in ("read", "admin"):
        _fail(f"--scope must be read or admin, not {scope!r}")
    if url is not None:
        created = ask(client_for(url, token, ca), "POST", "/v1/tokens",
                      body={"name": name, "scope": scope})  # fmt: skip
        secret = created["token"]
    else:
        from aggregator import auth

        secret, _ = _token_call(config, db, data, auth.create_token, name, scope)
    typer.echo(secret)
    typer.echo(f"created {scope} token {name!r}; it is shown only now: store it safely",
               err=True)  # fmt: skip


@token_app.command("list")
def token_list(
    config: ConfigOpt = None, db: DbOpt = None, data: DataOpt = None,
    url: UrlOpt = None, token: TokenOpt = None, ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """List API tokens (names, scopes, last use; never the secrets)."""
    if url is not None:
        rows = ask(client_for(url, token, ca), "GET", "/v1/tokens")
    else:
        from aggregator import auth, queries

        rows = [{"name": t.name, "scope": t.scope, "created_at": queries.iso(t.created_at),
                 "last_used": queries.iso(t.last_used)}
                for t in _token_call(config, db, data, auth.list_tokens)]  # fmt: skip
    _print_tokens(rows, as_json)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    config: ConfigOpt = None, db: DbOpt = None, data: DataOpt = None,
    url: UrlOpt = None, token: TokenOpt = None, ca: CaOpt = None,
) -> None:  # fmt: skip
    """Revoke an API token: it stops working at once (within 5 s on other aggregators)."""
    if url is not None:
        ask(client_for(url, token, ca), "DELETE", f"/v1/tokens/{name}")
    else:
        from aggregator import auth

        if not _token_call(config, db, data, auth.revoke_token, name):
            _fail(f"no token called {name!r}; see: meshmon aggregator token list")
    typer.echo(f"revoked token {name!r}")


# --- `meshmon results|members --aggregator URL` --------------------------------------------------


def _agent_tls(config: Path | None) -> Any | None:
    """The ``[tls]`` of an agent config given with ``-c`` (its CA and certificate)."""
    if config is None:
        return None
    from meshmon.config import load_config
    from meshmon.configload import ConfigError

    try:
        return load_config(config).tls
    except ConfigError as exc:
        for error in getattr(exc, "errors", [exc]):
            typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _when(iso: str | None) -> str:
    import datetime as dt

    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone().strftime("%m-%d %H:%M:%S")


def results_from_aggregator(url: str, token: str | None, ca: Path | None, config: Path | None,
                            *, check: str | None, target: str | None, agent: str | None,
                            since: str | None, limit: int, latest: bool,
                            as_json: bool) -> None:  # fmt: skip
    """``meshmon results --aggregator URL``: the newest ``limit`` raw results in the range."""
    from meshmon.cli.common import table

    client = client_for(url, token, ca, _agent_tls(config))
    data = ask(client, "GET", "/v1/results", {
        "check": check, "target": target, "agent": agent, "since": since or "1h",
        "limit": limit, "order": "desc", "resolution": "raw",
        "latest": "true" if latest else None})  # fmt: skip
    rows = list(reversed(data["rows"]))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(table(("TIME", "AGENT", "CHECK", "TARGET", "STATUS", "RTT_MS", "ERROR"), [
        (_when(r["time"]), r["agent"], r["check"], r["target"], "ok" if r["success"] else "FAIL",
         "-" if r.get("rtt_ms") is None else f"{r['rtt_ms']:.3f}", r.get("error") or "")
        for r in rows]))  # fmt: skip
    if data.get("truncated"):
        typer.echo(f"(the newest {len(rows)}; use --limit or --since for more)", err=True)


def members_from_aggregator(url: str, token: str | None, ca: Path | None, config: Path | None,
                            reporter: str | None, as_json: bool) -> None:  # fmt: skip
    """``meshmon members --aggregator URL``: every agent's last reported view."""
    from meshmon.cli.common import table

    client = client_for(url, token, ca, _agent_tls(config))
    rows = ask(client, "GET", "/v1/members", {"reporter": reporter})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(table(
        ("REPORTER", "NAME", "ADDRESS", "STATE", "INC", "TAGS (CLAIMED)", "CERT TAGS", "VERSION",
         "REPORTED"),
        [(m["reporter"], m["name"], m["address"], m["state"], m["incarnation"],
          ",".join(m["tags"]), "-" if m["certificate_tags"] is None
          else ",".join(m["certificate_tags"]), m["version"], _when(m["reported_at"]))
         for m in rows]))  # fmt: skip
