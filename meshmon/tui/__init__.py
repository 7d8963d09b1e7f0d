"""``meshmon tui``: a Textual view of the live mesh, a client of an agent's control API.

:mod:`~meshmon.tui.app` holds the theory of operation; :mod:`~meshmon.tui.source` the data
source interface (the agent's control API today, a recording for tests, the aggregator later);
:mod:`~meshmon.tui.model` and :mod:`~meshmon.tui.summary` what is shown and its arithmetic;
:mod:`~meshmon.tui.screens` one screen per module.
"""

from meshmon.tui.app import MeshmonApp
from meshmon.tui.recorded import RecordedSource, record
from meshmon.tui.settings import TuiConfig
from meshmon.tui.source import AgentSource, DataSource, SourceError, Unsupported

__all__ = ["AgentSource", "DataSource", "MeshmonApp", "RecordedSource", "SourceError",
           "TuiConfig", "Unsupported", "record"]  # fmt: skip
