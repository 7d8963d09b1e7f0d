"""Alerts: what fires now and what fired recently; in words when the agent has no alerting."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult

from meshmon.tui.messages import AlertsFetched, Fetched
from meshmon.tui.model import Alerts
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource
from meshmon.tui.summary import ago
from meshmon.tui.widgets import Cell, LiveTable, Note, styled

COLUMNS = ("STATE", "ALERT", "TARGET", "SINCE", "SUMMARY")


class AlertsScreen(LiveScreen):
    """Firing and recent alerts (filled in by the agent's alerting)."""

    NAME = "Alerts"
    SUMMARY = ("alerts firing now, then those resolved recently; says so plainly when the "
               "agent evaluates no alert rules")  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.alerts: Alerts | None = None

    def body(self) -> ComposeResult:
        yield Note(id="state")
        yield LiveTable(COLUMNS, id="alerts")

    async def fetch(self, source: DataSource) -> Fetched:
        return AlertsFetched(await source.alerts())

    def on_alerts_fetched(self, message: AlertsFetched) -> None:
        self.alerts = a = message.alerts
        table = self.query_one(LiveTable)
        note = self.query_one("#state", Note)
        if not a.available:
            note.update(Text(a.note, style="yellow"))
            table.display = False
            return
        table.display = True
        if a.rules == 0:
            note.update(Text("No alert rules configured: nothing can fire. Add rules to the "
                             "agents' configs to be alerted.", style="yellow"))  # fmt: skip
        else:
            line = Text(f"{a.rules} rules · ")
            line.append(f"{len(a.firing)} firing", style="bold red" if a.firing else "green")
            line.append(f" · {len(a.recent)} recent")
            note.update(line)
        now = self.tui.source.now()
        rows: list[tuple[str, list[Cell]]] = [
            (f"{group}\t{x.name}\t{x.target}",
             [styled(x.state, "DOWN" if group == "firing" else "stale"), x.name, x.target,
              ago(x.since, now), x.summary])
            for group, items in (("firing", a.firing), ("recent", a.recent)) for x in items
        ]  # fmt: skip
        table.show(rows)
