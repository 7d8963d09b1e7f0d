"""What every live screen shares: the title bar, the connection banner, the footer, and the
contract with the app's poll loop (:meth:`LiveScreen.fetch` returns a message for the screen).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from meshmon.tui.messages import Fetched
from meshmon.tui.source import DataSource
from meshmon.tui.widgets import Banner, TitleBar

if TYPE_CHECKING:
    from meshmon.tui.app import MeshmonApp


class LiveScreen(Screen[None]):
    """A screen the app refreshes: each poll awaits :meth:`fetch` and posts its message."""

    NAME: ClassVar[str] = ""
    """Shown in the title bar and the help screen."""
    SUMMARY: ClassVar[str] = ""
    """One sentence for the help screen: what this screen shows."""

    @property
    def tui(self) -> MeshmonApp:
        """The app, typed."""
        from meshmon.tui.app import MeshmonApp

        assert isinstance(self.app, MeshmonApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield TitleBar()
        yield Banner()
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        """The screen's own widgets, between the banner and the footer."""
        yield from ()

    async def fetch(self, source: DataSource) -> Fetched | None:
        """Ask ``source`` for this screen's data (raises ``SourceError`` when it cannot)."""
        return None

    def title_note(self) -> str:
        """A short remark for the title bar (partial answers, local-only data)."""
        return ""

    def show_connection(self) -> None:
        """Redraw the title bar and banner from the app's connection state."""
        app = self.tui
        conn = app.connection
        agent = app.status.node if app.status is not None else app.source.label
        self.query_one(TitleBar).show(app.tabs, self.NAME, agent, conn.ok, conn.updated,
                                      self.title_note())  # fmt: skip
        self.query_one(Banner).show(conn.ok, conn.reason, conn.retry_in, conn.lost_since,
                                    app.source.now())  # fmt: skip

    def on_resize(self) -> None:
        self.show_connection()

    def on_screen_resume(self) -> None:
        self.show_connection()
        self.tui.wake()
