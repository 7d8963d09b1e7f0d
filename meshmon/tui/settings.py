"""The TUI's one config: refresh rate, windows, sizes, thresholds; every default says why."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshmon.tui.summary import Thresholds


@dataclass(frozen=True)
class TuiConfig:
    """How the TUI polls and what it draws."""

    interval: float = 1.0
    """Seconds between refreshes of the visible screen: the issue asks for at least one a
    second, and agents probe every few seconds, so faster would only redraw the same data."""
    retry_max: float = 5.0
    """Longest wait between attempts while the agent does not answer (doubling from
    ``interval``): a restarted agent is back on screen within five seconds."""
    recent_span: float = 300.0
    """Seconds of history behind the Results screen's sparklines (five minutes: a few dozen
    results per target at the usual 5-10 s intervals)."""
    spark_width: int = 16
    """Characters per sparkline: fits an 80-column terminal beside the other columns."""
    history_window: float = 300.0
    """Seconds the drill-down chart spans at first (five minutes, as the sparklines); ``w``
    cycles through :attr:`history_windows`."""
    history_windows: tuple[float, ...] = (300.0, 900.0, 3600.0)
    history_points: int = 200
    """Points per prober asked of the mesh for a chart: about one per terminal column of a wide
    terminal; agents downsample beyond it."""
    thresholds: Thresholds = field(default_factory=Thresholds)
