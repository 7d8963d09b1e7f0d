"""Matrix: the latency/loss heatmap of a tag group: a row per prober, a column per member."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from meshmon.tui.messages import Fetched, MatrixFetched
from meshmon.tui.model import Answer, Matrix, MatrixCell, Member
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource, Unsupported
from meshmon.tui.summary import (
    Thresholds,
    ago,
    describe_answer,
    fmt_ms,
    fmt_pct,
    grade_loss,
    grade_rtt,
)
from meshmon.tui.widgets import Cell, LiveTable, Note

HEAT = {"good": "black on green", "warn": "black on yellow", "bad": "bold white on red",
        "none": "dim"}  # fmt: skip
_ORDER = ("none", "good", "warn", "bad")


def tag_groups(members: list[Member]) -> list[str]:
    """Tags, the biggest group first (ties by name)."""
    counts: dict[str, int] = {}
    for m in members:
        for tag in m.tags:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts, key=lambda t: (-counts[t], t))


def heat_cell(cell: MatrixCell | None, metric: str, t: Thresholds) -> Text:
    """A cell: the metric's value on the colour of the worse of its latency and loss grades."""
    if cell is None or cell.samples == 0:
        return Text("·", style="dim", justify="center")
    grades = [grade_rtt(cell.rtt_ms, t), grade_loss(cell.loss_pct, t)]
    if cell.rtt_ms is None and cell.loss_pct is not None and cell.loss_pct >= 100:
        grades.append("bad")
    grade = max(grades, key=_ORDER.index)
    value = fmt_ms(cell.rtt_ms) if metric == "rtt" else fmt_pct(cell.loss_pct)
    if metric == "rtt" and cell.rtt_ms is None:
        value = "×"
    return Text(f" {value} ", style=HEAT[grade], justify="right")


class MatrixScreen(LiveScreen):
    """The agent-by-agent heatmap of one tag group."""

    NAME = "Matrix"
    SUMMARY = ("the latency (or loss) between members of a tag group, a row per prober and a "
               "column per target member, coloured green/yellow/red by thresholds; t cycles tag "
               "groups, l switches latency and loss")  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "next_tag", "Next tag"),
        Binding("l", "metric", "Latency/loss"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.tag = ""
        self.tags: list[str] = []
        self.metric = "rtt"
        self.matrix: Answer[Matrix] | None = None
        self.note = ""

    def body(self) -> ComposeResult:
        yield Note(id="legend")
        yield LiveTable(("FROM \\ TO",), id="matrix")

    async def fetch(self, source: DataSource) -> Fetched:
        tags = tag_groups(await source.members())
        tag = self.tag if self.tag in tags else (tags[0] if tags else "")
        if not tag:
            return MatrixFetched(tags, None, "no member carries a tag: nothing to group by")
        try:
            return MatrixFetched(tags, await source.matrix(tag))
        except Unsupported:
            return MatrixFetched(tags, None, "the matrix needs mesh-wide queries, which this "
                                             "agent's version does not have")  # fmt: skip

    def on_matrix_fetched(self, message: MatrixFetched) -> None:
        self.tags = message.tags
        if self.tag not in self.tags:
            self.tag = self.tags[0] if self.tags else ""
        if message.matrix is not None and message.matrix.data.tag not in ("", self.tag):
            return  # asked before the operator switched tags: the next refresh has the new one
        self.matrix = message.matrix
        self.note = message.note
        self.render_matrix()

    def title_note(self) -> str:
        return "partial" if self.matrix is not None and self.matrix.partial else ""

    def render_matrix(self) -> None:
        t = self.tui.config.thresholds
        table = self.query_one(LiveTable)
        legend = Text(f"tag {self.tag or '-'}", style="bold")
        if self.tag in self.tags:
            legend.append(f" ({self.tags.index(self.tag) + 1} of {len(self.tags)}, t: next)")
        legend.append(" · ")
        if self.matrix is None:
            legend.append(self.note, style="yellow")
            self.query_one("#legend", Note).update(legend)
            table.set_columns(("FROM \\ TO",))
            table.show([])
            return
        m = self.matrix.data
        what = "median RTT ms" if self.metric == "rtt" else "loss"
        now = self.tui.source.now()
        legend.append(f"{what}, {ago(now - m.window_s, now)} ")
        rtt = self.metric == "rtt"
        for grade, words in (("good", f"≤{t.rtt_warn_ms:g}" if rtt else f"<{t.loss_warn_pct:g}%"),
                             ("warn", f"≤{t.rtt_bad_ms:g}" if rtt else f"<{t.loss_bad_pct:g}%"),
                             ("bad", "worse"), ("none", "· none")):  # fmt: skip
            legend.append(" ")
            legend.append(f" {words} ", style=HEAT[grade])
        note = describe_answer(self.matrix.scope, self.matrix.missing, self.matrix.truncated)
        if note:
            legend.append(f"\n{note}", style="dim")
        self.query_one("#legend", Note).update(legend)
        table.set_columns(("FROM \\ TO", *m.agents))
        rows: list[tuple[str, list[Cell]]] = []
        for prober in m.agents:
            cells: list[Cell] = [prober]
            for target in m.agents:
                if target == prober:
                    cells.append(Text("—", style="dim", justify="center"))
                else:
                    cells.append(heat_cell(m.cells.get((prober, target)), self.metric, t))
            rows.append((prober, cells))
        table.show(rows)

    def action_next_tag(self) -> None:
        if self.tags:
            i = self.tags.index(self.tag) if self.tag in self.tags else -1
            self.tag = self.tags[(i + 1) % len(self.tags)]
            self.tui.wake()

    def action_metric(self) -> None:
        self.metric = "loss" if self.metric == "rtt" else "rtt"
        self.render_matrix()
