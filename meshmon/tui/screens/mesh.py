"""Mesh: every member as the attached agent sees it, counts per state, filter by tag, sort."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.suggester import SuggestFromList
from textual.widgets import Input

from meshmon.tui.messages import Fetched, MembersFetched
from meshmon.tui.model import STATES, Member
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource
from meshmon.tui.summary import (
    MEMBER_SORTS,
    ago,
    count_states,
    filter_members,
    fmt_ms,
    sort_members,
)
from meshmon.tui.widgets import Cell, LiveTable, Note, styled

COLUMNS = ("NAME", "STATE", "INC", "TAGS", "ADDRESS", "VERSION", "RTT ms", "CHANGED")


class MeshScreen(LiveScreen):
    """The membership view."""

    NAME = "Mesh"
    SUMMARY = ("members with their state, incarnation, certified tags, address, version, the "
               "attached agent's gossip RTT to each and the time of their last change")  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "filter", "Filter tag"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]
    DEFAULT_CSS = """
    MeshScreen #members { height: 1fr; }
    MeshScreen #tag { display: none; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.members: list[Member] = []
        self.tag = ""
        self.sort_by = "name"
        self.reverse = False

    def body(self) -> ComposeResult:
        yield Note(id="counts")
        yield LiveTable(COLUMNS, id="members")
        yield Input(placeholder="tag to show (empty: all), Enter to apply, Esc to cancel",
                    id="tag")  # fmt: skip

    async def fetch(self, source: DataSource) -> Fetched:
        return MembersFetched(await source.members())

    def on_members_fetched(self, message: MembersFetched) -> None:
        self.members = message.members
        self.render_members()

    def render_members(self) -> None:
        now = self.tui.source.now()
        shown = sort_members(filter_members(self.members, self.tag), self.sort_by, self.reverse)
        counts = count_states(shown)
        line = Text()
        for state in STATES:
            line.append(f"{state} ", style="bold")
            line.append(str(counts.pop(state)), style=styled(state).style)
            line.append("  ")
        for state, n in counts.items():  # a state this TUI does not know yet
            line.append(f"{state} {n}  ")
        line.append(f"· tag: {self.tag or 'all'} · sort: {self.sort_by}"
                    f"{' (reversed)' if self.reverse else ''}", style="dim")  # fmt: skip
        self.query_one("#counts", Note).update(line)
        rows: list[tuple[str, list[Cell]]] = [
            (m.name, [m.name, styled(m.state), str(m.incarnation), ",".join(m.tags), m.address,
                      m.version, fmt_ms(m.rtt_ms), ago(m.since, now)])
            for m in shown
        ]  # fmt: skip
        self.query_one(LiveTable).show(rows)

    def action_filter(self) -> None:
        field = self.query_one("#tag", Input)
        field.suggester = SuggestFromList(sorted({t for m in self.members for t in m.tags}))
        field.value = self.tag
        field.display = True
        field.focus()

    @on(Input.Submitted, "#tag")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.tag = event.value.strip()
        self._close_filter()
        self.render_members()

    def action_clear_filter(self) -> None:
        field = self.query_one("#tag", Input)
        if field.display:  # Esc while typing: cancel the edit
            self._close_filter()
            return
        self.tag = ""
        self.render_members()

    def _close_filter(self) -> None:
        self.query_one("#tag", Input).display = False
        self.query_one(LiveTable).focus()

    def action_sort(self) -> None:
        self.sort_by = MEMBER_SORTS[(MEMBER_SORTS.index(self.sort_by) + 1) % len(MEMBER_SORTS)]
        self.render_members()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.render_members()
