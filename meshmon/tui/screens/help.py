"""Help: every key, the app's and each screen's, read from the bindings themselves."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _keys(bindings: list[BindingType]) -> list[tuple[str, str]]:
    out = []
    for b in bindings:
        if isinstance(b, Binding):
            out.append((b.key_display or b.key, b.description))
        elif isinstance(b, tuple) and len(b) >= 3:  # (key, action, description)
            out.append((str(b[0]), str(b[2])))
    return out


ScreenKeys = tuple[str, str, str, list[BindingType]]
"""(key that opens it, name, summary, its bindings)."""


def help_table(app_bindings: list[BindingType], screens: list[ScreenKeys]) -> Table:
    """Keys in two columns: the global keys, then per screen the key that opens it, what it
    shows, and its own keys."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    table.add_row(Text("everywhere", style="bold"), "")
    for key, what in _keys(app_bindings):
        table.add_row(key, what)
    for key, name, summary, bindings in screens:
        table.add_row("", "")
        heading = Text(name, style="bold")
        heading.append(f": {summary}", style="dim")
        table.add_row(key, heading)
        for k, what in _keys(bindings):
            table.add_row(k, what)
    return table


class HelpScreen(ModalScreen[None]):
    """The list of keys (``?``; Esc, ``?`` or ``q`` closes it)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 110; height: 90%; border: round $accent;
                                  background: $surface; padding: 0 1; }
    """

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.table = table

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("meshmon tui — keys (Esc closes)", style="bold"))
            yield Static(self.table)

    def action_close(self) -> None:
        self.dismiss()
