"""The TUI application: screens as modes, one poll loop, the connection state.

Theory of operation
-------------------
Each screen is a Textual *mode* (keys 1-6), so every screen keeps its table, cursor and filters
while the operator looks elsewhere; the Results screen pushes a target's drill-down on top of
itself. One worker (a coroutine on Textual's asyncio loop) polls: every ``config.interval``
seconds, or at once when the operator switches screens or changes what a screen shows, it asks
the source for the agent's status and for what the visible screen needs
(:meth:`~meshmon.tui.screens.base.LiveScreen.fetch`), then posts the screen its message. Only the
visible screen is refreshed: a hidden one costs the agent nothing.

When the source fails (:class:`~meshmon.tui.source.SourceError`, or anything unexpected), the
last data stays on screen under a red banner saying what failed and when the next attempt is;
attempts back off from ``interval`` to ``retry_max`` and the banner goes once an answer comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen

from meshmon.tui.model import Status
from meshmon.tui.screens.alerts import AlertsScreen
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.screens.coverage import CoverageScreen
from meshmon.tui.screens.help import HelpScreen, help_table
from meshmon.tui.screens.matrix import MatrixScreen
from meshmon.tui.screens.mesh import MeshScreen
from meshmon.tui.screens.path import PathScreen
from meshmon.tui.screens.results import ResultsScreen
from meshmon.tui.screens.target import TargetScreen
from meshmon.tui.settings import TuiConfig
from meshmon.tui.source import DataSource, SourceError

log = logging.getLogger(__name__)

SCREENS: tuple[tuple[str, str, type[LiveScreen]], ...] = (
    ("1", "mesh", MeshScreen),
    ("2", "coverage", CoverageScreen),
    ("3", "results", ResultsScreen),
    ("4", "matrix", MatrixScreen),
    ("5", "path", PathScreen),
    ("6", "alerts", AlertsScreen),
)
"""(key, mode name, screen class) of the top-level screens."""


@dataclass(frozen=True)
class Connection:
    """Whether the source answers. ``ok`` is None until the first attempt ends."""

    ok: bool | None = None
    reason: str = ""
    retry_in: float = 0.0
    lost_since: float | None = None
    updated: float | None = None
    """When the last answer came (the source's clock)."""


class MeshmonApp(App[None]):
    """``meshmon tui``: the live mesh from one agent's control API (or any
    :class:`~meshmon.tui.source.DataSource`)."""

    TITLE = "meshmon"
    MODES: ClassVar[dict[str, type[Screen[None]]]] = {name: cls for _, name, cls in SCREENS}  # type: ignore[assignment]
    DEFAULT_MODE = "mesh"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [  # the screens' keys are in the title bar
        *(Binding(key, f"switch_mode('{name}')", cls.NAME, show=False)
          for key, name, cls in SCREENS),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: DataSource, config: TuiConfig | None = None) -> None:
        super().__init__()
        self.source = source
        self.config = config or TuiConfig()
        self.connection = Connection()
        self.status: Status | None = None
        self._wake = asyncio.Event()

    @property
    def tabs(self) -> list[tuple[str, str]]:
        """(key, name) of the top-level screens, for the title bar."""
        return [(key, cls.NAME) for key, _, cls in SCREENS]

    def on_mount(self) -> None:
        self.poll()

    async def on_unmount(self) -> None:
        await self.source.aclose()

    def wake(self) -> None:
        """Refresh the visible screen now (it changed what it shows)."""
        self._wake.set()

    @work(exclusive=True, group="poll")
    async def poll(self) -> None:
        """Refresh the visible screen every interval, forever (see the module docstring)."""
        delay = self.config.interval
        while True:
            self._wake.clear()
            screen = self.screen
            try:
                status = await self.source.status()
                message = await screen.fetch(self.source) if isinstance(screen, LiveScreen) \
                    else None  # fmt: skip
            except SourceError as exc:
                delay = self._lost(str(exc), delay)
            except Exception as exc:  # an unreadable answer or a bug: keep the session alive
                log.exception("refreshing %s failed", type(screen).__name__)
                delay = self._lost(f"unexpected {type(exc).__name__}: {exc}", delay)
            else:
                self.status = status
                self.connection = Connection(ok=True, updated=self.source.now())
                delay = self.config.interval
                if message is not None:
                    screen.post_message(message)
            if isinstance(self.screen, LiveScreen):
                with contextlib.suppress(NoMatches):  # still being composed: resume draws it
                    self.screen.show_connection()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _lost(self, reason: str, delay: float) -> float:
        """Record a failed attempt; the wait before the next one."""
        was = self.connection
        retry = delay if was.ok is False else self.config.interval
        retry = min(self.config.retry_max, retry * 2 if was.ok is False else retry)
        self.connection = Connection(
            ok=False, reason=reason, retry_in=retry, updated=was.updated,
            lost_since=was.lost_since if was.ok is False else self.source.now())  # fmt: skip
        return retry

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screens: list[tuple[str, str, str, list[BindingType]]] = [
            (key, cls.NAME, cls.SUMMARY, list(cls.BINDINGS)) for key, _, cls in SCREENS]
        screens.insert(3, ("enter", f"{TargetScreen.NAME} (from Results)",
                           TargetScreen.SUMMARY, list(TargetScreen.BINDINGS)))  # fmt: skip
        digits = {key for key, _, _ in SCREENS}
        keys: list[BindingType] = [Binding("1-6", "", "the screens below, by number")]
        keys += [b for b in self.BINDINGS if not (isinstance(b, Binding) and b.key in digits)]
        self.push_screen(HelpScreen(help_table(keys, screens)))
