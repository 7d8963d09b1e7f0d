"""Path: a target's latest traceroute, hop by hop (mtr style), from each prober side by side."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical

from meshmon.tui.messages import Fetched, PathFetched
from meshmon.tui.model import Answer, Hop, Trace
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource, Unsupported
from meshmon.tui.summary import ago, describe_answer, fmt_ms, fmt_pct, grade_loss, grade_rtt
from meshmon.tui.widgets import Cell, LiveTable, Note, styled

COLUMNS = ("#", "HOST", "LOSS", "AVG", "WORST")


def hop_cells(hop: Hop, screen: PathScreen) -> list[Cell]:
    """One hop: its address (``???`` when nothing answered), loss and latencies."""
    t = screen.tui.config.thresholds
    host = hop.addresses[0] if hop.addresses else "???"
    if len(hop.addresses) > 1:
        host += f" (+{len(hop.addresses) - 1})"
    lat = hop.latencies_ms
    return [str(hop.ttl), Text(host, style="dim" if not hop.addresses else ""),
            styled(fmt_pct(hop.loss_pct), grade_loss(hop.loss_pct, t)),
            styled(fmt_ms(hop.avg_ms), grade_rtt(hop.avg_ms, t)),
            fmt_ms(max(lat) if lat else None)]  # fmt: skip


class PathScreen(LiveScreen):
    """Traceroutes of one target, one column per prober."""

    NAME = "Path"
    SUMMARY = ("the latest traceroute of a target from each of its probers side by side, hop "
               "by hop with loss and latency in ms (mtr style); n and b step through traced "
               "targets")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "step(1)", "Next target"),
        Binding("b", "step(-1)", "Previous"),
    ]
    DEFAULT_CSS = """
    PathScreen #traces { height: 1fr; }
    PathScreen .prober { width: 1fr; min-width: 30; }
    PathScreen .prober Note { color: $text; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str]] = []
        self.chosen: tuple[str, str] | None = None
        self.traces: Answer[list[Trace]] | None = None
        self.note = ""
        self._probers: tuple[str, ...] = ()

    def body(self) -> ComposeResult:
        yield Note(id="which")
        yield Horizontal(id="traces")

    async def fetch(self, source: DataSource) -> Fetched:
        latest = await source.latest()
        targets = sorted({(s.check, s.target) for s in latest.data if s.kind == "trace"})
        chosen = self.chosen if self.chosen in targets else (targets[0] if targets else None)
        if chosen is None:
            note = ("this agent's version has no mesh-wide queries, so only its own traces "
                    "could show, and it runs none" if latest.scope == "local" else
                    'no traceroute results in the mesh: add a check of kind "trace"')
            return PathFetched(targets, None, note)
        try:
            return PathFetched(targets, await source.traces(*chosen))
        except Unsupported:
            return PathFetched(targets, None, "hop-by-hop paths need mesh-wide queries, which "
                                              "this agent's version does not have")  # fmt: skip

    async def on_path_fetched(self, message: PathFetched) -> None:
        self.targets = message.targets
        if self.chosen not in self.targets:
            self.chosen = self.targets[0] if self.targets else None
        if message.traces is not None and message.traces.data and (
                message.traces.data[0].check, message.traces.data[0].target) != self.chosen:
            return  # asked before the operator stepped to another target
        self.traces = message.traces
        self.note = message.note
        await self.render_paths()

    def title_note(self) -> str:
        return "partial" if self.traces is not None and self.traces.partial else ""

    async def render_paths(self) -> None:
        now = self.tui.source.now()
        which = Text()
        if self.chosen is None:
            which.append(self.note or "no traced targets", style="yellow")
        else:
            i = self.targets.index(self.chosen)
            which.append(f"{self.chosen[0]} → {self.chosen[1]}", style="bold")
            which.append(f"  (target {i + 1} of {len(self.targets)}; n/b: next/previous)")
            if self.traces is not None:
                note = describe_answer(self.traces.scope, self.traces.missing,
                                       self.traces.truncated)  # fmt: skip
                if note:
                    which.append(f"\n{note}", style="dim")
        self.query_one("#which", Note).update(which)
        traces = sorted(self.traces.data if self.traces else [], key=lambda t: t.agent)
        probers = tuple(t.agent for t in traces)
        box = self.query_one("#traces", Horizontal)
        if probers != self._probers:  # a structural change: one column per prober
            self._probers = probers
            await box.remove_children()
            await box.mount_all([Vertical(Note(classes="head"), LiveTable(COLUMNS),
                                          classes="prober") for _ in probers])  # fmt: skip
        for column, trace in zip(box.query(".prober"), traces, strict=True):
            head = Text(f"from {trace.agent}", style="bold")
            reached = ("reached" if trace.reached else "NOT reached")
            head.append(f" · {reached}", style="green" if trace.reached else "bold red")
            head.append(f" · {len(trace.hops)} hops · {ago(trace.timestamp, now)} ago")
            if trace.error and not trace.reached:
                head.append(f"\n{trace.error}", style="red")
            column.query_one(".head", Note).update(head)
            column.query_one(LiveTable).show([(str(h.ttl), hop_cells(h, self))
                                              for h in trace.hops])  # fmt: skip

    def action_step(self, delta: int) -> None:
        if not self.targets:
            return
        i = self.targets.index(self.chosen) if self.chosen in self.targets else 0
        self.chosen = self.targets[(i + delta) % len(self.targets)]
        self.tui.wake()
