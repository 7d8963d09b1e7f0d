"""``meshmon tui``: a Textual view of the live mesh, a client of an agent's control API or of an
aggregator's query API.

:mod:`~meshmon.tui.app` holds the theory of operation; :mod:`~meshmon.tui.source` the data
source interface and the agent's control API, :mod:`~meshmon.tui.aggsource` the aggregator's,
:mod:`~meshmon.tui.recorded` recordings of either (for tests); :mod:`~meshmon.tui.model`,
:mod:`~meshmon.tui.aggmodel` and :mod:`~meshmon.tui.summary` what is shown and its arithmetic;
:mod:`~meshmon.tui.screens` one screen per module.
"""

from meshmon.tui.aggsource import AggregatorSource
from meshmon.tui.app import MeshmonApp
from meshmon.tui.recorded import RecordedSource, open_recording, record, record_aggregator
from meshmon.tui.settings import TuiConfig
from meshmon.tui.source import AgentSource, DataSource, SourceError, Unsupported

__all__ = ["AgentSource", "AggregatorSource", "DataSource", "MeshmonApp", "RecordedSource",
           "SourceError", "TuiConfig", "Unsupported", "open_recording", "record",
           "record_aggregator"]  # fmt: skip
