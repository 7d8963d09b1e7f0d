"""The aggregator's query API answers as the TUI's model values (:mod:`meshmon.tui.model`).

Shapes read here (:mod:`aggregator.app`): ``/healthz``, ``/v1/agents``, ``/v1/members``,
``/v1/results`` (raw rows, rollup buckets, ``latest``, ``detail``), ``/v1/matrix`` and
``/v1/incidents``. Raw rows are rewritten into the agent's result-row shape and parsed by the
same functions as an agent's answers (:func:`~meshmon.tui.model.sample_from_result`,
:func:`~meshmon.tui.model.trace_from_result`), so both sources mean the same by every field;
history rows become points as the agents' archive makes them (:mod:`meshmon.query.archive`).

What the aggregator knows differs from what an agent knows, and the values say so: members are
one reporting agent's view, with the tags of each member's own certificate; loss is a fraction
there (a percentage here); a matrix cell's RTT is a mean, not a median; an incident's rules and
receivers are not known centrally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshmon.query.archive import downsample_points, epoch, row_point
from meshmon.tui.model import (
    Alert,
    Alerts,
    FormatError,
    Matrix,
    MatrixCell,
    Member,
    Sample,
    Status,
    Trace,
    history_samples,
    sample_from_result,
    trace_from_result,
)


def _obj(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FormatError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise FormatError(f"{where}: expected a list, got {type(data).__name__}")
    return data


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None  # fmt: skip


def _pct(fraction: Any) -> float | None:
    value = _num(fraction)
    return None if value is None else 100.0 * value


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _rows(data: Any, where: str) -> list[Mapping[str, Any]]:
    return [_obj(r, f"{where}.rows[{i}]")
            for i, r in enumerate(_list(_obj(data, where).get("rows"), f"{where}.rows"))]


def parse_health(data: Any, url: str, name: str) -> Status:
    """``/healthz`` of the aggregator at ``url`` whose certificate names ``name``."""
    d = _obj(data, "healthz")
    database = str(d.get("database", ""))
    return Status(node=name or url, address=url, version=str(d.get("version", "?")),
                  degraded=d.get("status") != "ok",
                  degraded_reason="" if database == "ok" else f"database: {database}",
                  kind="aggregator")  # fmt: skip


def freshest_reporter(agents: Any) -> str | None:
    """Of ``/v1/agents``, the agent that synced last (its view of the mesh is the newest)."""
    best: tuple[float, str] | None = None
    for i, item in enumerate(_list(agents, "agents")):
        a = _obj(item, f"agents[{i}]")
        when = epoch(a.get("last_sync")) if a.get("last_sync") else None
        name = a.get("agent")
        if isinstance(name, str) and when is not None and (best is None or when > best[0]):
            best = (when, name)
    return best[1] if best else None


def parse_members(data: Any) -> list[Member]:
    """``/v1/members`` rows, one member per name (the most recent report of it if several
    reporters are given); tags from the member's own certificate where the aggregator saw
    it, else as reported."""
    newest: dict[str, tuple[float, Mapping[str, Any]]] = {}
    for i, item in enumerate(_list(data, "members")):
        m = _obj(item, f"members[{i}]")
        name = m.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(f"members[{i}]: 'name' missing or not text")
        when = epoch(m.get("reported_at")) or 0.0
        if name not in newest or when > newest[name][0]:
            newest[name] = (when, m)
    out = []
    for name, (_, m) in sorted(newest.items()):
        certified = m.get("certificate_tags")
        out.append(Member(
            name=name, state=str(m.get("state", "?")),
            incarnation=int(_num(m.get("incarnation")) or 0),
            tags=_strings(certified if isinstance(certified, list) else m.get("tags")),
            address=str(m.get("address", "")), version=str(m.get("version", "")),
            since=None, rtt_ms=None,
        ))  # fmt: skip
    return out


def _result_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A raw ``/v1/results`` row in the shape of an agent's latest row."""
    out = {"check": row.get("check"), "target": row.get("target"),
           "timestamp": epoch(row.get("time")), "kind": row.get("kind", ""),
           "success": bool(row.get("success")), "response_time_ms": row.get("rtt_ms"),
           "loss_pct": _pct(row.get("loss")) if row.get("kind") == "ping" else None,
           "jitter_ms": None, "error": row.get("error")}  # fmt: skip
    if isinstance(row.get("result"), Mapping):
        out["result"] = row["result"]
    return out


