"""The derived columns of a result, for version 1 bodies (see :mod:`meshmon.results.summary`)."""

from meshmon.results.summary import Summary, fast, summarize

__all__ = ["Summary", "fast", "summarize"]
