"""The software version: the one place it is written (``pyproject.toml`` reads it from here).

A literal, not ``importlib.metadata.version("meshmon")``: that import (email parsing, zip and
CSV readers) and the scan of every installed distribution cost each agent start ~10 ms of CPU.
"""

__version__ = "0.1.0"
