"""What the TUI shows, as frozen dataclasses, and their parsing from the control API's JSON.

Every data source (an agent's control API, a recorded data set, later the aggregator) hands the
screens these types and nothing else, so a screen never sees a transport or a JSON shape.
Parsing is strict about what it needs (a missing name is an error, :class:`FormatError`) and
lenient about what it can do without (a missing RTT is ``None``), so an agent one version apart
still shows what both versions know.

Shapes read here: ``/v1/status``, ``/v1/members``, ``/v1/assignments``, ``/v1/results``
(:mod:`meshmon.control`) and ``/v1/mesh/latest|matrix|history`` (:mod:`meshmon.query`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

STATES = ("alive", "suspect", "dead", "left")
"""Member states in the order the Mesh screen counts and sorts them."""


class FormatError(ValueError):
    """An answer lacks something the TUI needs (another version, or not a meshmon agent)."""


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A source's answer, and how complete it is.

    ``scope`` is ``"mesh"`` when every agent was asked, ``"local"`` when only the attached agent
    answered (its version has no mesh queries); ``missing`` names the agents that did not answer
    a mesh query, with the reason.
    """

    data: T
    scope: Literal["mesh", "local"] = "mesh"
    missing: Mapping[str, str] = field(default_factory=dict)
    truncated: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        """Some agent did not answer, or cut its answer short."""
        return bool(self.missing or self.truncated)


@dataclass(frozen=True)
class Status:
    """The attached agent: who it is and whether it is healthy."""

    node: str
    address: str
    version: str
    tags: tuple[str, ...] = ()
    degraded: bool = False
    degraded_reason: str = ""


@dataclass(frozen=True)
class Member:
    """One member as the attached agent sees it."""

    name: str
    state: str
    incarnation: int
    tags: tuple[str, ...]
    address: str
    version: str
    since: float | None
    """Wall-clock time of its last state change."""
    rtt_ms: float | None
    """The attached agent's latest gossip round trip to it (None: itself, or not yet)."""


@dataclass(frozen=True)
class Assignment:
    """A target the attached agent probes."""

    check: str
    kind: str
    target: str
    interval: float


@dataclass(frozen=True)
class Coverage:
    """Who probes one target of one check, against how many should."""

    check: str
    target: str
    owners: tuple[str, ...]
    wanted: int


@dataclass(frozen=True)
class Assignments:
    """``/v1/assignments``: this agent's work and every target's coverage."""

    mine: tuple[Assignment, ...]
    coverage: tuple[Coverage, ...]


@dataclass(frozen=True)
class Sample:
    """One result (or, from history, one bucket of results) of one prober."""

    agent: str
    check: str
    target: str
    timestamp: float
    success: bool
    rtt_ms: float | None
    loss_pct: float | None = None
    """Percent of probes lost (ping), or of results failed (a history bucket)."""
    jitter_ms: float | None = None
    kind: str = ""
    error: str | None = None
    count: int = 1
    """Results in this sample (more than one for a downsampled history bucket)."""

    @property
    def loss(self) -> float:
        """Percent lost: the measured loss, else 0 for a success and 100 for a failure."""
        if self.loss_pct is not None:
            return self.loss_pct
        return 0.0 if self.success else 100.0


@dataclass(frozen=True)
class Hop:
    """One TTL of a traceroute."""

    ttl: int
    addresses: tuple[str, ...]
    sent: int
    received: int
    latencies_ms: tuple[float, ...]

    @property
    def loss_pct(self) -> float:
        """Percent of probes at this TTL without an answer."""
        return 100.0 * (1 - self.received / self.sent) if self.sent else 100.0

    @property
    def avg_ms(self) -> float | None:
        """Mean RTT at this hop."""
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else None


@dataclass(frozen=True)
class Trace:
    """The latest traceroute of a target from one prober."""

    agent: str
    check: str
    target: str
    timestamp: float
    reached: bool
    hops: tuple[Hop, ...]
    error: str | None = None


@dataclass(frozen=True)
class MatrixCell:
    """One prober's recent statistics toward one member."""

    samples: int
    loss_pct: float | None
    rtt_ms: float | None
    last: float | None


