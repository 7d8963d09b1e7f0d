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

COLUMNS = ("STATE", "RULE", "CHECK", "TARGET", "SINCE", "FOR", "PROBERS")
STATE_STYLE = {"firing": "DOWN", "failing here": "LOSSY", "resolved": "stale"}


class AlertsScreen(LiveScreen):
    """Firing and recent incidents, and what this agent alone calls failing."""

    NAME = "Alerts"
    SUMMARY = ("incidents firing now (the probers agreed), what this agent alone calls failing "
               "(not agreed: a path of its own, perhaps), then resolved ones; says so plainly "
               "when no rules are configured or the agent has no alerting")  # fmt: skip

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
        table.display = bool(a.alerts)
        if not a.enabled or not a.rules:
            note.update(Text("No alert rules configured: nothing can fire. Add [[alerts.rules]] "
                             "to the agents' configs to be alerted." if a.enabled else
                             "Alerting is switched off in this agent's config "
                             "(alerts.enabled = false).", style="yellow"))  # fmt: skip
            return
        here = sum(1 for x in a.alerts if x.state == "failing here")
        line = Text(f"{len(a.rules)} rules · ")
        line.append(f"{a.firing} firing", style="bold red" if a.firing else "green")
        line.append(f" · {here} failing here only · notifies "
                    f"{', '.join(a.receivers) or 'nobody (no receivers)'}")
        if a.impaired:
            line.append("\nthis agent's vantage point is impaired: its own verdicts are set "
                        "aside", style="yellow")  # fmt: skip
        if a.delivery_error:
            line.append(f"\nlast delivery error: {a.delivery_error}", style="red")
        note.update(line)
        now = self.tui.source.now()
        rows: list[tuple[str, list[Cell]]] = [
            (f"{x.state}\t{x.rule}\t{x.check}\t{x.target}\t{x.since}",
             [styled(x.state, STATE_STYLE.get(x.state)), x.rule, x.check, x.target,
              ago(x.since, now), ago(now - x.duration_s, now) if x.duration_s else "-",
              ",".join(x.probers)])
            for x in a.alerts
        ]  # fmt: skip
        table.show(rows)
