"""Results: one live line per target (every prober's latest), with a sparkline of recent RTT.

Each refresh asks for every prober's latest result (one mesh-wide query) and shows it at once;
the sparklines grow from those answers, and each newly seen target's last few minutes are
loaded once from its history, a batch of targets per refresh, concurrently, so that neither a
big mesh nor a slow agent holds up the first picture.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from meshmon.tui.messages import Fetched, ResultsFetched
from meshmon.tui.model import Answer, Sample
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.source import DataSource
from meshmon.tui.summary import (
    RESULT_SORTS,
    Recent,
    TargetRow,
    ago,
    buckets,
    describe_answer,
    fmt_ms,
    fmt_pct,
    grade_loss,
    grade_rtt,
    shorten,
    sort_targets,
    spark,
    summarise,
)
from meshmon.tui.widgets import Cell, LiveTable, Note, spark_text, styled

COLUMNS = ("CHECK", "TARGET", "STATUS", "RTT ms", "LOSS", "JITTER", "RECENT", "AGE")
NARROW = 100
"""Below this many columns, targets are cut in the middle and sparklines are shorter, so the
whole line fits an 80-column terminal."""
BACKFILL_PER_REFRESH = 8
"""Targets whose recent history is loaded per refresh (one history query each, concurrently)."""


class ResultsScreen(LiveScreen):
    """Every target's latest verdict."""

    NAME = "Results"
    SUMMARY = ("one line per target: status over its probers (DOWN: all fail; PATH n/k: n of "
               "k probers fail, so their path is bad, not the target), median RTT, loss, "
               "jitter and recent RTT; Enter opens the target's chart and per-prober "
               "breakdown")  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "drill", "Open target"),
        Binding("s", "sort", "Sort"),
        Binding("g", "problems", "Problems only"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.recent = Recent()
        self.latest: Answer[list[Sample]] = Answer([])
        self.rows: list[TargetRow] = []
        self.sort_by = "target"
        self.problems_only = False
        self._narrow: bool | None = None

    def on_mount(self) -> None:
        self.recent.span = self.tui.config.recent_span

    def body(self) -> ComposeResult:
        yield Note(id="scope")
        yield LiveTable(COLUMNS, id="results")

    async def fetch(self, source: DataSource) -> Fetched:
        latest = await source.latest()
        todo = sorted({(s.check, s.target) for s in latest.data} - self.recent.backfilled)
        if not todo:
            return ResultsFetched(latest, [])
        self.post_message(ResultsFetched(latest, []))  # show it now; history follows
        cfg = self.tui.config
        since = source.now() - cfg.recent_span
        batch = todo[:BACKFILL_PER_REFRESH]  # asked at once: one slow agent delays them once
        answers = await asyncio.gather(*(source.history(check, target, since, cfg.history_points)
                                         for check, target in batch))  # fmt: skip
        self.recent.backfilled.update(batch)
        return ResultsFetched(latest, [s for answer in answers for s in answer.data])

    def on_results_fetched(self, message: ResultsFetched) -> None:
        now = self.tui.source.now()
        self.latest = message.latest
        self.recent.add(message.backfill)
        self.recent.add(message.latest.data)
        self.recent.prune(now)
        self.rows = summarise(message.latest.data, self.recent, now)
        self.render_rows()
        self.show_connection()

    def title_note(self) -> str:
        return "partial" if self.latest.partial else ""

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW
        if narrow != self._narrow:  # the columns' widths only grow: lay them out afresh
            self._narrow = narrow
            self.query_one(LiveTable).reset()
            self.render_rows()

    def render_rows(self) -> None:
        cfg = self.tui.config
        now = self.tui.source.now()
        narrow = self.size.width < NARROW
        width, name_width = (cfg.spark_width // 2, 18) if narrow else (cfg.spark_width, 60)
        latest = self.latest
        note = describe_answer(latest.scope, latest.missing, latest.truncated)
        problems = sum(1 for r in self.rows if r.status not in ("ok", "stale"))
        line = (f"{len(self.rows)} targets · {problems} with problems · sort: {self.sort_by}"
                f"{' · problems only' if self.problems_only else ''}")  # fmt: skip
        self.query_one("#scope", Note).update(f"{line}\n{note}" if note else line)
        shown = sort_targets(self.rows, self.sort_by)
        if self.problems_only:
            shown = [r for r in shown if r.status not in ("ok", "stale")]
        table: list[tuple[str, list[Cell]]] = []
        for r in shown:
            series = buckets(self.recent.of(r.check, r.target), now, cfg.recent_span, width)
            table.append((f"{r.check}\t{r.target}", [
                shorten(r.check, name_width),
                shorten(r.target.split("://", 1)[-1] if narrow else r.target, name_width),
                styled(r.status),
                styled(fmt_ms(r.rtt_ms), grade_rtt(r.rtt_ms, cfg.thresholds)),
                styled(fmt_pct(r.loss_pct), grade_loss(r.loss_pct, cfg.thresholds)),
                fmt_ms(r.jitter_ms), spark_text(spark(series)), ago(r.last, now),
            ]))  # fmt: skip
        self.query_one(LiveTable).show(table)

    def action_sort(self) -> None:
        self.sort_by = RESULT_SORTS[(RESULT_SORTS.index(self.sort_by) + 1) % len(RESULT_SORTS)]
        self.render_rows()

    def action_problems(self) -> None:
        self.problems_only = not self.problems_only
        self.render_rows()

    def on_data_table_row_selected(self, event: LiveTable.RowSelected) -> None:
        event.stop()
        self.action_drill()

    def action_drill(self) -> None:
        from meshmon.tui.screens.target import TargetScreen

        key = self.query_one(LiveTable).current_key
        if key is None:
            return
        check, target = key.split("\t", 1)
        self.app.push_screen(TargetScreen(check, target))