@dataclass(frozen=True)
class Matrix:
    """The latency/loss matrix of a tag group: ``cells[(prober, target)]``."""

    tag: str
    window_s: float
    agents: tuple[str, ...]
    cells: Mapping[tuple[str, str], MatrixCell]


@dataclass(frozen=True)
class Alert:
    """An incident (firing or resolved), or a rule this agent alone calls failing."""

    state: str
    """``firing``, ``resolved`` or ``failing here`` (this prober's verdict, not the mesh's)."""
    rule: str
    check: str
    target: str
    since: float | None
    """When it opened (or when this prober started calling it failing)."""
    duration_s: float | None = None
    probers: tuple[str, ...] = ()
    """The probers that agreed when it opened."""
    notifier: str = ""
    """The agent that notifies the receivers about it."""


@dataclass(frozen=True)
class Alerts:
    """``available`` is False when the agent has no alerting at all; ``note`` says why."""

    available: bool
    enabled: bool = False
    rules: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = ()
    """Firing first, then this prober's failing verdicts that no incident covers (the other
    probers do not agree), then resolved."""
    receivers: tuple[str, ...] = ()
    impaired: bool = False
    """This agent's own vantage point is impaired (its verdicts are set aside)."""
    delivery_error: str = ""
    note: str = ""

    @property
    def firing(self) -> int:
        """Incidents firing now."""
        return sum(1 for a in self.alerts if a.state == "firing")


# --- parsing ----------------------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: {key!r} missing or not text")
    return value


def _num(value: Any) -> float | None:
    """A finite number, or None (JSON null, missing, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _obj(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FormatError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise FormatError(f"{where}: expected a list, got {type(data).__name__}")
    return data


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def parse_status(data: Any) -> Status:
    """``/v1/status``."""
    d = _obj(data, "status")
    return Status(node=_text(d, "node", "status"), address=str(d.get("address", "")),
                  version=str(d.get("version", "?")), tags=_strings(d.get("tags")),
                  degraded=bool(d.get("degraded")),
                  degraded_reason=str(d.get("degraded_reason", "")))  # fmt: skip


def parse_members(data: Any) -> list[Member]:
    """``/v1/members``."""
    out = []
    for i, item in enumerate(_list(data, "members")):
        m = _obj(item, f"members[{i}]")
        address = str(m.get("address", ""))
        port = m.get("udp_port")
        out.append(Member(
            name=_text(m, "name", f"members[{i}]"), state=str(m.get("state", "?")),
            incarnation=int(_num(m.get("incarnation")) or 0), tags=_strings(m.get("tags")),
            address=f"{address}:{port}" if port else address, version=str(m.get("version", "")),
            since=_num(m.get("since")), rtt_ms=_num(m.get("rtt_ms")),
        ))  # fmt: skip
    return out


def parse_assignments(data: Any) -> Assignments:
    """``/v1/assignments``."""
    d = _obj(data, "assignments")
    mine = []
    for i, item in enumerate(_list(d.get("mine", []), "assignments.mine")):
        a = _obj(item, f"assignments.mine[{i}]")
        where = f"assignments.mine[{i}]"
        mine.append(Assignment(_text(a, "check", where), str(a.get("kind", "")),
                               _text(a, "target", where), _num(a.get("interval")) or 0.0))
    coverage = []
    for i, item in enumerate(_list(d.get("coverage", []), "assignments.coverage")):
        c = _obj(item, f"assignments.coverage[{i}]")
        where = f"assignments.coverage[{i}]"
        coverage.append(Coverage(_text(c, "check", where), _text(c, "target", where),
                                 _strings(c.get("owners")), int(_num(c.get("wanted")) or 0)))
    return Assignments(tuple(mine), tuple(coverage))


def sample_from_result(agent: str, data: Any, where: str) -> Sample:
    """One result row of ``/v1/results`` or of a ``/v1/mesh/latest`` answer."""
    r = _obj(data, where)
    return Sample(
        agent=agent, check=_text(r, "check", where), target=_text(r, "target", where),
        timestamp=_num(r.get("timestamp")) or 0.0, success=bool(r.get("success")),
        rtt_ms=_num(r.get("response_time_ms")), loss_pct=_num(r.get("loss_pct")),
        jitter_ms=_num(r.get("jitter_ms")), kind=str(r.get("kind", "")),
        error=r.get("error") if isinstance(r.get("error"), str) else None,
    )  # fmt: skip


INTERNAL_PREFIX = "_"
"""Records under a check name starting with this are the agent's own (``_alerts``: incident
history), not probe results: the screens leave them out."""


def _probes_only(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if not s.check.startswith(INTERNAL_PREFIX)]


def parse_local_results(agent: str, data: Any) -> list[Sample]:
    """``/v1/results`` of the attached agent (results it measured itself)."""
    return _probes_only([sample_from_result(agent, r, f"results[{i}]")
                         for i, r in enumerate(_list(data, "results"))])  # fmt: skip


def _envelope(data: Any, question: str) -> tuple[Mapping[str, Any], Answer[None]]:
    d = _obj(data, f"mesh {question}")
    answers = _obj(d.get("answers", {}), f"mesh {question}.answers")
    missing = {str(k): str(v) for k, v in _obj(d.get("missing", {}), "missing").items()}
    details = d.get("details") if isinstance(d.get("details"), Mapping) else {}
    assert isinstance(details, Mapping)
    for name in missing:  # the sentence is more useful than the one-word reason
        if isinstance(details.get(name), str):
            missing[name] = f"{missing[name]}: {details[name]}"
    return answers, Answer(None, "mesh", missing, _strings(d.get("truncated")))


def parse_mesh_latest(data: Any) -> Answer[list[Sample]]:
    """``/v1/mesh/latest``: every agent's newest result per (check, target)."""
    answers, env = _envelope(data, "latest")
    out = []
    for agent, answer in sorted(answers.items()):
        rows = _obj(answer, f"answers[{agent}]").get("results", [])
        out += [sample_from_result(str(agent), r, f"answers[{agent}].results[{i}]")
                for i, r in enumerate(_list(rows, f"answers[{agent}].results"))]  # fmt: skip
    return Answer(_probes_only(out), env.scope, env.missing, env.truncated)


