"""Widgets shared by the screens: a table updated in place, the title bar, the banner.

:class:`LiveTable` is how the screens stay flicker-free: its rows are positional slots; each
refresh writes the new rows into the slots and touches only the cells whose content changed,
adding or removing slots at the end when the count changes. Nothing is cleared and rebuilt, so
the cursor and the scroll position stay where the operator left them, and the cursor follows
its row's key when the order changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable, Static

from meshmon.tui.summary import FAIL_MARK, ago, clock

Cell = str | Text

STYLE = {
    "alive": "green", "suspect": "bold yellow", "dead": "bold red", "left": "dim",
    "good": "green", "warn": "yellow", "bad": "bold red", "none": "dim",
    "ok": "green", "LOSSY": "yellow", "DOWN": "bold red", "FAIL": "bold red", "stale": "dim",
}  # fmt: skip
"""Colour of a state, a grade or a status word."""


def styled(text: str, key: str | None = None) -> Text:
    """``text`` in the colour of ``key`` (default: of itself)."""
    key = text if key is None else key
    if key.startswith("PATH"):
        return Text(text, style="bold yellow")
    return Text(text, style=STYLE.get(key, ""))


def spark_text(line: str) -> Text:
    """A sparkline with its failure marks in red."""
    text = Text(line, style="cyan")
    for i, char in enumerate(line):
        if char == FAIL_MARK:
            text.stylize("bold red", i, i + 1)
    return text


class LiveTable(DataTable[Cell]):
    """A :class:`~textual.widgets.DataTable` refreshed in place (see the module docstring)."""

    def __init__(self, columns: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._column_names = tuple(columns)
        self._shown: list[tuple[Cell, ...]] = []
        self.keys: list[str] = []
        """The key of each row, top to bottom (what the cursor is on: ``keys[cursor_row]``)."""

    def on_mount(self) -> None:
        for name in self._column_names:
            self.add_column(name, key=name)

    def reset(self) -> None:
        """Drop every row and lay the columns out again (their widths only ever grow)."""
        self.clear(columns=True)
        self._shown, self.keys = [], []
        for name in self._column_names:
            self.add_column(name, key=name)

    def set_columns(self, columns: Sequence[str]) -> None:
        """Replace the columns (and so every row) when they differ: a structural change, rare
        (the Matrix screen's members change), unlike a refresh."""
        columns = tuple(columns)
        if columns == self._column_names:
            return
        self.clear(columns=True)
        self._shown, self.keys, self._column_names = [], [], columns
        for name in columns:
            self.add_column(name, key=name)

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor."""
        row = self.cursor_row
        return self.keys[row] if 0 <= row < len(self.keys) else None

    def show(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
        """Display ``rows`` (key, cells), in this order, changing only what changed."""
        before = self.current_key
        for i, (_, cells) in enumerate(rows):
            cells = tuple(cells)
            if i < len(self._shown):
                old = self._shown[i]
                for name, new, was in zip(self._column_names, cells, old, strict=True):
                    if new != was:
                        self.update_cell(str(i), name, new, update_width=True)
                self._shown[i] = cells
            else:
                self.add_row(*cells, key=str(i))
                self._shown.append(cells)
        while len(self._shown) > len(rows):
            self.remove_row(str(len(self._shown) - 1))
            self._shown.pop()
        self.keys = [key for key, _ in rows]
        if before is not None and before in self.keys and self.current_key != before:
            self.move_cursor(row=self.keys.index(before))


class TitleBar(Static):
    """One line: the screens (keys, the current one highlighted), the agent, whether it
    answers, the time of the last answer."""

    DEFAULT_CSS = """
    TitleBar { dock: top; height: 1; background: $primary-background; color: $text; }
    """

    def show(self, tabs: Sequence[tuple[str, str]], current: str, agent: str,
             live: bool | None, updated: float | None, note: str = "") -> None:  # fmt: skip
        """``tabs`` are (key, name); ``live`` None: no attempt has ended yet. Names of the other
        screens shrink to their keys when the line would not fit."""
        state = Text(f" │ {agent} ")
        if live is None:
            state.append("… connecting", style="yellow")
        else:
            state.append("● live" if live else "○ lost", style="green" if live else "bold red")
        if updated:
            state.append(f" {clock(updated)}")
        if note:
            state.append(f" {note}", style="yellow")
        for short in (False, True):
            text = Text()
            for key, name in tabs:
                text.append(" ")
                if name == current:
                    text.append(f"{key} {name}", style="bold reverse")
                else:
                    text.append(key, style="bold")
                    text.append("" if short else f" {name}", style="dim")
            if current not in {name for _, name in tabs}:
                text.append(" ")
                text.append(current, style="bold reverse")
            if text.cell_len + state.cell_len <= self.size.width:
                break
        self.update(text + state)


class Banner(Static):
    """A red line under the title while the source does not answer (hidden otherwise)."""

    DEFAULT_CSS = """
    Banner { height: auto; background: $error; color: $text; display: none; padding: 0 1; }
    """

    def show(self, ok: bool | None, reason: str, retry_in: float, since: float | None,
             now: float) -> None:  # fmt: skip
        self.display = ok is False
        if not ok:
            lost = f" (lost {ago(since, now)} ago)" if since else ""
            self.update(f"connection lost{lost}: {reason} · retrying in {retry_in:.3g}s")


class Note(Static):
    """A line of explanation above or below a table (partial answers, empty states)."""

    DEFAULT_CSS = """
    Note { height: auto; padding: 0 1; color: $text-muted; }
    """
