"""The TUI's screens, one per module."""

from meshmon.tui.screens.alerts import AlertsScreen
from meshmon.tui.screens.base import LiveScreen
from meshmon.tui.screens.coverage import CoverageScreen
from meshmon.tui.screens.help import HelpScreen
from meshmon.tui.screens.matrix import MatrixScreen
from meshmon.tui.screens.mesh import MeshScreen
from meshmon.tui.screens.path import PathScreen
from meshmon.tui.screens.results import ResultsScreen
from meshmon.tui.screens.target import TargetScreen

__all__ = ["AlertsScreen", "CoverageScreen", "HelpScreen", "LiveScreen", "MatrixScreen",
           "MeshScreen", "PathScreen", "ResultsScreen", "TargetScreen"]  # fmt: skip
