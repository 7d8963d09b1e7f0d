"""Operator commands that talk to a running agent through its control API.

``meshmon status | members | assignments | results`` find the agent's unix socket from
``--socket``, or from the agent's config file (``--config``), or from ``MESHMON_SOCKET`` /
``MESHMON_CONFIG``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Annotated, Any

import typer

from meshmon.cli.common import (
    AggregatorOpt,
    CaOpt,
    ConfigOpt,
    JsonOpt,
    SocketOpt,
    TokenOpt,
    ago,
    clock,
    fetch,
    table,
)


def members_table(members: list[dict[str, Any]]) -> str:
    """The membership view as a table."""
    rows = [
        (m["name"], f"{m['address']}:{m['udp_port']}", m["state"], m.get("incarnation", ""),
         ",".join(m.get("tags", [])), m.get("version", ""), ago(m.get("since")))
        for m in sorted(members, key=lambda m: m["name"])
    ]  # fmt: skip
    return table(("NAME", "ADDRESS", "STATE", "INC", "TAGS", "VERSION", "SINCE"), rows)


def store_lines(store: dict[str, Any]) -> list[str]:
    """The store's health in words: state, buffered and lost results, the last outage and
    the last recovery that found damage."""
    state = store.get("state", "ok")
    lost = f"{store.get('lost', 0)} results lost"
    if state == "ok":
        lines = [f"store: ok, {store.get('records', 0)} records, {lost}"]
    else:
        lines = [f"store: {state.upper()} since {clock(store.get('since'))}: "
                 f"{store.get('reason')}",
                 f"  to fix: {store.get('advice')}",
                 f"  {store.get('buffered', 0)} results buffered in memory (written once the "
                 f"disk accepts them), {lost}"]  # fmt: skip
    last = store.get("last_outage")
    if last:
        end = (f"recovered {clock(last['recovered_at'])}" if last.get("recovered_at")
               else "the agent stopped during it")  # fmt: skip
        lines.append(f"  last outage: since {clock(last.get('since'))}, {end}: "
                     f"{last.get('buffered', 0)} buffered, {last.get('written', 0)} written, "
                     f"{last.get('lost', 0)} lost ({last.get('reason')})")  # fmt: skip
    report = store.get("recovery_report")
    if report:
        lines.append(f"  last damaged recovery {clock(report.get('at'))}: "
                     f"{report.get('problems')} problem(s), {report.get('truncated_bytes')} "
                     f"bytes cut, {report.get('skipped_records')} records skipped")  # fmt: skip
        lines += [f"    {p}" for p in report.get("first_problems", [])]
    return lines


def sync_lines(sync: dict[str, Any]) -> list[str]:
    """The upload to the aggregator in words: where, how far behind, what was lost, why not."""
    state = sync.get("state", "off")
    if state == "off":
        return [f"sync: off ({sync.get('reason', 'no aggregator')})"]
    if state == "no-aggregator":
        return ["sync: waiting for an aggregator URL"]
    where = sync.get("url") or "-"
    if sync.get("aggregator"):
        where += f" (aggregator {sync['aggregator']})"
    lines = [f"sync: {state} to {where}: {sync.get('behind', 0)} results behind, cursor at seq "
             f"{sync.get('cursor')}, {sync.get('lost', 0)} lost (overwritten before upload), "
             f"last success {clock(sync.get('last_success'))}"]  # fmt: skip
    if sync.get("last_error"):
        lines.append(f"  last error {clock(sync.get('last_error_at'))}: {sync['last_error']}")
    if state == "backoff":
        lines.append(f"  retrying in {sync.get('backoff_s', 0):g}s "
                     f"({sync.get('failures', 0)} failed round(s))")  # fmt: skip
    return lines


def register(app: typer.Typer) -> None:
    """Add the operator commands to the root ``meshmon`` app."""

    @app.command("status")
    def status(
        config: ConfigOpt = None, socket: SocketOpt = None, as_json: JsonOpt = False
    ) -> None:
        """Show a running agent's identity, uptime, store and loss counters."""
        data = fetch(config, socket, "status")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        if "store" in data:
            typer.echo("\n".join(store_lines(data["store"])))
        if "sync" in data:
            typer.echo("\n".join(sync_lines(data["sync"])))
        for key, value in data.items():
            if isinstance(value, dict):
                typer.echo(f"{key}:")
                for k, v in value.items():
                    typer.echo(f"  {k}: {v}")
            else:
                typer.echo(f"{key}: {value}")

    @app.command("members")
    def members(
        config: ConfigOpt = None, socket: SocketOpt = None, as_json: JsonOpt = False,
        aggregator: AggregatorOpt = None, token: TokenOpt = None, ca: CaOpt = None,
        reporter: Annotated[str | None, typer.Option(
            help="With --aggregator: only this agent's view.")] = None,
    ) -> None:  # fmt: skip
        """List the mesh members as this agent sees them (or, with --aggregator, as every
        agent last reported them)."""
        if aggregator is not None:
            from meshmon.cli.aggregator import members_from_aggregator

            members_from_aggregator(aggregator, token, ca, config, reporter, as_json)
            return
        if reporter is not None or token is not None or ca is not None:
            raise typer.BadParameter("--reporter, --token and --ca go with --aggregator URL")
        data = fetch(config, socket, "members")
        typer.echo(json.dumps(data, indent=2) if as_json else members_table(data))

    @app.command("assignments")
    def assignments(config: ConfigOpt = None, socket: SocketOpt = None,
                    as_json: JsonOpt = False) -> None:  # fmt: skip
        """What this agent probes, and the coverage of every target."""
        data = fetch(config, socket, "assignments")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        mine = data.get("mine", [])
        typer.echo(f"this agent probes {len(mine)} target(s):")
        typer.echo(table(("CHECK", "KIND", "TARGET", "INTERVAL"),
                         [(a["check"], a["kind"], a["target"], a["interval"]) for a in mine]))
        typer.echo("\ncoverage:")
        typer.echo(table(
            ("CHECK", "TARGET", "OWNERS", "WANTED", "PROBED BY"),
            [(c["check"], c["target"], len(c["owners"]), c["wanted"], ",".join(c["owners"]))
             for c in data.get("coverage", [])],
        ))  # fmt: skip

    @app.command("results")
    def results(
        config: ConfigOpt = None,
        socket: SocketOpt = None,
        check: Annotated[str | None, typer.Option(help="Only this check.")] = None,
        target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
        since: Annotated[str | None, typer.Option(help="Only newer than this, e.g. 10m.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many (newest).")] = 50,
        latest: Annotated[bool, typer.Option(help="Only the newest per target.")] = False,
        mesh: Annotated[bool, typer.Option("--mesh", help="The newest per target from every "
                                           "agent of the mesh (asked over mTLS).")] = False,
        timeout: Annotated[float | None, typer.Option(help="With --mesh: seconds to wait for "
                                                      "the other agents.")] = None,
        as_json: JsonOpt = False,
        aggregator: AggregatorOpt = None, token: TokenOpt = None, ca: CaOpt = None,
        agent: Annotated[str | None, typer.Option(
            help="With --aggregator: only results measured by this agent.")] = None,
    ) -> None:  # fmt: skip
        """Show results from the agent's local store (or, with --mesh, from every agent; with
        --aggregator, from the central history of every agent, --since defaulting to 1h)."""
        if aggregator is not None:
            if mesh:
                raise typer.BadParameter("--mesh and --aggregator are two different sources; "
                                         "pick one")  # fmt: skip
            from meshmon.cli.aggregator import results_from_aggregator

            results_from_aggregator(aggregator, token, ca, config, check=check, target=target,
                                    agent=agent, since=since, limit=limit, latest=latest,
                                    as_json=as_json)  # fmt: skip
            return
        if agent is not None or token is not None or ca is not None:
            raise typer.BadParameter("--agent, --token and --ca go with --aggregator URL")
        if mesh:
            if since is not None:
                typer.echo("error: --mesh shows the newest results; for a time range use "
                           "meshmon history --check C --target T --since ...", err=True)
                raise typer.Exit(2)
            from meshmon.cli.mesh import mesh_results

            mesh_results(config, socket, check, target, as_json, timeout)
            return
        data = fetch(config, socket, "results", check=check, target=target, since=since,
                     limit=limit, latest=1 if latest else None)  # fmt: skip
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        rows = [
            (dt.datetime.fromtimestamp(r["timestamp"]).strftime("%H:%M:%S"), r["check"],
             r["target"], "ok" if r["success"] else "FAIL",
             "-" if r.get("response_time_ms") is None else f"{r['response_time_ms']:.3f}",
             r.get("error") or "", "degraded" if r.get("degraded") else "")
            for r in data
        ]  # fmt: skip
        typer.echo(table(("TIME", "CHECK", "TARGET", "STATUS", "RTT_MS", "ERROR", ""), rows))

    @app.command("alerts")
    def alerts(config: ConfigOpt = None, socket: SocketOpt = None,
               as_json: JsonOpt = False) -> None:  # fmt: skip
        """Firing and recent incidents, and what this prober calls failing (exit 1 if firing)."""
        data = fetch(config, socket, "alerts")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        elif not data.get("enabled") or not data.get("rules"):
            typer.echo("no alert rules configured (add [[alerts.rules]] to the agent config)")
        else:
            now = time.time()
            if data.get("impaired"):
                typer.echo("this prober is IMPAIRED: most of its targets failed at once; its "
                           "target verdicts are withheld")  # fmt: skip
            typer.echo(f"firing: {len(data['firing'])}")
            if data["firing"]:
                typer.echo(incident_table(data["firing"], now))
            typer.echo(f"\nrecent: {len(data['recent'])}")
            if data["recent"]:
                typer.echo(incident_table(data["recent"][:20], now))
            if data.get("failing_here"):
                typer.echo("\nthis prober calls failing: " + ", ".join(
                    f"{f['target']} ({f['rule']})" for f in data["failing_here"]))
            if data.get("last_error"):
                typer.echo(f"\nlast delivery error: {data['last_error']}")
        if data.get("firing"):
            raise typer.Exit(1)


def incident_table(incidents: list[dict[str, Any]], now: float) -> str:
    """Incidents as a table, one per line."""
    return table(("ID", "RULE", "TARGET", "CHECK", "OPENED", "FOR", "NOTIFIER", "SENT"), [
        (i["id"], i["rule"], i["target"], i["check"] or "-", ago(i["opened_at"], now),
         f"{i['duration_s']:.0f}s", i["notifier"],
         ("resolved" if i["resolved_sent"] else "firing" if i["firing_sent"] else "pending"))
        for i in incidents])  # fmt: skip