def parse_latest(data: Any) -> list[Sample]:
    """``/v1/results?latest=true``: each agent's newest raw result per (check, target)."""
    return [sample_from_result(str(r.get("agent")), _result_row(r), f"results.rows[{i}]")
            for i, r in enumerate(_rows(data, "results"))]  # fmt: skip


def parse_history(data: Any, check: str, target: str, since: float, until: float,
                  points: int) -> list[Sample]:  # fmt: skip
    """``/v1/results`` of one series (raw or rollup rows, any order): per agent, points in
    ``[since, until)``, oldest first, at most ``points``."""
    series: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(data, "results"):
        point = row_point(row)
        if point is not None and since <= point["t"] < until:
            series.setdefault(str(row.get("agent")), []).append(point)
    out: list[Sample] = []
    for agent, items in sorted(series.items()):
        items.sort(key=lambda p: p["t"])
        kept, _ = downsample_points(items, points, since, until)
        out += history_samples(agent, check, target, kept, f"history of {agent}")
    return out


def parse_traces(data: Any) -> list[Trace]:
    """``/v1/results?latest=true&detail=true`` of one target: each prober's latest trace."""
    out = []
    for i, r in enumerate(_rows(data, "results")):
        trace = trace_from_result(str(r.get("agent")), _result_row(r), f"results.rows[{i}]")
        if trace is not None:
            out.append(trace)
    return sorted(out, key=lambda t: t.agent)


def parse_matrix(data: Any, window: float) -> Matrix:
    """``/v1/matrix``: one matrix per check, merged (the busiest check's cell where several
    probe the same pair), as the agents' matrix is."""
    d = _obj(data, "matrix")
    rows, columns = _strings(d.get("rows")), _strings(d.get("columns"))
    cells: dict[tuple[str, str], MatrixCell] = {}
    for n, item in enumerate(_list(d.get("matrices", []), "matrix.matrices")):
        grid = _list(_obj(item, f"matrices[{n}]").get("cells", []), f"matrices[{n}].cells")
        for i, line in enumerate(grid[:len(rows)]):
            for j, value in enumerate(_list(line, f"matrices[{n}].cells[{i}]")[:len(columns)]):
                if not isinstance(value, Mapping):
                    continue
                cell = MatrixCell(samples=int(_num(value.get("count")) or 0),
                                  loss_pct=_pct(value.get("loss")),
                                  rtt_ms=_num(value.get("rtt_avg_ms")), last=None)  # fmt: skip
                old = cells.get((rows[i], columns[j]))
                if old is None or cell.samples > old.samples:
                    cells[(rows[i], columns[j])] = cell
    return Matrix(tag=str(d.get("tag", "")), window_s=window,
                  agents=tuple(sorted(set(rows) | set(columns))), cells=cells,
                  rtt_stat="mean")  # fmt: skip


def _incident(data: Any, state: str, where: str) -> Alert:
    i = _obj(data, where)
    return Alert(state=state, rule=str(i.get("rule", "")), check=str(i.get("check", "")),
                 target=str(i.get("target", "")), since=epoch(i.get("opened_at")),
                 duration_s=_num(i.get("duration_s")), probers=_strings(i.get("probers")),
                 notifier=str(i.get("notifier", "")))  # fmt: skip


def parse_incidents(data: Any) -> Alerts:
    """``/v1/incidents``: firing first, then resolved."""
    d = _obj(data, "incidents")
    alerts = [_incident(x, "firing", f"incidents.firing[{n}]")
              for n, x in enumerate(_list(d.get("firing", []), "incidents.firing"))]
    alerts += [_incident(x, "resolved", f"incidents.recent[{n}]")
               for n, x in enumerate(_list(d.get("recent", []), "incidents.recent"))]
    return Alerts(available=True, enabled=True, alerts=tuple(alerts), source="aggregator")
