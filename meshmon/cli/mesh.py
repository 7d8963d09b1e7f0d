"""Mesh-wide read commands: ``meshmon results --mesh``, ``meshmon matrix``, ``meshmon history``.

Each asks one agent's control API (``/v1/mesh/...``), which asks the other agents over mTLS
(:mod:`meshmon.query`). ``--json`` prints the API's answer as it is (shapes documented in
:mod:`meshmon.query`). A partial answer is still an answer: the table is printed, the agents
that did not answer are named on stderr, and the exit code is 0 (1 means no agent answered
the CLI, 2 a usage error).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meshmon.cli.common import ConfigOpt, JsonOpt, SocketOpt, fetch, table

TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", help="Seconds to wait for the other agents (default 2).")]  # fmt: skip
CLIENT_SLACK = 5.0
"""Seconds the CLI waits for the agent beyond the question's own deadline."""


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _time(ts: Any) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def ask(config: Path | None, socket: Path | None, question: str, timeout: float | None,
        **params: Any) -> dict[str, Any]:  # fmt: skip
    """GET ``/v1/mesh/<question>`` with a client timeout beyond the question's deadline."""
    wait = (timeout if timeout is not None else 2.0) + CLIENT_SLACK
    data: dict[str, Any] = fetch(config, socket, f"mesh/{question}", client_timeout=wait,
                                 timeout=timeout, **params)  # fmt: skip
    return data


def partial_lines(data: dict[str, Any]) -> list[str]:
    """What the operator should know about agents missing or cut short."""
    lines = []
    missing = data.get("missing", {})
    if missing:
        lines.append(f"partial answer: {len(missing)} of {data.get('asked')} agent(s) did not "
                     "answer:")  # fmt: skip
        details = data.get("details", {})
        lines += [f"  {name}: {reason} ({details.get(name, '')})"
                  for name, reason in missing.items()]  # fmt: skip
    if data.get("truncated"):
        lines.append(f"truncated to the size limit: {', '.join(data['truncated'])} (narrow "
                     "the question with --check/--target)")  # fmt: skip
    return lines


def show(data: dict[str, Any], as_json: bool, text: str) -> None:
    """Print JSON, or the text and the partial-answer notes on stderr."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(text)
    for line in partial_lines(data):
        typer.echo(line, err=True)


def latest_table(data: dict[str, Any]) -> str:
    """``results --mesh``: one row per agent, check and target."""
    rows = []
    for agent, answer in data.get("answers", {}).items():
        for r in answer.get("results", []):
            rows.append((agent, r.get("check"), r.get("target"), _time(r.get("timestamp")),
                         "ok" if r.get("success") else "FAIL", _ms(r.get("response_time_ms")),
                         _pct(r.get("loss_pct")), r.get("error") or ""))  # fmt: skip
    return table(("AGENT", "CHECK", "TARGET", "TIME", "STATUS", "RTT_MS", "LOSS", "ERROR"), rows)


def matrix_tables(data: dict[str, Any]) -> str:
    """One agent-by-agent grid per check: ``rtt_median_ms/loss``, ``-`` where nothing."""
    agents = data.get("agents", [])
    cells: dict[str, dict[tuple[str, str], str]] = {}
    for prober, answer in data.get("answers", {}).items():
        for row in answer.get("rows", []):
            cell = f"{_ms(row.get('rtt_median_ms'))}/{_pct(row.get('loss_pct'))}"
            cells.setdefault(row.get("check", "?"), {})[(prober, row.get("target", "?"))] = cell
    if not cells:
        return (f"no results toward members tagged {data.get('tag')!r} in the last "
                f"{data.get('window_s', 0):g}s (is there a check with target_tags including it?)")
    out = []
    for check, grid in sorted(cells.items()):
        rows = [(prober, *[("x" if prober == t else grid.get((prober, t), "-")) for t in agents])
                for prober in sorted(data.get("answers", {}))]  # fmt: skip
        out.append(f"{check} (median RTT ms / loss, last {data.get('window_s', 0):g}s; "
                   "rows probe columns)\n" + table(("FROM \\ TO", *agents), rows))  # fmt: skip
    return "\n\n".join(out)


def history_table(data: dict[str, Any]) -> str:
    """``history``: points per prober that holds any."""
    out = []
    for agent, answer in data.get("answers", {}).items():
        points = answer.get("points", [])
        if not points:
            continue
        step = answer.get("step_s")
        how = f"buckets of {f'{step:.1f}'.removesuffix('.0')}s" if step else "each result"
        rows = [(_time(p.get("t")), p.get("n"), p.get("ok"), _ms(p.get("rtt_ms")),
                 _ms(p.get("rtt_min_ms")), _ms(p.get("rtt_max_ms")), _pct(p.get("loss_pct")))
                for p in points]  # fmt: skip
        out.append(f"{agent}: {answer.get('records')} result(s), {how}\n"
                   + table(("TIME", "N", "OK", "RTT_MS", "MIN", "MAX", "LOSS"), rows))
    return "\n\n".join(out) or (f"no agent holds results of {data.get('check')} toward "
                                f"{data.get('target')} in that range")  # fmt: skip


def mesh_results(config: Path | None, socket: Path | None, check: str | None,
                 target: str | None, as_json: bool, timeout: float | None,
                 full: bool = False) -> None:  # fmt: skip
    """``meshmon results --mesh``."""
    data = ask(config, socket, "latest", timeout, check=check, target=target,
               full=1 if full else None)  # fmt: skip
    show(data, as_json, latest_table(data))


def register(app: typer.Typer) -> None:
    """Add ``matrix`` and ``history`` to the root app (``results --mesh`` is in :mod:`.ops`)."""

    @app.command("matrix")
    def matrix(
        tag: Annotated[str, typer.Option("--tag", help="The tag whose members form the matrix.")],
        config: ConfigOpt = None,
        socket: SocketOpt = None,
        check: Annotated[str | None, typer.Option(help="Only this check.")] = None,
        window: Annotated[str, typer.Option(help="How far back, e.g. 5m.")] = "5m",
        timeout: TimeoutOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Latency and loss between the members of a tag, asked of every one of them."""
        data = ask(config, socket, "matrix", timeout, tag=tag, check=check, window=window)
        show(data, as_json, matrix_tables(data))

    @app.command("history")
    def history(
        check: Annotated[str, typer.Option("--check", help="The check.")],
        target: Annotated[str, typer.Option("--target", help="The target.")],
        config: ConfigOpt = None,
        socket: SocketOpt = None,
        since: Annotated[str, typer.Option(help="How far back, e.g. 1h.")] = "1h",
        until: Annotated[str | None, typer.Option(help="Up to when (default now).")] = None,
        points: Annotated[int, typer.Option(help="Most points per prober.")] = 60,
        timeout: TimeoutOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """A target's history from each agent that probed it."""
        data = ask(config, socket, "history", timeout, check=check, target=target, since=since,
                   until=until, points=points)  # fmt: skip
        show(data, as_json, history_table(data))
