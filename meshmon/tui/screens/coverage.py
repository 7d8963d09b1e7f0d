"""Coverage: per check, each target's k probers and how many are live; gaps in red."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from meshmon.tui.messages import CoverageFetched, Fetched
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource
from meshmon.tui.summary import CoverageRow, coverage_rows, shorten
from meshmon.tui.widgets import STYLE, Cell, LiveTable, Note

COLUMNS = ("CHECK", "TARGET", "LIVE/K", "MINE", "PROBERS")


def owners_text(row: CoverageRow) -> Text:
    """The probers, each in the colour of its state."""
    text = Text()
    for i, (name, state) in enumerate(row.owners):
        if i:
            text.append(",")
        text.append(name, style=STYLE.get(state, "magenta"))
    return text if row.owners else Text("none", style="bold red")


class CoverageScreen(LiveScreen):
    """Who probes what, from the attached agent's placement."""

    NAME = "Coverage"
    SUMMARY = ("per check, every target with its probers (k of them) and how many are alive; "
               "targets with fewer live probers than wanted are gaps, in red; MINE marks what "
               "the attached agent probes")  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "gaps", "Gaps only"),
        Binding("m", "mine", "Mine only"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[CoverageRow] = []
        self.gaps_only = False
        self.mine_only = False

    def body(self) -> ComposeResult:
        yield Note(id="summary")
        yield LiveTable(COLUMNS, id="coverage")

    async def fetch(self, source: DataSource) -> Fetched:
        return CoverageFetched(await source.assignments(), await source.members())

    def on_coverage_fetched(self, message: CoverageFetched) -> None:
        me = self.tui.status.node if self.tui.status else ""
        self.rows = coverage_rows(message.assignments, message.members, me)
        self.render_rows()

    def render_rows(self) -> None:
        rows = self.rows
        gaps = sum(1 for r in rows if r.gap)
        mine = sum(1 for r in rows if r.mine)
        line = Text(f"{len(rows)} targets · ")
        line.append(f"{gaps} with a gap", style="bold red" if gaps else "green")
        line.append(f" · this agent probes {mine}")
        filters = [name for name, on in (("gaps", self.gaps_only), ("mine", self.mine_only)) if on]
        line.append(f" · showing: {' and '.join(filters) or 'all'}", style="dim")
        self.query_one("#summary", Note).update(line)
        shown = [r for r in rows
                 if (r.gap or not self.gaps_only) and (r.mine or not self.mine_only)]
        table: list[tuple[str, list[Cell]]] = []
        for r in shown:
            live = Text(f"{r.live}/{r.wanted}", style="bold red" if r.gap else "green")
            target = Text(shorten(r.target, 30), style="bold red" if r.gap else "")
            table.append((f"{r.check}\t{r.target}", [r.check, target, live,
                                                     "●" if r.mine else "", owners_text(r)]))
        self.query_one(LiveTable).show(table)

    def action_gaps(self) -> None:
        self.gaps_only = not self.gaps_only
        self.render_rows()

    def action_mine(self) -> None:
        self.mine_only = not self.mine_only
        self.render_rows()