def parse_mesh_history(data: Any, check: str, target: str) -> Answer[list[Sample]]:
    """``/v1/mesh/history``: one series per prober, as samples (oldest first)."""
    answers, env = _envelope(data, "history")
    out = []
    for agent, answer in sorted(answers.items()):
        points = _obj(answer, f"answers[{agent}]").get("points", [])
        for i, item in enumerate(_list(points, f"answers[{agent}].points")):
            p = _obj(item, f"answers[{agent}].points[{i}]")
            n = int(_num(p.get("n")) or 1)
            ok = int(_num(p.get("ok")) or 0)
            out.append(Sample(agent=str(agent), check=check, target=target,
                              timestamp=_num(p.get("t")) or 0.0, success=ok > 0,
                              rtt_ms=_num(p.get("rtt_ms")), loss_pct=_num(p.get("loss_pct")),
                              count=n))  # fmt: skip
    return Answer(out, env.scope, env.missing, env.truncated)


def parse_mesh_matrix(data: Any) -> Answer[Matrix]:
    """``/v1/mesh/matrix``: each prober's row toward every member of the tag."""
    answers, env = _envelope(data, "matrix")
    d = _obj(data, "mesh matrix")
    cells: dict[tuple[str, str], MatrixCell] = {}
    for agent, answer in answers.items():
        rows = _obj(answer, f"answers[{agent}]").get("rows", [])
        for i, item in enumerate(_list(rows, f"answers[{agent}].rows")):
            r = _obj(item, f"answers[{agent}].rows[{i}]")
            cell = MatrixCell(samples=int(_num(r.get("samples")) or 0),
                              loss_pct=_num(r.get("loss_pct")),
                              rtt_ms=_num(r.get("rtt_median_ms")), last=_num(r.get("last")))
            key = (str(agent), _text(r, "target", f"answers[{agent}].rows[{i}]"))
            old = cells.get(key)  # several checks toward one member: keep the busiest
            if old is None or cell.samples > old.samples:
                cells[key] = cell
    matrix = Matrix(tag=str(d.get("tag", "")), window_s=_num(d.get("window_s")) or 0.0,
                    agents=_strings(d.get("agents")), cells=cells)  # fmt: skip
    return Answer(matrix, env.scope, env.missing, env.truncated)


