"""A target's drill-down: its RTT over time from each prober (a chart), and one line per prober.

The point is the difference between "the target is down" (every line stops, every prober
fails) and "one prober's path is bad" (one line breaks or climbs, the others carry on): the
headline says which, and the breakdown names the prober.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual_plotext import PlotextPlot

from meshmon.tui.messages import Fetched, TargetFetched
from meshmon.tui.model import Answer, Sample
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource
from meshmon.tui.summary import (
    ProberRow,
    ago,
    buckets,
    describe_answer,
    fmt_ms,
    fmt_pct,
    grade_loss,
    grade_rtt,
    prober_rows,
    spark,
)
from meshmon.tui.widgets import Cell, LiveTable, Note, spark_text, styled

COLUMNS = ("PROBER", "STATUS", "RTT ms", "LOSS", "JITTER", "RECENT", "AGE", "ERROR")


def verdict(rows: list[ProberRow]) -> Text:
    """The headline: up, down everywhere, or bad from some probers only."""
    current = [r for r in rows if r.status != "stale"]
    failing = [r.agent for r in current if r.status == "FAIL"]
    if not current:
        return Text("no current results from any prober", style="dim")
    if len(failing) == len(current):
        return Text(f"DOWN: every prober ({len(current)}) fails", style="bold red")
    if failing:
        return Text(f"PATH: {len(failing)} of {len(current)} probers fail "
                    f"({', '.join(failing)}): their path is bad, the target answers the others",
                    style="bold yellow")  # fmt: skip
    lossy = [r.agent for r in current if r.status == "LOSSY"]
    if lossy:
        return Text(f"up, with loss seen by {', '.join(lossy)}", style="yellow")
    return Text(f"up from all {len(current)} probers", style="green")


class TargetScreen(LiveScreen):
    """One target from every prober (pushed over the Results screen)."""

    NAME = "Target"
    SUMMARY = ("a target's RTT over time from each prober (failures marked ×) and one line per "
               "prober; w cycles the time window")  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("w", "window", "Window"),
    ]
    DEFAULT_CSS = """
    TargetScreen PlotextPlot { height: 1fr; min-height: 8; }
    TargetScreen LiveTable { height: auto; max-height: 12; }
    """

    def __init__(self, check: str, target: str) -> None:
        super().__init__()
        self.check = check
        self.target = target
        self.window = 0.0
        self.history: Answer[list[Sample]] = Answer([])
        self.latest: list[Sample] = []

    def on_mount(self) -> None:
        self.window = self.tui.config.history_window

    def body(self) -> ComposeResult:
        yield Note(id="headline")
        yield PlotextPlot(id="chart")
        yield LiveTable(COLUMNS, id="probers")

    async def fetch(self, source: DataSource) -> Fetched:
        since = source.now() - self.window
        history = await source.history(self.check, self.target, since,
                                       self.tui.config.history_points)  # fmt: skip
        latest = await source.latest(self.check, self.target)
        return TargetFetched(history, latest.data)

    def on_target_fetched(self, message: TargetFetched) -> None:
        self.history = message.history
        self.latest = [s for s in message.latest
                       if (s.check, s.target) == (self.check, self.target)]  # fmt: skip
        self.render_target()

    def title_note(self) -> str:
        return "partial" if self.history.partial else ""

    def render_target(self) -> None:
        cfg = self.tui.config
        now = self.tui.source.now()
        rows = prober_rows(self.history.data, self.latest, now, self.window)
        headline = Text(f"{self.check} → {self.target} · last {ago(now - self.window, now)}: ",
                        style="bold")  # fmt: skip
        headline.append_text(verdict(rows))
        note = describe_answer(self.history.scope, self.history.missing, self.history.truncated)
        if note:
            headline.append(f"\n{note}", style="dim")
        self.query_one("#headline", Note).update(headline)
        self.plot(rows, now)
        table: list[tuple[str, list[Cell]]] = []
        for r in rows:
            series = buckets(r.samples, now, self.window, cfg.spark_width)
            table.append((r.agent, [
                r.agent, styled(r.status),
                styled(fmt_ms(r.rtt_ms), grade_rtt(r.rtt_ms, cfg.thresholds)),
                styled(fmt_pct(r.loss_pct), grade_loss(r.loss_pct, cfg.thresholds)),
                fmt_ms(r.jitter_ms), spark_text(spark(series)), ago(r.last, now),
                Text(r.error or "", style="red"),
            ]))  # fmt: skip
        self.query_one(LiveTable).show(table)

    def plot(self, rows: list[ProberRow], now: float) -> None:
        """RTT against minutes ago, a line per prober; failures marked on the time axis."""
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"RTT ms from each prober, last {ago(now - self.window, now)}")
        plt.xlabel("minutes ago")
        failed_x: list[float] = []
        for r in rows:
            ok = [(s.timestamp, s.rtt_ms) for s in r.samples if s.rtt_ms is not None]
            if ok:
                plt.plot([(t - now) / 60 for t, _ in ok], [v for _, v in ok], label=r.agent,
                         marker="braille")  # fmt: skip
            failed_x += [(s.timestamp - now) / 60 for s in r.samples if not s.success]
        if failed_x:
            plt.scatter(failed_x, [0.0] * len(failed_x), label="failed", marker="x",
                        color="red")  # fmt: skip
        plt.xlim(-self.window / 60, 0)
        plt.ylim(0, None)
        widget.refresh()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_window(self) -> None:
        windows = self.tui.config.history_windows
        index = windows.index(self.window) if self.window in windows else -1
        self.window = windows[(index + 1) % len(windows)]
        self.tui.wake()