def trace_from_result(agent: str, data: Any, where: str) -> Trace | None:
    """A :class:`Trace` from a latest row with its full result; None if it has no hops."""
    r = _obj(data, where)
    full = r.get("result")
    if not isinstance(full, Mapping):
        return None
    payload = full.get("result", full)
    if not isinstance(payload, Mapping) or not isinstance(payload.get("hops"), list):
        return None
    hops = []
    for i, item in enumerate(payload["hops"]):
        h = _obj(item, f"{where}.hops[{i}]")
        latencies = [_num(v) for v in h.get("latencies_ms") or []]
        hops.append(Hop(ttl=int(_num(h.get("ttl")) or i + 1),
                        addresses=_strings(h.get("addresses")), sent=int(_num(h.get("sent")) or 0),
                        received=int(_num(h.get("received")) or 0),
                        latencies_ms=tuple(x for x in latencies if x is not None)))
    return Trace(agent=agent, check=_text(r, "check", where), target=_text(r, "target", where),
                 timestamp=_num(r.get("timestamp")) or 0.0,
                 reached=bool(payload.get("target_reached")), hops=tuple(hops),
                 error=r.get("error") if isinstance(r.get("error"), str) else None)  # fmt: skip


def parse_mesh_traces(data: Any) -> Answer[list[Trace]]:
    """``/v1/mesh/latest?full=1`` filtered to one target: each prober's latest trace."""
    answers, env = _envelope(data, "latest")
    out = []
    for agent, answer in sorted(answers.items()):
        rows = _obj(answer, f"answers[{agent}]").get("results", [])
        for i, row in enumerate(_list(rows, f"answers[{agent}].results")):
            trace = trace_from_result(str(agent), row, f"answers[{agent}].results[{i}]")
            if trace is not None:
                out.append(trace)
    return Answer(out, env.scope, env.missing, env.truncated)


def _incident(data: Any, state: str, where: str) -> Alert:
    i = _obj(data, where)
    return Alert(state=state, rule=str(i.get("rule", "")), check=str(i.get("check", "")),
                 target=str(i.get("target", "")), since=_num(i.get("opened_at")),
                 duration_s=_num(i.get("duration_s")), probers=_strings(i.get("probers")),
                 notifier=str(i.get("notifier", "")))  # fmt: skip


def parse_alerts(data: Any) -> Alerts:
    """``/v1/alerts``: rules, incidents firing and recent, this prober's failing verdicts."""
    d = _obj(data, "alerts")
    out = [_incident(x, "firing", f"alerts.firing[{n}]")
           for n, x in enumerate(_list(d.get("firing", []), "alerts.firing"))]
    firing = {(a.rule, a.check, a.target) for a in out}
    for n, item in enumerate(_list(d.get("failing_here", []), "alerts.failing_here")):
        f = _obj(item, f"alerts.failing_here[{n}]")
        if (f.get("rule"), f.get("check"), f.get("target")) in firing:
            continue  # this prober's part of an incident already shown as firing
        out.append(Alert(state="failing here", rule=str(f.get("rule", "")),
                         check=str(f.get("check", "")), target=str(f.get("target", "")),
                         since=_num(f.get("since"))))  # fmt: skip
    out += [_incident(x, "resolved", f"alerts.recent[{n}]")
            for n, x in enumerate(_list(d.get("recent", []), "alerts.recent"))]
    rules = d.get("rules", [])
    return Alerts(available=True, enabled=bool(d.get("enabled", True)),
                  rules=_strings(rules), alerts=tuple(out),
                  receivers=_strings(d.get("receivers")), impaired=bool(d.get("impaired")),
                  delivery_error=str(d.get("last_error") or ""))  # fmt: skip
